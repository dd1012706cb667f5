"""Durable state: upstream key states and usage, issued client keys. SQLite by default."""

from relaygate.storage.sqlite import SQLiteStore, open_store

__all__ = ["SQLiteStore", "open_store"]
