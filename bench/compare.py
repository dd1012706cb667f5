"""Interleaved A/B of relaygate source trees under S1 (or S2), against the minimal relay: how the
per-change figures in ANALYSIS.md were measured.

    git archive <commit> src | tar -x -C /tmp/a      # one tree per commit to compare
    ../.venv/bin/python compare.py --tree before=/tmp/a/src --tree after=../src --rounds 5

Trees given with --redis-tree are served with REDIS_URL (one private redis-server, pinned to core
1, a database of its own per tree), as run.py's relaygate-redis target; --tree ones in memory.

Each tree runs as `python -m relaygate serve` with PYTHONPATH pointing at it (the editable
install is a plain path entry, so the tree wins), with bench/run.py's config, pinned to core 0
like every target; wrk and the upstream mock run on core 1. Prints per target the median req/s
and CPU µs per request over the rounds, and user/system CPU per request."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import run as R
from _procs import CLK_TCK, RedisServer, Server, free_port


def proc_times(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


DOORS: dict[str, str] = {}  # a tree's own door (`--tree name=src@messages`)


def door_of(target: R.Target, door: str) -> str:
    """The minimal relay speaks only chat: it is the yardstick for every door."""
    return "chat" if target.name == "minimal" else DOORS.get(target.name, door)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--tree", action="append", default=[], help="name=/path/to/src (@door: its own door)"
    )
    ap.add_argument("--redis-tree", action="append", default=[], help="the same, state in Redis")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--stream", action="store_true", help="S2 instead of S1")
    ap.add_argument(
        "--door", default="chat", choices=sorted(R.DOOR_PATHS), help="the request's front door"
    )
    args = ap.parse_args()
    R.ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="relaygate-compare-"))
    upstream = R.mock_server("upstream", R.LOAD_CPU, work)
    servers: list[Server] = [upstream]
    try:
        upstream.start()
        upstream.wait_ready()
        redis: RedisServer | None = None
        if args.redis_tree:
            redis = RedisServer.make("redis-server", int(R.LOAD_CPU), work, R.clean_env())
            servers.append(redis)
            redis.start()
            redis.wait_ready()
        config = R.relaygate_config(f"http://127.0.0.1:{upstream.port}/v1", R.relaygate_features())
        targets = []
        specs = [(spec, False) for spec in args.tree]
        specs += [(spec, True) for spec in args.redis_tree]
        for index, (spec, on_redis) in enumerate(specs):
            name, src = spec.split("=", 1)
            if "@" in src:
                src, DOORS[name] = src.rsplit("@", 1)
            home = work / name
            home.mkdir()
            (home / "relaygate.yaml").write_text(config)
            port = free_port()
            argv = [str(R.PY), "-m", "relaygate", "serve", "--config", "relaygate.yaml"]
            env = R.clean_env(PYTHONPATH=str(Path(src).resolve()))
            if on_redis and redis is not None:
                env["REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/{index}"
            server = Server(name, [*argv, "--port", str(port)], port, "/health", 0, home, env,
                            work / f"{name}.log")  # fmt: skip
            servers.append(server)
            server.start()
            server.wait_ready()
            targets.append(R.Target(name, server, key=R.CLIENT_KEY, prefix="mock/"))
        minimal = R.minimal_server(f"http://127.0.0.1:{upstream.port}/v1", work)
        servers.append(minimal)
        minimal.start()
        minimal.wait_ready()
        targets.append(R.Target("minimal", minimal))
        for target in targets:  # warm-up
            R.wrk(target, seconds=1, stream=args.stream, door=door_of(target, args.door))
        runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        for _ in range(args.rounds):
            for target in targets:
                target.server.wait_idle()
                before = proc_times(target.server.pid)
                door = door_of(target, args.door)
                result = R.wrk(target, seconds=args.seconds, stream=args.stream, door=door)
                after = proc_times(target.server.pid)
                per = 1e6 / CLK_TCK / max(1, result["requests"])
                result["user_us"] = (after[0] - before[0]) * per
                result["sys_us"] = (after[1] - before[1]) * per
                runs[target.name].append(result)
        ref = statistics.median(r["rps"] for r in runs["minimal"])
        for name, results in runs.items():
            rps = statistics.median(r["rps"] for r in results)
            cpu = statistics.median(r["cpu_us_per_req"] for r in results)
            user = statistics.median(r["user_us"] for r in results)
            system = statistics.median(r["sys_us"] for r in results)
            each = " ".join(f"{r['rps']:,.0f}/{r['cpu_us_per_req']:.0f}" for r in results)
            print(
                f"{name:12s} {rps:8,.0f} req/s {cpu:5.0f} us/req (user {user:.0f}, sys "
                f"{system:.0f})  x{rps / ref:.2f} of minimal | runs: {each}"
            )
    finally:
        for server in reversed(servers):
            server.stop()


if __name__ == "__main__":
    main()
