"""ssl-census: self-supervised learning on the CELLxGENE census, from census to metric.

``ssl_census.load_model(run_dir)`` gives a trained run as a Python object that embeds and
annotates AnnData objects (:mod:`ssl_census.evaluation.model`).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("ssl-census")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"

__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> Any:
    # imported on first use: ``import ssl_census`` (every CLI call) stays free of torch
    if name == "load_model":
        from ssl_census.evaluation.model import load_model

        return load_model
    raise AttributeError(f"module 'ssl_census' has no attribute {name!r}")
