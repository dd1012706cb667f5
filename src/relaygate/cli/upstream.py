"""`relaygate upstream check`: one cheap call per upstream key, a progress bar, a table. Keys the
provider rejects are marked `invalid` (and spent quotas `exhausted`) in the store."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from rich.console import Console
from rich.progress import Progress

from relaygate.cli.tables import show
from relaygate.config.model import Config
from relaygate.gateway import Gateway
from relaygate.keys.pool import KeyPool, KeyState
from relaygate.providers.base import Provider
from relaygate.routing.discovery import MAX_LIST_BYTES
from relaygate.transport import NO_OPTIONS, RequestOptions, TransportError

CONCURRENCY = 8
CHECK_TIMEOUT_S = 30.0
# results that mean the upstream took the key (exit 0 when every key's result is one of these)
ANSWERED = ("ok", "rate limited (key accepted)", "accepted (request refused)")


@dataclass
class CheckResult:
    provider: str
    key_id: str
    result: str
    status: int | None
    latency_ms: int | None
    state: str = ""


async def _check_one(gw: Gateway, provider: Provider, pool: KeyPool, key: KeyState) -> CheckResult:
    """A one-token chat with the default model; without one, the provider's model list."""
    model = gw.router.default_model(provider.name)
    request = (
        provider.check_request(key.secret, model) if model else provider.models_request(key.secret)
    )
    if request is None:
        return CheckResult(provider.name, key.key_id, "ok (no upstream)", None, None)
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
                body = await response.read(MAX_LIST_BYTES)
        finally:
            response.close()
    except TransportError as exc:  # a proxy, a connect timeout, a bound: the key is not judged
        return CheckResult(provider.name, key.key_id, f"unreachable ({exc.code})", None, None)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return CheckResult(
            provider.name, key.key_id, f"unreachable ({type(exc).__name__})", None, None
        )
    latency = int((time.monotonic() - started) * 1000)
    how = "" if model else f" (listed {len(provider.parse_models(body))} models)"
    if response.status < 400:
        if key.state in ("invalid", "exhausted"):
            pool.enable(key)  # it answers again: back in service
        return CheckResult(provider.name, key.key_id, "ok" + how, response.status, latency)
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
    rows = [
        [
            r.provider,
            r.key_id,
            r.result,
            str(r.status or "-"),
            str(r.latency_ms if r.latency_ms is not None else "-"),
            r.state,
        ]
        for r in results
    ]
    columns = ("provider", "key id", "result", "status", "latency ms", "state")
    show(console, "upstream keys", columns, rows)
    bad = sum(1 for r in results if not r.result.startswith(ANSWERED))
    console.print(f"{len(results) - bad} of {len(results)} keys answered ok")
    return 1 if bad else 0
