"""The response cache's policy (SPEC §7b), apart from HTTP: the key of a request (key.py), what
an entry holds and how a streamed answer is assembled into one and replayed (entry.py), and the
service over the state seam's ResponseCache that bounds every call, rides out a Redis outage and
coalesces identical misses (service.py). The HTTP side is http/cached.py."""
