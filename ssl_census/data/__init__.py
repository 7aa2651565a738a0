"""The loader stage: shard-store splits streamed as shuffled training batches.

``BlockShuffleLoader`` (loader.py) plans epochs (plan.py), reads through a range reader
(readers.py) and gathers batches in compiled code (gather.py). Tuning: docs/loader.md.
"""

from ssl_census.data.loader import Batch, BlockShuffleLoader

__all__ = ["Batch", "BlockShuffleLoader"]
