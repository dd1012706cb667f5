"""Many concurrent streaming chat completions; records time to first byte and inter-chunk gaps.

All streams are opened at once (bounded by --streams) and each must end with `data: [DONE]`
within --timeout. For each stream the client notes the time of the response headers, of the first
body byte, and of every later read; a gap is the time between two reads of one stream. Prints one
JSON object: completed / failed, TTFB percentiles, gap percentiles and the largest gap (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
from openloop import body_for, percentile


async def one(
    session: aiohttp.ClientSession, url: str, payload: bytes, headers: dict[str, str]
) -> dict[str, Any]:
    start = time.perf_counter()
    first: float | None = None
    last = start
    gaps: list[float] = []
    tail = b""
    events = 0
    try:
        async with session.post(url, data=payload, headers=headers) as resp:
            if resp.status != 200:
                await resp.read()
                return {"ok": False, "error": str(resp.status)}
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
                events += data.count(b"data: ")
                tail = (tail + data)[-64:]
    except TimeoutError:
        return {"ok": False, "error": "timeout"}
    except (aiohttp.ClientError, OSError) as exc:
        return {"ok": False, "error": type(exc).__name__}
    done = b"data: [DONE]" in tail
    return {
        "ok": done,
        "error": None if done else "no [DONE]",
        "ttfb": (first or last) - start,
        "total": last - start,
        "gaps": gaps,
        "events": events,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"content-type": "application/json"}
    if args.key:
        headers["authorization"] = f"Bearer {args.key}"
    payload = body_for(args.model, True)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.perf_counter()
        tasks = [
            asyncio.create_task(one(session, args.url, payload, headers))
            for _ in range(args.streams)
        ]
        done, pending = await asyncio.wait(tasks, timeout=args.timeout + 5)
        for task in pending:
            task.cancel()
        wall = time.perf_counter() - t0
    results = [t.result() for t in done]
    ok = [r for r in results if r["ok"]]
    errors: dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    if pending:
        errors["unfinished"] = len(pending)
    ttfb = sorted(r["ttfb"] * 1000 for r in ok)
    gaps = sorted(g * 1000 for r in ok for g in r["gaps"])
    per_stream_max = sorted(max(r["gaps"], default=0.0) * 1000 for r in ok)
    return {
        "url": args.url,
        "streams": args.streams,
        "completed": len(ok),
        "errors": errors,
        "wall_s": wall,
        "ttfb_p50_ms": percentile(ttfb, 50),
        "ttfb_p99_ms": percentile(ttfb, 99),
        "ttfb_max_ms": ttfb[-1] if ttfb else float("nan"),
        "gap_p50_ms": percentile(gaps, 50),
        "gap_p99_ms": percentile(gaps, 99),
        "gap_max_ms": gaps[-1] if gaps else float("nan"),
        "stream_max_gap_p50_ms": percentile(per_stream_max, 50),
        "events_per_stream_min": min((r["events"] for r in ok), default=0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=60.0, help="per stream, seconds")
    ap.add_argument("--model", default="gpt-4o-mini-ttfb200-gap100-n20")
    ap.add_argument("--key", default="")
    args = ap.parse_args()
    if not 0 < args.streams <= 20000:
        sys.exit("--streams must be within 1..20000")
    import uvloop

    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
