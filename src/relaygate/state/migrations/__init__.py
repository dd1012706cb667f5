"""Numbered SQL migrations of the state backends, one folder per database."""
