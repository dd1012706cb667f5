"""Usage: the ledger (one row per proxied request, written in batches off the request path)."""
