"""`relaygate upstream check`: one cheap call per upstream key, a progress bar, a table. Keys the
provider rejects are marked `invalid` (and spent quotas `exhausted`) in the store."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from relaygate.config.model import Config
from relaygate.gateway import Gateway
from relaygate.keys.pool import KeyPool, KeyState
from relaygate.providers.base import Provider
from relaygate.transport import NO_OPTIONS, RequestOptions, TransportError

CONCURRENCY = 8
CHECK_TIMEOUT_S = 30.0


@dataclass
class CheckResult:
    provider: str
    key_id: str
    result: str
    status: int | None
    latency_ms: int | None
    state: str = ""


async def _check_one(gw: Gateway, provider: Provider, pool: KeyPool, key: KeyState) -> CheckResult:
    model = gw.router.default_model(provider.name)
    if not model:
        return CheckResult(
            provider.name,
            key.key_id,
            "skipped: no model to test with (set models: or <P>_MODEL)",
            None,
            None,
        )
    request = provider.check_request(key.secret, model)
    started = time.monotonic()
    try:
        options = NO_OPTIONS if key.proxy is None else RequestOptions(proxy=key.proxy)
        response = await provider.send(
            gw.transports.get(provider.name),
            request,
            timeout_s=min(CHECK_TIMEOUT_S, provider.config.timeout_s),
            options=options,
        )
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                body = await response.read(1024 * 1024)
        finally:
            response.close()
    except TransportError as exc:  # a proxy, a connect timeout, a bound: the key is not judged
        return CheckResult(provider.name, key.key_id, f"unreachable ({exc.code})", None, None)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return CheckResult(
            provider.name, key.key_id, f"unreachable ({type(exc).__name__})", None, None
        )
    latency = int((time.monotonic() - started) * 1000)
    if response.status < 400:
        return CheckResult(provider.name, key.key_id, "ok", response.status, latency)
    failure = provider.classify_error(response.status, response.headers, body)
    if failure.kind in ("key_rejected", "quota_exhausted"):
        pool.on_failure(key, failure)
    label = {
        "key_rejected": "rejected: marked invalid",
        "quota_exhausted": "quota exhausted",
        "rate_limited": "rate limited (key accepted)",
        "server": "upstream error",
        "timeout": "timeout",
        "bad_request": "accepted (request refused)",
    }[failure.kind]
    return CheckResult(provider.name, key.key_id, label, response.status, latency)


async def _check_all(gw: Gateway, console: Console) -> list[CheckResult]:
    jobs = [(gw.providers[name], pool, key) for name, pool in gw.pools.items() for key in pool.keys]
    gate = asyncio.Semaphore(CONCURRENCY)
    results: list[CheckResult] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("checking upstream keys", total=len(jobs))

        async def run(provider: Provider, pool: KeyPool, key: KeyState) -> None:
            async with gate:
                result = await _check_one(gw, provider, pool, key)
            result.state = key.state
            results.append(result)
            progress.advance(task)

        await asyncio.gather(*(run(*job) for job in jobs))
    order = {(p.name, k.key_id): i for i, (p, _, k) in enumerate(jobs)}
    return sorted(results, key=lambda r: order[(r.provider, r.key_id)])


def run_check(config: Config) -> int:
    console = Console()
    gw = Gateway(config)

    async def main() -> list[CheckResult]:
        try:
            await gw.keysync.restore()  # what it finds is written over what is stored
            return await _check_all(gw, console)
        finally:
            await gw.aclose()

    results = asyncio.run(main())
    table = Table(title="upstream keys")
    for col in ("provider", "key id", "result", "status", "latency ms", "state"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.provider,
            r.key_id,
            r.result,
            str(r.status or "-"),
            str(r.latency_ms if r.latency_ms is not None else "-"),
            r.state,
        )
    console.print(table)
    bad = sum(1 for r in results if r.result != "ok")
    console.print(f"{len(results) - bad} of {len(results)} keys answered ok")
    return 1 if bad else 0
