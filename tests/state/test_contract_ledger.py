"""The LedgerStore contract, on memory, SQLite and Postgres, over one small ledger whose every
aggregate is worked out by hand below: usage by each group for a day and a month, month spend,
failures, minutes, days, spend, latencies, errors, prune, and a retried batch counted once.

A row is an error when its status is >= 400 or it has an error code, unless the code says the
client went away (client_closed, NOT_ERRORS): such a row is neither an error nor a failure."""

from __future__ import annotations

from dataclasses import astuple
from datetime import UTC, datetime
from typing import Any

from relaygate.state.records import (
    DayRow,
    ErrorCount,
    FailureRow,
    LatencySample,
    LedgerRecord,
    MinuteRow,
    SpendRow,
    UsageRow,
)
from tests.state.conftest import Bounded

T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC).timestamp()  # on a minute
M0 = int(T0 // 60)
APRIL = datetime(2026, 4, 1, 0, 0, 30, tzinfo=UTC).timestamp()


def row(rid: str, ts: float, client_id: str | None = "c1", **fields: Any) -> LedgerRecord:
    names = {"c1": "alice", "c2": "bob"}
    base: dict[str, Any] = {
        "client": names.get(client_id or ""),
        "route": "/v1/chat/completions",
        "provider": "openai",
        "model": "gpt-4o",
        "key_id": "k1",
        "status": 200,
        "error_code": None,
        "latency_ms": 100,
        "ttft_ms": None,
    }
    return LedgerRecord(id=rid, ts=ts, client_id=client_id, **{**base, **fields})


def _anthropic(**fields: Any) -> dict[str, Any]:
    return {"provider": "anthropic", "model": "claude", "key_id": "k3", **fields}


R1 = row("r1", T0, prompt_tokens=100, completion_tokens=50, cached_tokens=10, cost_usd=0.30,
         ttft_ms=40)  # fmt: skip
R2 = row("r2", T0 + 60, key_id="k2", status=500, error_code="upstream_error", prompt_tokens=10,
         latency_ms=300)  # fmt: skip
R3 = row("r3", T0 + 61, "c2", **_anthropic(prompt_tokens=200, completion_tokens=100,
         cost_usd=0.50, latency_ms=200, ttft_ms=80))  # fmt: skip
R4 = row("r4", T0 + 62, "c2", **_anthropic(status=499, error_code="client_closed",
         prompt_tokens=20, completion_tokens=5, cost_usd=0.05, latency_ms=50))  # fmt: skip
R5 = row("r5", T0 + 120, error_code="stream_error", prompt_tokens=30, completion_tokens=10,
         cost_usd=0.10, latency_ms=400)  # fmt: skip
R6 = row("r6", T0 + 86400, prompt_tokens=1000, completion_tokens=500, cost_usd=1.00)
R7 = row("r7", APRIL, "c2", **_anthropic(model="claude-opus", prompt_tokens=10,
         completion_tokens=10, cost_usd=2.00, latency_ms=900))  # fmt: skip
ROWS = [R1, R2, R3, R4, R5, R6, R7]


def flat(items: list[Any]) -> list[tuple[Any, ...]]:
    """Records as tuples, floats to 9 places (sums may differ in their last bits)."""
    return [tuple(round(v, 9) if isinstance(v, float) else v for v in astuple(i)) for i in items]


async def written(ledger: Bounded) -> Bounded:
    await ledger.write(ROWS[:3])
    await ledger.write(ROWS[3:])
    return ledger


async def test_usage_by_client_for_a_day_and_a_month(ledger: Bounded) -> None:
    await written(ledger)
    day = await ledger.usage("client", "2026-03-14")
    assert flat(day) == flat(
        [
            UsageRow("bob", 2, 0, 220, 105, 0, 0.55, 250, client_id="c2"),
            UsageRow("alice", 3, 2, 140, 60, 10, 0.40, 800, client_id="c1"),
        ]
    )
    month = await ledger.usage("client", "2026-03")
    assert flat(month) == flat(
        [
            UsageRow("alice", 4, 2, 1140, 560, 10, 1.40, 900, client_id="c1"),
            UsageRow("bob", 2, 0, 220, 105, 0, 0.55, 250, client_id="c2"),
        ]
    )
    assert flat(await ledger.usage("client", "2026-04")) == flat(
        [UsageRow("bob", 1, 0, 10, 10, 0, 2.0, 900, client_id="c2")]
    )
    assert await ledger.usage("client", "2026-05") == []


async def test_usage_by_provider_model_key_and_day(ledger: Bounded) -> None:
    await written(ledger)
    anthropic = (2, 0, 220, 105, 0, 0.55, 250, None)
    openai = (3, 2, 140, 60, 10, 0.40, 800, None)
    assert flat(await ledger.usage("provider", "2026-03-14")) == flat(
        [UsageRow("anthropic", *anthropic), UsageRow("openai", *openai)]
    )
    assert flat(await ledger.usage("model", "2026-03-14")) == flat(
        [UsageRow("claude", *anthropic), UsageRow("gpt-4o", *openai)]
    )
    assert flat(await ledger.usage("key", "2026-03-14")) == flat(
        [
            UsageRow("k3", *anthropic),
            UsageRow("k1", 2, 1, 130, 60, 10, 0.40, 500),
            UsageRow("k2", 1, 1, 10, 0, 0, 0.0, 300),
        ]
    )
    assert flat(await ledger.usage("day", "2026-03")) == flat(
        [
            UsageRow("2026-03-15", 1, 0, 1000, 500, 0, 1.0, 100),
            UsageRow("2026-03-14", 5, 2, 360, 165, 10, 0.95, 1050),
        ]
    )


async def test_month_spend_per_client_id(ledger: Bounded) -> None:
    await written(ledger)
    march = await ledger.month_spend("2026-03")
    assert {k: round(v, 9) for k, v in march.items()} == {"c1": 1.40, "c2": 0.55}
    assert await ledger.month_spend("2026-04") == {"c2": 2.0}
    assert await ledger.month_spend("2026-05") == {}


async def test_a_retried_batch_is_counted_once(ledger: Bounded) -> None:
    await ledger.write([R1, R2])
    await ledger.write([R2, R3])  # R2 again: a batch retried after a lost answer
    await ledger.write([R3, R3])
    by_client = await ledger.usage("client", "2026-03-14")
    assert [(u.client_id, u.requests) for u in by_client] == [("c2", 1), ("c1", 2)]
    assert [f.id for f in await ledger.failures(10)] == ["r2"]
    assert [m.requests for m in await ledger.minutes(T0)] == [1, 2]


async def test_failures_newest_first_without_client_closed(ledger: Bounded) -> None:
    await written(ledger)
    failures = await ledger.failures(10)
    assert failures == [
        FailureRow("r5", T0 + 120, "alice", "/v1/chat/completions", "openai", "gpt-4o", "k1",
                   200, "stream_error", 400, 0),
        FailureRow("r2", T0 + 60, "alice", "/v1/chat/completions", "openai", "gpt-4o", "k2",
                   500, "upstream_error", 300, 0),
    ]  # fmt: skip
    assert [f.id for f in await ledger.failures(1)] == ["r5"]


async def test_minutes_since(ledger: Bounded) -> None:
    await written(ledger)
    assert flat(await ledger.minutes(T0)) == flat(
        [
            MinuteRow(M0, 1, 0, 150, 0.30),
            MinuteRow(M0 + 1, 3, 1, 335, 0.55),
            MinuteRow(M0 + 2, 1, 1, 40, 0.10),
            MinuteRow(M0 + 1440, 1, 0, 1500, 1.0),
            MinuteRow(int(APRIL // 60), 1, 0, 20, 2.0),
        ]
    )
    assert [m.minute for m in await ledger.minutes(T0 + 61)] == [
        M0 + 1,
        M0 + 2,
        M0 + 1440,
        int(APRIL // 60),
    ]


async def test_days_between(ledger: Bounded) -> None:
    await written(ledger)
    assert flat(await ledger.days("2026-03-14", "2026-03-15")) == flat(
        [DayRow("2026-03-14", 5, 2, 525, 0.95), DayRow("2026-03-15", 1, 0, 1500, 1.0)]
    )
    assert [d.day for d in await ledger.days("2026-03-15", "2026-04-01")] == [
        "2026-03-15",
        "2026-04-01",
    ]
    assert await ledger.days("2026-03-16", "2026-03-31") == []


async def test_spend_by_model_provider_and_client(ledger: Bounded) -> None:
    await written(ledger)
    assert flat(await ledger.spend("model", "2026-03-14", 10)) == flat(
        [
            SpendRow("anthropic/claude-opus", 1, 0, 20, 2.0),
            SpendRow("openai/gpt-4o", 4, 2, 1700, 1.40),
            SpendRow("anthropic/claude", 2, 0, 325, 0.55),
        ]
    )
    assert [s.name for s in await ledger.spend("model", "2026-03-14", 2)] == [
        "anthropic/claude-opus",
        "openai/gpt-4o",
    ]
    assert flat(await ledger.spend("provider", "2026-03-14", 10)) == flat(
        [SpendRow("anthropic", 3, 0, 345, 2.55), SpendRow("openai", 4, 2, 1700, 1.40)]
    )
    assert flat(await ledger.spend("client", "2026-03-15", 10)) == flat(
        [SpendRow("bob", 1, 0, 20, 2.0), SpendRow("alice", 1, 0, 1500, 1.0)]
    )


async def test_spend_ties_and_a_model_without_provider(ledger: Bounded) -> None:
    def local(rid: str, ts: float, model: str, cost: float) -> LedgerRecord:
        return row(rid, ts, provider="", model=model, cost_usd=cost)

    await ledger.write(
        [
            local("a1", T0, "a", 0.5),
            local("b1", T0 + 1, "b", 0.25),
            local("b2", T0 + 2, "b", 0.25),
            local("c1", T0 + 3, "c", 0.25),
            local("c2", T0 + 4, "c", 0.25),
        ]
    )
    spend = await ledger.spend("model", "2026-03-14", 10)
    assert [(s.name, s.requests, s.cost_usd) for s in spend] == [
        ("b", 2, 0.5),
        ("c", 2, 0.5),
        ("a", 1, 0.5),
    ]  # cost, then requests (desc), then name
    assert [u.name for u in await ledger.usage("model", "2026-03-14")] == ["a", "b", "c"]


async def test_latencies_of_successful_rows_newest_first(ledger: Bounded) -> None:
    await written(ledger)
    assert await ledger.latencies(T0, 10) == [
        LatencySample(APRIL, "anthropic", 900, None),
        LatencySample(T0 + 86400, "openai", 100, None),
        LatencySample(T0 + 61, "anthropic", 200, 80),
        LatencySample(T0, "openai", 100, 40),
    ]
    assert [s.ts for s in await ledger.latencies(T0 + 61, 2)] == [APRIL, T0 + 86400]


async def test_errors_by_status_code_and_provider(ledger: Bounded) -> None:
    await written(ledger)
    limited = _anthropic(status=429, error_code="rate_limited")
    await ledger.write([row("e1", T0 + 200, **limited), row("e2", T0 + 201, "c2", **limited)])
    assert await ledger.errors(T0, 10) == [
        ErrorCount(429, "rate_limited", "anthropic", 2),
        ErrorCount(200, "stream_error", "openai", 1),
        ErrorCount(500, "upstream_error", "openai", 1),
    ]
    assert await ledger.errors(T0 + 100, 10) == [
        ErrorCount(429, "rate_limited", "anthropic", 2),
        ErrorCount(200, "stream_error", "openai", 1),
    ]
    assert await ledger.errors(T0, 1) == [ErrorCount(429, "rate_limited", "anthropic", 2)]


async def test_prune_deletes_rows_and_keeps_the_aggregates(ledger: Bounded) -> None:
    await ledger.write([row("p1", T0), row("p2", T0 + 10), row("p3", T0 + 20)])
    assert await ledger.prune(T0 + 15) == 2
    assert [s.ts for s in await ledger.latencies(0, 10)] == [T0 + 20]
    assert [m.requests for m in await ledger.minutes(0)] == [1]
    assert [u.requests for u in await ledger.usage("client", "2026-03-14")] == [3]
    assert await ledger.prune(T0 + 15) == 0


async def test_a_client_is_named_by_its_latest_name(ledger: Bounded) -> None:
    renamed = [
        row("n1", T0, client="zed", cost_usd=0.1),
        row("n2", T0 + 10, client="amy", cost_usd=0.1),  # the same aggregate, renamed
        row("n3", T0 + 20, "c2", client="yan", provider="other", cost_usd=0.05),
    ]
    await ledger.write(renamed)
    day = await ledger.usage("client", "2026-03-14")
    assert [(u.client_id, u.name) for u in day] == [("c1", "amy"), ("c2", "yan")]
    later = row("n4", T0 + 86400, client="ada", model="other", cost_usd=0.1)
    earlier = row("n5", T0 + 86400 + 5, "c2", client="abe", cost_usd=0.1)
    await ledger.write([later, earlier])
    # over the month: the name of the client's latest row, across days and aggregates
    month = await ledger.usage("client", "2026-03")
    assert [(u.client_id, u.name) for u in month] == [("c1", "ada"), ("c2", "abe")]
    spend = await ledger.spend("client", "2026-03-01", 10)
    assert [s.name for s in spend] == ["ada", "abe"]
