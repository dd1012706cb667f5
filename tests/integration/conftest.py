"""Fixtures shared by the integration tests: the front-door upstreams (_doors.py)."""

from tests.integration._doors import door_upstream  # noqa: F401
