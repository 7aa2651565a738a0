"""One split of a shard store as the loader sees it: sizes, row pointer, obs columns, labels.

A local directory is opened (and validated) through :func:`ssl_census.shards.store.open_shards`;
an fsspec URL (``s3://``, ``gs://``, ``memory://``) gets the same checks on the manifest and
the same tables read through fsspec, so a store on object storage feeds the same loader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ssl_census.core.errors import UserError
from ssl_census.core.store import FORMAT as CSR_FORMAT
from ssl_census.data.readers import ByteSource, is_url, join
from ssl_census.shards.store import MANIFEST, check_manifest, open_shards


@dataclass
class SplitSource:
    """What the loader needs to plan and label batches of one split."""

    x_root: str  # the split's X.zarr (path or URL)
    n_cells: int
    n_genes: int
    nnz: int
    obs: pd.DataFrame  # only the requested columns, one row per cell
    labels: pd.DataFrame


def _parquet(path: str) -> pq.ParquetFile:
    if is_url(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        return pq.ParquetFile(fs.open(p, "rb"))
    return pq.ParquetFile(path)


def _check_remote_manifest(root: str) -> dict:
    try:
        manifest = json.loads(ByteSource(root).read(MANIFEST))
    except (FileNotFoundError, json.JSONDecodeError):
        manifest = None
    return check_manifest(root, manifest)


def open_split(
    shards_dir: str | os.PathLike[str], split: str, obs_columns: Sequence[str]
) -> SplitSource:
    """Validate the store, then read the split's sizes and the requested obs columns."""
    root = str(shards_dir).rstrip("/")
    if is_url(root):
        manifest = _check_remote_manifest(root)
        if split not in manifest.get("splits", {}):
            raise UserError(
                f"split {split!r} not in shard store {root}",
                f"choose one of {', '.join(manifest.get('splits', {}))}",
            )
        labels = _parquet(join(root, "labels.parquet")).read().to_pandas()
    else:
        store = open_shards(root)
        if split not in store.splits:
            raise UserError(
                f"split {split!r} not in shard store {root}",
                f"choose one of {', '.join(store.splits)}",
            )
        labels = store.labels
    x_root = join(root, split, "X.zarr")
    attrs = json.loads(ByteSource(x_root).read("zarr.json")).get("attributes", {})
    if attrs.get("format") != CSR_FORMAT:
        raise UserError(f"{x_root} is not an ssl-census CSR group", "rebuild the shard store")
    obs_path = join(root, split, "obs.parquet")
    obs_file = _parquet(obs_path)
    available = obs_file.schema_arrow.names
    unknown = [c for c in obs_columns if c not in available]
    if unknown:
        raise UserError(
            f"unknown obs column(s) {', '.join(unknown)}", f"choose from {', '.join(available)}"
        )
    obs = obs_file.read(columns=list(obs_columns)).to_pandas() if obs_columns else pd.DataFrame()
    n_cells = int(attrs["n_cells"])
    if obs_columns and len(obs) != n_cells:
        raise UserError(
            f"{obs_path} has {len(obs)} rows, X has {n_cells}", "rebuild the shard store"
        )
    return SplitSource(x_root, n_cells, int(attrs["n_genes"]), int(attrs["nnz"]), obs, labels)


def encode_obs(obs: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Numeric columns as they are; strings and categoricals as int64 codes plus categories."""
    arrays: dict[str, np.ndarray] = {}
    categories: dict[str, list[str]] = {}
    for col in obs.columns:
        s = obs[col]
        if (
            isinstance(s.dtype, pd.CategoricalDtype)
            or s.dtype == object
            or pd.api.types.is_string_dtype(s)
        ):
            cat = s.astype("category")
            arrays[col] = cat.cat.codes.to_numpy().astype(np.int64)
            categories[col] = [str(c) for c in cat.cat.categories]
        else:
            arrays[col] = s.to_numpy()
    return arrays, categories
