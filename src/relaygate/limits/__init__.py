"""Prices: what a request costs (pricing.py). Rate windows and budgets are admissions, in
the state package."""
