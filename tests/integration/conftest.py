"""Fixtures shared by the integration tests: the front-door upstreams (_doors.py) and the
embeddings upstreams (_embed.py)."""

from tests.integration._doors import door_upstream  # noqa: F401
from tests.integration._embed import embed_setup  # noqa: F401
