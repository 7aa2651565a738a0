"""The encoder's first layer on a sparse batch: ``x @ W^T + b`` from a CSR ``x``, forward and
weight gradient, without a dense copy of ``x``.

A cell holds about 8 % of the genes, so a dense first layer mostly multiplies zeros. On CPUs
the product runs in two compiled kernels over the batch in column order (the entries of one
gene together, in blocks of rows): the forward adds ``value * W[:, gene]`` into the outputs of
the cells that hold the gene, the backward adds ``value * grad_out[cell]`` into the gene's
gradient row. Column order reads each weight row once per block of cells instead of once per
entry, which is what makes it faster than a row-order sparse product here. Both kernels split
disjoint parts of their output between threads and sum in a fixed order, so the result does not
depend on the thread count. On other devices torch's sparse product (and its autograd) runs.

The weight is kept gene-major: the parameter ``weight_t`` is the ``[genes, out]`` transpose of
``nn.Linear``'s weight, contiguous, and ``weight`` is its transposed view. The kernels read and
write whole gene rows, the dense path's products (``x @ weight_t``, the weight gradient
``x^T @ grad_out``) come out in that layout, and the optimiser sees a contiguous parameter
(fused AdamW copies strided ones). State dicts hold ``weight`` in ``nn.Linear``'s shape, as
before, so checkpoints load either way.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_census.core.sparse import is_csr

# Rows per block of the column order: a block's slice of the outputs (forward) or of the
# output gradient (backward) stays in the CPU's cache while the block's genes are visited.
BLOCK_ROWS = 256


@numba.njit(nogil=True, cache=True)
def _column_blocks(crow, col, values, n_cols, block_rows, b0, b1, ptr, rows,
                   vals):  # pragma: no cover - compiled
    """Row blocks ``b0:b1`` of the CSR matrix in column order (a counting sort per block):
    ``ptr[b * n_cols + c] : ptr[b * n_cols + c + 1]`` index the (row, value) pairs of column c
    in row block b, in ascending row order. A block's entries take the place its rows have in
    the CSR arrays, so blocks are sorted independently (``ptr[-1]`` is the caller's)."""
    n_rows = crow.shape[0] - 1
    counts = np.empty(n_cols, np.int64)
    for b in range(b0, b1):
        r0, r1 = b * block_rows, min(n_rows, (b + 1) * block_rows)
        counts[:] = 0
        for k in range(crow[r0], crow[r1]):
            counts[col[k]] += 1
        fill = np.int64(crow[r0])
        for c in range(n_cols):
            ptr[b * n_cols + c] = fill
            fill += counts[c]
            counts[c] = ptr[b * n_cols + c]  # from here on: the next free place of column c
        for r in range(r0, r1):
            for k in range(crow[r], crow[r + 1]):
                p = counts[col[k]]
                rows[p] = r
                vals[p] = values[k]
                counts[col[k]] = p + 1


@numba.njit(nogil=True, cache=True)
def _forward(ptr, rows, vals, weight_t, out, j0):  # pragma: no cover - compiled
    """``out = x @ weight_t[:, j0 : j0 + out.shape[1]]``, added to ``out``, in column-block
    order. Each thread has its own ``out``: threads that write parts of the same rows slow
    each other down however far apart the parts lie."""
    n_cols = weight_t.shape[0]
    n_blocks = (ptr.shape[0] - 1) // n_cols
    width = out.shape[1]
    for b in range(n_blocks):
        for c in range(n_cols):
            lo, hi = ptr[b * n_cols + c], ptr[b * n_cols + c + 1]
            if lo == hi:
                continue
            w = weight_t[c, j0 : j0 + width]
            for k in range(lo, hi):
                o = out[rows[k]]
                v = vals[k]
                for j in range(width):
                    o[j] += v * w[j]


@numba.njit(nogil=True, cache=True)
def _weight_grad(ptr, rows, vals, grad_out, grad_t, c0, c1):  # pragma: no cover - compiled
    """``grad_t[c0:c1] = (x^T @ grad_out)[c0:c1]``, rows summed in ascending order."""
    n_cols = grad_t.shape[0]
    n_blocks = (ptr.shape[0] - 1) // n_cols
    grad_t[c0:c1] = 0
    for b in range(n_blocks):
        for c in range(c0, c1):
            acc = grad_t[c]
            for k in range(ptr[b * n_cols + c], ptr[b * n_cols + c + 1]):
                g = grad_out[rows[k]]
                v = vals[k]
                for j in range(acc.shape[0]):
                    acc[j] += v * g[j]


class _Threads:
    """A pool of torch's intra-op thread count for the kernels (remade when that changes)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0
        self._lock = threading.Lock()

    def run(self, fn: Any, parts: list[tuple[Any, ...]]) -> None:
        if len(parts) == 1:
            fn(*parts[0])
            return
        with self._lock:
            if self._pool is None or self._size != len(parts):
                if self._pool is not None:
                    self._pool.shutdown()
                self._pool = ThreadPoolExecutor(len(parts), thread_name_prefix="ssl-census-spmm")
                self._size = len(parts)
            pool = self._pool
        for future in [pool.submit(fn, *p) for p in parts]:
            future.result()


_THREADS = _Threads()


def _splits(n: int, parts: int) -> list[tuple[int, int]]:
    """``[0, n)`` in ``parts`` contiguous ranges (fewer when n is small)."""
    parts = max(1, min(parts, n))
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def column_blocks(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CSR tensor ``x`` in column order per block of BLOCK_ROWS rows: (ptr, rows, values),
    see ``_column_blocks``; blocks are sorted in parallel."""
    crow, col = x.crow_indices().numpy(), x.col_indices().numpy()
    values = x.values().detach().float().numpy()
    n_rows, n_cols = x.shape
    n_blocks = -(-n_rows // BLOCK_ROWS)
    ptr = np.empty(n_blocks * n_cols + 1, np.int64)
    ptr[-1] = len(col)
    rows, vals = np.empty(len(col), np.int32), np.empty(len(col), np.float32)
    _THREADS.run(_column_blocks, [(crow, col, values, n_cols, BLOCK_ROWS, b0, b1, ptr, rows, vals)
                                  for b0, b1 in _splits(n_blocks, torch.get_num_threads())])
    return ptr, rows, vals


class _ColumnOrderLinear(torch.autograd.Function):
    """``x @ weight_t + bias`` for a CSR ``x`` on the CPU; gradients for weight_t and bias."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight_t: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        n_rows, n_cols = x.shape
        blocks = column_blocks(x)
        weight = weight_t.detach().contiguous().numpy()
        splits = _splits(weight.shape[1], torch.get_num_threads())
        parts = [np.zeros((n_rows, b - a), np.float32) for a, b in splits]
        _THREADS.run(_forward, [(*blocks, weight, part, a) for part, (a, _) in
                                zip(parts, splits, strict=True)])
        out = torch.from_numpy(np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0])
        if bias is not None:
            out += bias.detach()
        ctx.blocks, ctx.n_cols = blocks, n_cols
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_out = grad_out.contiguous().float()
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.empty(ctx.n_cols, grad_out.shape[1], dtype=torch.float32)
            _THREADS.run(_weight_grad, [(*ctx.blocks, grad_out.numpy(), grad_weight.numpy(), a, b)
                                        for a, b in _splits(ctx.n_cols,
                                                            torch.get_num_threads())])
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return None, grad_weight, grad_bias


def sparse_linear(x: torch.Tensor, weight_t: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight_t + bias`` (``F.linear`` with the transposed weight) for a CSR ``x``, which
    takes no gradient: the column-order kernels on the CPU, torch's sparse product elsewhere.
    Runs in float32 (outside autocast)."""
    if x.requires_grad:
        raise ValueError("a sparse input to the first layer cannot take a gradient")
    with torch.autocast(x.device.type, enabled=False):
        if x.device.type == "cpu":
            return _ColumnOrderLinear.apply(x, weight_t.float(), bias)
        return torch_sparse_linear(x, weight_t, bias)


def torch_sparse_linear(x: torch.Tensor, weight_t: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same product through torch's sparse matrix product and its autograd (any device)."""
    out = torch.mm(x.to(weight_t.dtype), weight_t)
    return out + bias if bias is not None else out


class SparseInputLinear(nn.Linear):
    """``nn.Linear`` that also takes a CSR batch (:func:`sparse_linear`); a dense batch goes
    through ``F.linear`` as before. Initial values, ``weight``'s shape and the state-dict keys
    are nn.Linear's; the parameter is stored transposed (see the module's docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)  # nn.Linear's initial values
        initial = self._parameters.pop("weight").detach()
        self.weight_t = nn.Parameter(initial.t().contiguous())

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_csr(x):
            return sparse_linear(x, self.weight_t, self.bias)
        return F.linear(x, self.weight, self.bias)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        weight = self.weight_t if keep_vars else self.weight_t.detach()
        destination[prefix + "weight"] = weight.t()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        if prefix + "weight" in state_dict:
            state_dict[prefix + "weight_t"] = state_dict.pop(prefix + "weight").t()
        super()._load_from_state_dict(state_dict, prefix, *args)
