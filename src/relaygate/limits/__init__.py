"""Client limits: rate limits (ratelimit.py), budgets with reservations (budgets.py), prices."""
