"""The HTTP server: app factory, error mapping and routes over the Gateway."""

from relaygate.http.app import create_app

__all__ = ["create_app"]
