"""New elements added to a copy of a user's h5ad, written with h5py a chunk of cells at a time.

The input is copied byte for byte and only the elements this tool adds are written (an obsm
array, obs columns, an uns entry), so X, layers, .raw, obs and var stay exactly as they were
and memory does not grow with the file. The elements carry anndata's encoding attributes, so
``anndata.read_h5ad`` reads the output as if anndata had written it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ssl_census.core.errors import UserError
from ssl_census.data.h5ad_inputs import quiet_anndata

_ARRAY = {"encoding-type": "array", "encoding-version": "0.2.0"}
_DICT = {"encoding-type": "dict", "encoding-version": "0.1.0"}


@contextmanager
def staged_copy(src: Path, out: Path) -> Iterator[h5py.File]:
    """A copy of ``src`` open for writing; renamed to ``out`` only when the block succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)  # sendfile on Linux: the bytes never pass through Python
        with h5py.File(tmp, "r+") as f:
            yield f
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _group(f: h5py.File, name: str) -> h5py.Group:
    if name not in f:
        f.create_group(name).attrs.update(_DICT)
    return f[name]


class AddedElements:
    """Datasets for per-cell outputs, to be filled by row ranges, in an open h5ad copy."""

    def __init__(self, f: h5py.File, n_cells: int, path: Path) -> None:
        self.f, self.n_cells = f, n_cells
        obs = f["obs"]
        if not isinstance(obs, h5py.Group) or "column-order" not in obs.attrs:
            raise UserError(f"obs of {path} is stored in a pre-0.7 anndata format",
                            "rewrite the file with a current anndata (read_h5ad, write_h5ad)")
        self.obs = obs
        self.new_columns: list[str] = []

    def _replace(self, group: h5py.Group, name: str) -> None:
        if name in group:
            del group[name]

    def obsm_array(self, key: str, width: int) -> h5py.Dataset:
        obsm = _group(self.f, "obsm")
        self._replace(obsm, key)
        ds = obsm.create_dataset(key, shape=(self.n_cells, width), dtype=np.float32)
        ds.attrs.update(_ARRAY)
        return ds

    def obs_column(self, name: str, dtype: Any) -> h5py.Dataset:
        self._replace(self.obs, name)
        ds = self.obs.create_dataset(name, shape=(self.n_cells,), dtype=dtype)
        ds.attrs.update(_ARRAY)
        self.new_columns.append(name)
        return ds

    def obs_categorical(self, name: str, categories: list[str]) -> h5py.Dataset:
        """A categorical column; returns its codes dataset (positions in ``categories``)."""
        from anndata.io import write_elem

        self._replace(self.obs, name)
        g = self.obs.create_group(name)
        g.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0",
                        "ordered": False})
        with quiet_anndata():
            write_elem(g, "categories", np.array(categories, dtype=object))
        dtype = np.int16 if len(categories) < np.iinfo(np.int16).max else np.int32
        codes = g.create_dataset("codes", shape=(self.n_cells,), dtype=dtype)
        codes.attrs.update(_ARRAY)
        self.new_columns.append(name)
        return codes

    def finish(self, uns_key: str, uns_value: dict[str, Any]) -> None:
        """Write ``uns[uns_key]`` and list the new obs columns in obs's column order."""
        from anndata.io import write_elem

        uns = _group(self.f, "uns")
        self._replace(uns, uns_key)
        with quiet_anndata():
            write_elem(uns, uns_key, uns_value)
        if self.new_columns:
            order = [str(c) for c in self.obs.attrs["column-order"]
                     if str(c) not in self.new_columns]
            self.obs.attrs["column-order"] = order + self.new_columns
