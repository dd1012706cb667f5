"""The names of the headers relaygate adds to its answers, in one place: the client's rate-limit
headers (SPEC §6) rendered from an admission's numbers, and the x-relaygate-* of proxied answers.
Nothing below http/ writes a header name of its own."""

from __future__ import annotations

from collections.abc import Mapping

from relaygate.errors import RelaygateError
from relaygate.state.records import Admission


def limit_headers(admission: Admission | None) -> dict[str, str]:
    """`x-ratelimit-*` for a client with an rpm and/or tpm limit; none for one without."""
    if admission is None:
        return {}
    out: dict[str, str] = {}
    if admission.rpm is not None:
        remaining = 0 if admission.refused == "requests" else admission.remaining_requests
        out["x-ratelimit-limit-requests"] = str(admission.rpm)
        out["x-ratelimit-remaining-requests"] = str(max(0, remaining))
        out["x-ratelimit-reset-requests"] = f"{max(0.0, admission.reset_requests_s):.0f}s"
    if admission.tpm is not None and admission.refused is None:
        out["x-ratelimit-limit-tokens"] = str(admission.tpm)
        out["x-ratelimit-remaining-tokens"] = str(max(0, admission.remaining_tokens))
    return out


def error_headers(exc: RelaygateError) -> dict[str, str]:
    """The headers of an error answer: the client's rate limits when it has them, when to retry
    (or that retrying will not help), and how many upstream attempts were made."""
    out = limit_headers(exc.admission)
    if exc.retry_after_s is not None:
        out["retry-after"] = str(exc.retry_after_s)
    if exc.should_retry is False:
        out["x-should-retry"] = "false"
    if exc.attempts:
        out["x-relaygate-attempts"] = str(exc.attempts)
    return out


def extract_key(headers: Mapping[str, str]) -> str | None:
    """`Authorization: Bearer <key>` or `x-api-key: <key>`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None
