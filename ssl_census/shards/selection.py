"""The dataset selection of ``[query]``: ``include_datasets`` and ``exclude_datasets``.

Two stores of one census can then hold disjoint datasets, e.g. pre-training data without the
datasets a model is later fine-tuned and tested on. A name matches a ``dataset_id``,
``dataset_title`` or ``collection_name`` of census_info/datasets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ssl_census.core.errors import UserError

DATASET_NAME_COLUMNS = ("dataset_id", "dataset_title", "collection_name")


def matching_dataset_ids(datasets: pd.DataFrame, names: tuple[str, ...], key: str) -> set[str]:
    """dataset_ids named by ``names``; a name that matches nothing is an error (a typo would
    otherwise silently change what a store holds)."""
    ids: set[str] = set()
    for name in names:
        hit = np.zeros(len(datasets), dtype=bool)
        for col in DATASET_NAME_COLUMNS:
            if col in datasets.columns:
                hit |= datasets[col].astype(str).to_numpy() == name
        if not hit.any():
            raise UserError(f"[query] {key}: {name!r} names no dataset of the census",
                            f"use a {', '.join(DATASET_NAME_COLUMNS)} of census_info/datasets")
        ids.update(datasets.loc[hit, "dataset_id"].astype(str))
    return ids


def select_datasets(obs: pd.DataFrame, datasets: pd.DataFrame, include: tuple[str, ...],
                    exclude: tuple[str, ...]) -> pd.DataFrame:
    """The cells of the included datasets (all when ``include`` is empty) minus the excluded."""
    if not include and not exclude:
        return obs
    ids = obs["dataset_id"]  # categorical: isin compares per category, not per cell
    keep = np.ones(len(obs), dtype=bool)
    if include:
        keep &= ids.isin(matching_dataset_ids(datasets, include, "include_datasets")).to_numpy()
    if exclude:
        keep &= ~ids.isin(matching_dataset_ids(datasets, exclude, "exclude_datasets")).to_numpy()
    out = obs.loc[keep].reset_index(drop=True)
    for col in out.select_dtypes("category").columns:
        out[col] = out[col].cat.remove_unused_categories()
    return out
