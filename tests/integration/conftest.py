"""Fixtures shared by the integration tests: the front-door upstreams (_doors.py), the
embeddings upstreams (_embed.py) and the transport's fakes and certificates (_transport.py)."""

from tests.integration._doors import door_upstream  # noqa: F401
from tests.integration._embed import embed_setup  # noqa: F401
from tests.integration._transport import (  # noqa: F401
    ca,
    ca_file,
    fakes,
    no_env_proxy,
    server_tls,
)
