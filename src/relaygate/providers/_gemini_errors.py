"""Gemini's error bodies (google.rpc.Status, protocols.md §4.5) classified for the key pool:
a wrong key, a per-minute or per-day quota, a server failure, the request's own fault; and an
error inside a 200 (a stream's event), which is always the upstream's failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relaygate.providers._native import as_int, next_midnight
from relaygate.providers.base import parse_duration
from relaygate.types import Failure


def _details(err: Mapping[str, Any], type_suffix: str) -> list[dict[str, Any]]:
    return [
        d
        for d in err.get("details") or ()
        if isinstance(d, dict) and str(d.get("@type", "")).endswith(type_suffix)
    ]


def classify(status: int, err: Mapping[str, Any]) -> Failure:
    message = str(err.get("message") or "upstream error")
    canonical = str(err.get("status") or "")
    failure = Failure("bad_request", status, message, "invalid_request_error")
    failure.code = canonical.lower() or None
    reasons = {d.get("reason") for d in _details(err, "ErrorInfo")}
    if status == 403 or (status in (400, 401) and "API_KEY_INVALID" in reasons):
        failure.kind = "key_rejected"
    elif status == 429:
        quota_ids = [
            str(v.get("quotaId", ""))
            for d in _details(err, "QuotaFailure")
            for v in d.get("violations") or ()
            if isinstance(v, dict)
        ]
        if any("PerDay" in q for q in quota_ids):
            failure.kind, failure.reset_at = "quota_exhausted", next_midnight("America/Los_Angeles")
        else:
            failure.kind = "rate_limited"
            delays = [str(d.get("retryDelay", "")) for d in _details(err, "RetryInfo")]
            waits = [w for w in map(parse_duration, delays) if w is not None]
            failure.retry_after_s = max(waits) if waits else None
    elif status >= 500:
        failure.kind = "server"
    elif status == 400 and "exceeds the maximum number of tokens" in message:
        failure.code = "context_length_exceeded"
    elif status == 404:
        failure.code = "model_not_found"
    return failure


def inband_failure(obj: Mapping[str, Any]) -> Failure:
    err = obj.get("error") if isinstance(obj.get("error"), dict) else {}
    assert isinstance(err, dict)
    status = as_int(err.get("code")) or 500
    failure = classify(status, err)
    if failure.kind == "bad_request":  # inside a 200 it is the upstream's failure, not ours
        failure.kind = "server"
    return failure
