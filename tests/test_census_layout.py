"""The later schema's per-cell statistics, including empty cells."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ssl_census.census.layout import row_statistics


def test_row_statistics_match_numpy_with_empty_rows() -> None:
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.3, size=(7, 40)).astype(np.float32)
    dense[0] = 0
    dense[-1] = 0  # an empty last row must not shift the others
    dense[3] = 0
    dense[3, 5] = 4  # one non-zero: variance 0
    x = sp.csr_matrix(dense)
    stats = row_statistics(x.data, np.diff(x.indptr))
    for i, row in enumerate(dense):
        nz = row[row > 0].astype(np.float64)
        assert stats["raw_sum"][i] == nz.sum()
        assert stats["nnz"][i] == len(nz)
        assert np.isclose(stats["raw_mean_nnz"][i], nz.mean() if len(nz) else 0.0)
        want = nz.var(ddof=1) if len(nz) > 1 else 0.0
        assert np.isclose(stats["raw_variance_nnz"][i], want)
