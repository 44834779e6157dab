"""backshift: a deduplicating backup archive with a SQLite catalog, restored through tar."""

__version__ = "2.0.0.dev0"
