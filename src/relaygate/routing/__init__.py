"""Routing: model name -> ordered targets (router.py), and the attempt loop (attempts.py)."""
