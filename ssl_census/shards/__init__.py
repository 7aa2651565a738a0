"""Shards: the census turned into donor-split, log1p-normalised CSR stores (Zarr v3).

``build`` reads a census (a release or a local census-layout store) and writes a store;
``store`` opens one; ``verify`` checks one. The format is described in docs/shard-format.md.
"""
