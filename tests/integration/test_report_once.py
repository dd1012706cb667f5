"""SPEC §11: the daily report is sent once across replicas, and a report missed while no
replica ran is sent after a restart (once, and only for a day that had requests).

Replicas here are Gateways in this process over one SQLite file and, for the Redis case, one
private redis-server: the claim that decides who sends lives in the shared store (Redis when
set, else the database), so the replicas never talk to each other directly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from relaygate.gateway import Gateway
from tests.conftest import build_config
from tests.integration._redis import PrivateRedis
from tests.integration.test_reports import check_text, settings, telegram, traffic

__all__ = ["telegram"]  # the fixture, used by the tests below


@pytest.fixture(params=["database", "redis"])
def shared(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Where the replicas' claims live: the database they share, or a private Redis."""
    if request.param == "database":
        yield {}
        return
    server = PrivateRedis().start()
    try:
        yield {"redis_url": server.url}
    finally:
        server.stop()


async def _replicas(data: dict[str, Any], db_path: Any, n: int, clock: Any) -> list[Gateway]:
    gateways = []
    for _ in range(n):
        gw = Gateway(build_config(data, db_path))
        gw.accounting.reports.clock = clock
        gateways.append(gw)
    await asyncio.gather(*(gw.start() for gw in gateways))
    return gateways


async def test_three_replicas_send_the_daily_report_once(
    live_gateway, fake_openai, telegram, shared
):
    data = settings(fake_openai, telegram, daily_at="00:00") | shared
    gw = live_gateway(data)
    day = await asyncio.to_thread(traffic, gw, fake_openai)
    midnight = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
    offset = midnight.timestamp() - 1.0 - time.time()  # 1 s before the report is due
    replicas = await _replicas(data, gw.db_path, 3, lambda: time.time() + offset)
    try:
        (message,) = await asyncio.to_thread(telegram.wait_for, 1, 5.0)
        await asyncio.sleep(1.5)  # time for a second (wrong) report to arrive
    finally:
        await asyncio.gather(*(r.aclose() for r in replicas))
    assert len(telegram.messages()) == 1, "the report was sent more than once"
    check_text(message.json["text"], day)


async def test_a_missed_report_is_sent_after_a_restart_once(
    live_gateway, fake_openai, telegram, shared
):
    data = settings(fake_openai, telegram, daily_at="08:00") | shared
    gw = live_gateway(data)
    day = await asyncio.to_thread(traffic, gw, fake_openai)
    # every replica was down at 08:00 the next day; one starts again at 10:00
    ten = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1, hours=10)
    offset = ten.timestamp() - time.time()
    (first,) = await _replicas(data, gw.db_path, 1, lambda: time.time() + offset)
    try:
        (message,) = await asyncio.to_thread(telegram.wait_for, 1, 5.0)
    finally:
        await first.aclose()
    check_text(message.json["text"], day)
    # restarted again the same morning (two replicas now): that report is not sent twice
    again = await _replicas(data, gw.db_path, 2, lambda: time.time() + offset)
    try:
        await asyncio.sleep(1.5)
    finally:
        await asyncio.gather(*(r.aclose() for r in again))
    assert len(telegram.messages()) == 1


async def test_no_missed_report_for_a_day_without_requests(live_gateway, fake_openai, telegram):
    data = settings(fake_openai, telegram, daily_at="08:00")
    gw = live_gateway(data)
    month_on = 30 * 86400.0  # a month on: the day before had no requests
    (replica,) = await _replicas(data, gw.db_path, 1, lambda: time.time() + month_on)
    try:
        await asyncio.sleep(1.5)
    finally:
        await replica.aclose()
    assert telegram.messages() == []
