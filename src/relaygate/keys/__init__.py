"""Upstream key pools: which credential to use now, and what each answer does to a key."""

from relaygate.keys.pool import KeyPool, KeyState, Lease, key_id

__all__ = ["KeyPool", "KeyState", "Lease", "key_id"]
