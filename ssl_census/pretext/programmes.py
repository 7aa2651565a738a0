"""Sampling gene programmes per cell on the device, without Python loops over cells.

Programmes live as a sparse ``[genes, programmes]`` membership matrix; a choice of programmes
for every cell is a dense ``[cells, programmes]`` 0/1 matrix, and the genes they cover are one
sparse-dense product (cost: non-zeros of the membership x cells, not genes x programmes x cells).
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_census.pretext.gene_programmes import GeneProgrammes


class ProgrammeSampler(nn.Module):
    def __init__(self, programmes: GeneProgrammes) -> None:
        super().__init__()
        self.n_genes = programmes.n_genes
        self.n_programmes = len(programmes)
        # Rebuilt from the gene sets, so kept out of checkpoints (persistent=False).
        self.register_buffer("members", programmes.membership(), persistent=False)
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

    def until_rate(self, n_cells: int, rate: float) -> torch.Tensor:
        """Whole programmes in random order per cell until ``rate`` of the genes are taken.

        Sizes are counted per programme, so overlapping programmes leave the realised fraction
        somewhat below ``rate``; when all programmes together cover less, all are taken.
        """
        device = self.sizes.device
        order = torch.rand(n_cells, self.n_programmes, device=device).argsort(dim=1)
        sizes = self.sizes[order]
        before = sizes.cumsum(dim=1) - sizes
        take = (before < rate * self.n_genes).float()
        chosen = torch.zeros_like(take).scatter_(1, order, take)
        return self.genes_of(chosen)
