"""The error hierarchy: every failure a client can see, with its HTTP status, type and code.

    RelaygateError                      status  type                    code
    ├── InvalidRequest                  400     invalid_request_error   invalid_request / given
    ├── Unauthorized                    401     invalid_request_error   invalid_api_key
    ├── AdminForbidden                  403     permission_error        forbidden
    ├── ModelNotAllowed                 403     permission_error        model_not_allowed
    ├── ModelNotFound                   404     invalid_request_error   model_not_found
    ├── NotFound                        404     invalid_request_error   not_found
    ├── PayloadTooLarge                 413     invalid_request_error   request_too_large
    ├── RateLimitExceeded               429     rate_limit_error        rate_limit_exceeded
    ├── BudgetExceeded                  429     insufficient_quota      budget_exceeded
    ├── UpstreamRejected                4xx     (the upstream's)        (the upstream's)
    ├── UpstreamError                   502     upstream_error          upstream_error
    ├── NoAvailableKeys                 503     service_unavailable     no_available_keys
    ├── Unavailable                     503     service_unavailable     (given)
    └── UpstreamTimeout                 504     timeout_error           upstream_timeout

A failure of the way to the upstream (transport/errors.py: a proxy, a connect timeout, a body or
head past its bound) ends as UpstreamError or UpstreamTimeout with its own code, e.g.
`upstream_proxy_error` or `upstream_connect_timeout`.

`ConfigError` is separate: it stops start-up and is never sent to a client.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson

__all__ = [
    "AdminForbidden",
    "BudgetExceeded",
    "ConfigError",
    "InvalidRequest",
    "ModelNotAllowed",
    "ModelNotFound",
    "NoAvailableKeys",
    "NotFound",
    "PayloadTooLarge",
    "RateLimitExceeded",
    "RelaygateError",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamTimeout",
]


class ConfigError(Exception):
    """A bad configuration: one line naming the field and the file."""


class RelaygateError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    admission: Any = None  # a refusal by the client's limits: the numbers its headers show
    should_retry: bool | None = None  # False: retrying will not help (the SDKs read this)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s  # whole seconds, when the client should wait
        self.attempts = 0  # upstream attempts made before this error
        self.admission = None

    def to_dict(self, redact: Callable[[str], str] | None = None) -> dict[str, Any]:
        message = self.message if redact is None else redact(self.message)
        return {
            "error": {
                "message": message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }

    def body(self, redact: Callable[[str], str] | None = None) -> bytes:
        """The answer's body; `redact` for messages that may repeat what a caller sent."""
        return orjson.dumps(self.to_dict(redact))

    def sse_event(self) -> bytes:
        """The in-stream form (SPEC §8): one `data:` event; the stream then ends without [DONE]."""
        return b"data: " + self.body() + b"\n\n"


class InvalidRequest(RelaygateError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(RelaygateError):
    """One fixed body, whatever the reason (missing, malformed, unknown, revoked)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self) -> None:
        super().__init__(
            "Invalid or missing API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key'."
        )


class AdminForbidden(RelaygateError):
    status = 403
    type = "permission_error"
    code = "forbidden"

    def __init__(self) -> None:
        super().__init__("This route needs the admin secret.")


class ModelNotAllowed(RelaygateError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class ModelNotFound(RelaygateError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' is not routable here. GET /v1/models lists the models and "
            "aliases this gateway serves.",
            param="model",
        )


class NotFound(RelaygateError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(RelaygateError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than the limit of {limit} bytes.")


class RateLimitExceeded(RelaygateError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(RelaygateError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"

    should_retry = False


class UpstreamRejected(RelaygateError):
    """The upstream refused the request for a reason of the request's own (context too long, a bad
    parameter): returned to the client with the upstream's status, not retried."""

    type = "invalid_request_error"

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str | None,
        code: str | None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
        if type_:
            self.type = type_


class UpstreamError(RelaygateError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class NoAvailableKeys(RelaygateError):
    status = 503
    type = "service_unavailable"
    code = "no_available_keys"

    def __init__(self, retry_after_s: float, detail: str = "") -> None:
        secs = max(1, math.ceil(retry_after_s))
        msg = "No upstream key is available right now"
        if detail:
            msg += f" ({detail})"
        super().__init__(f"{msg}; retry in {secs} s.", retry_after_s=secs)


class Unavailable(RelaygateError):
    """The gateway cannot answer now: shutting down, or its database is not answering."""

    status = 503
    type = "service_unavailable"
    code = "unavailable"


class UpstreamTimeout(RelaygateError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
