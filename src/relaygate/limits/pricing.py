"""Prices per token: `pricing:` in the config first, then the maintained genai-prices data (looked
up once per provider and model, by the provider's API URL, then by the model name alone), then a
`"*"` entry of `pricing:` if there is one. A model with none of these costs 0 and is logged once.
Audio priced per second (transcription models, which genai-prices lists at 0 per token) take
`per_second` from the config, else the published rate in _PER_SECOND."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from relaygate.config.model import PriceConfig
from relaygate.types import Usage

log = logging.getLogger("relaygate.pricing")
_PROBE = 100_000  # tokens per probe: the base tier of tiered prices
_MTOK = 1_000_000
_CACHE_MAX = 4096
_WARN_MAX = 50
# USD per audio second, as the providers publish them for their transcription models
_PER_SECOND = {
    "whisper-1": 0.006 / 60,
    "whisper-large-v3": 0.111 / 3600,
    "whisper-large-v3-turbo": 0.04 / 3600,
}


@dataclass(frozen=True, slots=True)
class Rates:
    input: float  # USD per token
    output: float
    cached_input: float
    source: str  # config | genai-prices | default | unknown
    per_second: float = 0.0  # USD per audio second

    @property
    def known(self) -> bool:
        return self.source != "unknown"

    def cost(self, usage: Usage) -> float:
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        return (
            (usage.prompt_tokens - cached) * self.input
            + cached * self.cached_input
            + usage.completion_tokens * self.output
            + (usage.audio_seconds or 0.0) * self.per_second
        )

    def worst_case(
        self, prompt_tokens: int, max_completion_tokens: int, audio_seconds: float = 0.0
    ) -> float:
        return (
            prompt_tokens * self.input
            + max_completion_tokens * self.output
            + audio_seconds * self.per_second
        )


def usd(amount: float) -> str:
    """A dollar amount with enough digits to be true: `$20.00`, `$0.05`, `$0.000012` (three
    significant digits below a cent, never a tiny amount shown as `$0.00`)."""
    if amount == 0 or not math.isfinite(amount):
        return f"${amount:.2f}"
    places = max(2, min(12, 2 - math.floor(math.log10(abs(amount)))))
    text = f"{amount:.{places}f}"
    if places > 2:
        text = text.rstrip("0")
        whole, _, frac = text.partition(".")
        text = f"{whole}.{frac.ljust(2, '0')}"
    return f"${text}"


def _from_config(price: PriceConfig, model: str, source: str = "config") -> Rates:
    cached = price.cached_input_per_mtok
    per_second = price.per_second
    return Rates(
        input=price.input_per_mtok / _MTOK,
        output=price.output_per_mtok / _MTOK,
        cached_input=(cached if cached is not None else price.input_per_mtok) / _MTOK,
        source=source,
        per_second=per_second if per_second is not None else _PER_SECOND.get(model, 0.0),
    )


def _from_genai_prices(model: str, api_url: str | None) -> Rates | None:
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    for url in ([api_url] if api_url else []) + [None]:
        try:
            inp = calc_price(PriceUsage(input_tokens=_PROBE), model, provider_api_url=url)
            out = calc_price(PriceUsage(output_tokens=_PROBE), model, provider_api_url=url)
            both = PriceUsage(input_tokens=_PROBE, cache_read_tokens=_PROBE)
            cached = calc_price(both, model, provider_api_url=url)
        except LookupError:
            continue
        return Rates(
            input=float(inp.total_price) / _PROBE,
            output=float(out.total_price) / _PROBE,
            cached_input=float(cached.total_price) / _PROBE,
            source="genai-prices",
        )
    return None


class Pricing:
    def __init__(self, overrides: Mapping[str, PriceConfig]) -> None:
        self._overrides = dict(overrides)
        self._cache: dict[tuple[str, str], Rates] = {}
        self._unpriced = 0

    def rates(self, provider: str, model: str, api_url: str | None = None) -> Rates:
        key = (provider, model)
        found = self._cache.get(key)
        if found is None:
            found = self._lookup(provider, model, api_url)
            if len(self._cache) >= _CACHE_MAX:  # model names come from clients: keep it bounded
                self._cache.clear()
            self._cache[key] = found
        return found

    def _lookup(self, provider: str, model: str, api_url: str | None) -> Rates:
        for name in (f"{provider}/{model}", model):
            if name in self._overrides:
                return _from_config(self._overrides[name], model)
        rates = _from_genai_prices(model, api_url)
        per_second = _PER_SECOND.get(model)
        if rates is not None:
            return rates if per_second is None else replace(rates, per_second=per_second)
        if per_second is not None:
            return Rates(0.0, 0.0, 0.0, "published", per_second)
        if "*" in self._overrides:
            return _from_config(self._overrides["*"], model, "default")
        self._unpriced += 1
        if self._unpriced <= _WARN_MAX:  # one line per model, for the first few
            log.warning(
                "no price known for %s/%s: its cost counts as 0 (set pricing: in the config)",
                provider,
                model,
            )
        return Rates(0.0, 0.0, 0.0, "unknown")
