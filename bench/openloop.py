"""Open-loop fixed-rate load: request i is due at t0 + i/rate, whether or not earlier ones are done.

Latency is measured from the SCHEDULED send time, so a stalled target cannot hide its stall by
slowing the client down (coordinated omission). Bounded: rate x duration requests, each with a
timeout, and a hard stop. Prints one JSON object: p50/p90/p99/max latency (ms), errors, and how
late the client itself was in sending (send lag), which shows whether the client kept up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def body_for(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello in one short sentence, please."},
        ],
        "max_tokens": 32,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"content-type": "application/json"}
    if args.key:
        headers["authorization"] = f"Bearer {args.key}"
    payload = body_for(args.model, args.stream)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    latencies: list[float] = []
    lags: list[float] = []
    errors: dict[str, int] = {}
    total = int(args.rate * (args.duration + args.warmup))
    warm = int(args.rate * args.warmup)

    async def one(i: int, due: float) -> None:
        if i >= warm:
            lags.append(time.perf_counter() - due)
        try:
            async with session.post(args.url, data=payload, headers=headers) as resp:
                await resp.read()
                ok = resp.status == 200
                status = str(resp.status)
        except TimeoutError:
            ok, status = False, "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            ok, status = False, type(exc).__name__
        if i < warm:
            return
        if ok:
            latencies.append(time.perf_counter() - due)
        else:
            errors[status] = errors.get(status, 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        t0 = time.perf_counter() + 0.05
        interval = 1.0 / args.rate
        for i in range(total):
            due = t0 + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        deadline = args.timeout + 5
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            task.cancel()
        if pending:
            errors["unfinished"] = errors.get("unfinished", 0) + len(pending)
    latencies.sort()
    lags.sort()
    ms = [v * 1000 for v in latencies]
    return {
        "url": args.url,
        "rate": args.rate,
        "duration_s": args.duration,
        "sent": total - warm,
        "ok": len(latencies),
        "errors": errors,
        "error_count": sum(errors.values()),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else float("nan"),
        "send_lag_p99_ms": percentile([v * 1000 for v in lags], 99),
        "send_lag_max_ms": lags[-1] * 1000 if lags else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds sent first, not counted")
    ap.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--key", default="")
    ap.add_argument("--stream", action="store_true")
    args = ap.parse_args()
    if args.rate <= 0 or args.duration <= 0 or args.rate * args.duration > 1_000_000:
        sys.exit("rate and duration must be positive and bounded (<= 1e6 requests)")
    import uvloop

    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
