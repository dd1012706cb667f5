"""What a transport raises when the way to the upstream failed rather than the upstream
itself: none of these counts against the key (SPEC §11a). Each carries the status the attempt
loop answers with once retries are spent (502, or 504 for a timeout) and a message that names
no URL, header value or credential."""

from __future__ import annotations


class TransportError(ConnectionError):
    """The transport failed; `status` is what the client sees when nothing else answers."""

    status = 502
    code = "upstream_transport_error"


class ProxyError(TransportError):
    """The proxy refused the connection or the tunnel (a 407, a 403, nothing listening)."""

    code = "upstream_proxy_error"


class ConnectTimeout(TransportError):
    """No connection within the connect timeout: a slot in the host's pool, the TCP connect, a
    proxy's CONNECT and TLS all count."""

    status = 504
    code = "upstream_connect_timeout"


class BodyTooLarge(TransportError):
    """The answer's decoded body grew past its limit (a gzip bomb stops here, memory bounded)."""

    code = "upstream_body_too_large"


class HeadersTooLarge(TransportError):
    """The answer's head went past the header count or size bounds."""

    code = "upstream_headers_too_large"
