"""OpenRouter: OpenAI-compatible; numeric error codes, 402 for credits, a free-tier daily cap."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from relaygate.providers._openai_compat import OpenAICompatProvider
from relaygate.providers.base import ProviderMeta, error_fields, seconds
from relaygate.types import Failure

META = ProviderMeta(kind="openrouter", default_base_url="https://openrouter.ai/api/v1")


def _reset_epoch(raw: object) -> float | None:
    """`metadata.headers.X-RateLimit-Reset`: a Unix time, in milliseconds when it is that large."""
    value = seconds(str(raw))
    if value is None:
        return None
    return value / 1000 if value > 1e11 else value


class Provider(OpenAICompatProvider):
    meta = META

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
        failure = super().classify_error(status, headers, body)
        message, _, _, _, raw = error_fields(body)
        metadata: dict[str, Any] = raw.get("metadata") or {}
        if not isinstance(metadata, dict):
            metadata = {}
        source = str(metadata.get("limit_source") or "")
        if status == 429 and ("per-day" in message or source.endswith("_daily")):
            failure.kind = "quota_exhausted"
            limits = metadata.get("headers")
            reset = (
                _reset_epoch(limits.get("X-RateLimit-Reset")) if isinstance(limits, dict) else None
            )
            failure.reset_at = reset if reset and reset > time.time() else None
        return failure
