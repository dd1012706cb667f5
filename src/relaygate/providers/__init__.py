"""Upstream providers: one module per provider, found by name and imported lazily (registry.py)."""
