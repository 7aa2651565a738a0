"""Shared machinery every stage stands on: errors, atomic files, configs, the shard-store format."""
