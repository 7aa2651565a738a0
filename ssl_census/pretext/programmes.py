"""Sampling gene programmes per cell on the device, without Python loops over cells.

Programmes live as a sparse ``[genes, programmes]`` membership matrix; a choice of programmes
for every cell is a dense ``[cells, programmes]`` 0/1 matrix, and the genes they cover are one
sparse-dense product (cost: non-zeros of the membership x cells, not genes x programmes x cells).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssl_census.pretext.gene_programmes import GeneProgrammes


class ProgrammeSampler(nn.Module):
    def __init__(self, programmes: GeneProgrammes) -> None:
        super().__init__()
        self.n_genes = programmes.n_genes
        self.n_programmes = len(programmes)
        # Rebuilt from the gene sets, so kept out of checkpoints (persistent=False).
        members = programmes.membership()
        self.register_buffer("members", members, persistent=False)
        # the same membership as (gene, programme) pairs, for per-cell unions (until_rate)
        genes, progs = members.indices()
        self.register_buffer("member_genes", genes.clone(), persistent=False)
        self.register_buffer("member_programmes", progs.clone(), persistent=False)
        sizes = torch.tensor([len(g) for g in programmes.genes], dtype=torch.float32)
        self.register_buffer("sizes", sizes, persistent=False)
        if programmes.regulators is not None:
            regulators = torch.from_numpy(programmes.regulators)
            self.register_buffer("regulators", regulators, persistent=False)

    def genes_of(self, chosen: torch.Tensor) -> torch.Tensor:
        """``[cells, genes]`` bool: genes in any programme marked in ``chosen [cells, progs]``."""
        with torch.autocast(device_type=chosen.device.type, enabled=False):
            hits = torch.sparse.mm(self.members, chosen.T.float())
        return hits.T > 0

    def one_per_cell(self, n_cells: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A random programme per cell: (its index ``[cells]``, its genes ``[cells, genes]``)."""
        k = torch.randint(self.n_programmes, (n_cells,), device=self.sizes.device)
        chosen = torch.zeros(n_cells, self.n_programmes, device=k.device)
        chosen.scatter_(1, k[:, None], 1.0)
        return k, self.genes_of(chosen)

    @property
    def mean_share(self) -> float:
        """The share of the gene space an average programme holds."""
        return float(self.sizes.mean()) / self.n_genes

    @property
    def coverage(self) -> float:
        """The fraction of the gene space that lies in at least one programme."""
        return len(torch.unique(self.member_genes)) / self.n_genes

    def until_rate(self, n_cells: int, rate: float, chunk: int = 1024) -> torch.Tensor:
        """Whole programmes in random order per cell until their *union* holds ``rate`` of
        the genes (the programme that crosses the rate is taken whole).

        Each cell ranks the programmes at random; a gene's first rank is the lowest rank of
        the programmes that hold it; taking programmes up to rank t hides exactly the genes
        whose first rank is at most t, so t is the k-th smallest first rank (k = the genes the
        rate asks for). Overlaps are counted once. When the programmes together cover fewer
        genes than the rate asks for, every programme is taken (the caller decides whether
        that is acceptable, see :class:`~ssl_census.pretext.gp_mask.GeneProgrammeMasking`).
        Cost: cells x non-zeros of the membership, in chunks of ``chunk`` cells.
        """
        device = self.sizes.device
        genes, progs = self.member_genes, self.member_programmes
        k = max(1, min(self.n_genes, math.ceil(rate * self.n_genes)))
        out = []
        for start in range(0, n_cells, chunk):
            n = min(chunk, n_cells - start)
            # ranks as float32: exact for any realistic number of programmes, and every device
            # has kthvalue and scatter_reduce for it
            order = torch.rand(n, self.n_programmes, device=device).argsort(dim=1)
            rank = order.argsort(dim=1).float()
            first = torch.full((n, self.n_genes), float(self.n_programmes), device=device)
            first.scatter_reduce_(1, genes.expand(n, -1), rank[:, progs], reduce="amin")
            # genes in no programme keep rank n_programmes and are never hidden
            cut = first.kthvalue(k, dim=1, keepdim=True).values.clamp_max(self.n_programmes - 1)
            out.append(first <= cut)
        return torch.cat(out) if out else torch.zeros(0, self.n_genes, dtype=torch.bool,
                                                         device=device)
