"""Scheduled rebuilds: build a new census release's shard store incrementally, verify it and
publish it by switching ``<root>/current``; see ``docs/rebuilds.md``."""
