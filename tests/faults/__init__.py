"""Fault injection through the real server (SPEC §4, §6, §8a, §9): real traffic from a few
threads while one thing at a time breaks (the database, the upstream, the client); afterwards
the ledger, the budgets and the key states must account for every request exactly once."""
