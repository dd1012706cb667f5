"""Writes bench/RESULTS.md from one run's raw figures: summary, goals of issues 7, 12, 13, 14 and
16 (met / not met), details, the profiles ranked by function and by layer, commands, versions. A
hand-written analysis in bench/ANALYSIS.md (if present) is included as it stands, marked with the
run it was written for. Each goal that holds relaygate against an older build looks that build's
target up by its commit (ISSUE13_BASELINE, ISSUE16_BASELINE): a run measures several."""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

SCENARIOS = """\
S1: wrk, non-streaming, 50 connections. S2: wrk, streaming (20 content chunks, usage chunk,
[DONE]), 50 connections. S3: open loop at {rate} req/s, latency from the scheduled send time.
S4: {streams} concurrent streams, 200 ms to first byte, 20 chunks 100 ms apart; max gap is the
worst gap between two reads of one stream over all runs; peak RSS sampled every 50 ms during S4.
CPU µs/req: the target's user+system CPU time during S1 divided by its requests (for
relaygate-redis: relaygate's process only; the redis-server's own CPU, on core 1, is shown apart).
The relaygate-<commit> rows are older builds (BENCH_BASELINE), measured in S1 and S2 only:
relaygate-2c8d30e is issue 13's baseline (the build before the one proxy path and the doors;
issues 12 and 13's goals use it), relaygate-29338ea the build before issue 16's transport seam
(issue 16's goal: S1 and S2 without a proxy within 5 % of it).
relaygate-library is relaygate's config with the provider's `transport: {{kind: library}}`
(aiohttp instead of the own HTTP/1.1 client) to the same mock; relaygate-h2 has the provider at
bench/h2_upstream.py (the mock's answers on hypercorn, TLS with a self-signed certificate, ALPN
h2 and http/1.1, core 1) with `transport: {{kind: library, http2: true}}` and `tls: {{ca_bundle}}`
(httpx + h2). Both run S1, S2 and S4 only; relaygate-h2's S1 and S2 may be limited by the h2
mock (pure Python, sharing core 1 with wrk): read its CPU µs/req rather than its req/s.
D1-D4 (the in-memory relaygate only): S1's and S2's request as an Anthropic Messages body to
/v1/messages (D1 whole, D2 streamed) and as an OpenAI Responses body to /v1/responses (D3, D4),
translated by the door to the same OpenAI mock; their CPU a request is held against S1's or S2's.
E1 (the in-memory relaygate only): S1's user turn as an OpenAI embeddings request to /v1/embeddings
(floats, 1,536 a vector), passed to the same mock; its CPU a request is held against S1's.
C0, C1 (relaygate-cache only: the same config with the cache enabled): C0 is S1 with a
number in the user turn that differs every request (each a miss, its answer stored), C1 is S1's
request itself (each a hit after the first)."""
REDIS, MEMORY = "relaygate-redis", "relaygate"
ISSUE13_BASELINE = "2c8d30e"  # the build before the one proxy path and the doors (issues 12, 13)
ISSUE16_BASELINE = "29338ea"  # the build before the transport seam: "today's" for issue 16
LIBRARY_TARGET, H2_TARGET = "relaygate-library", "relaygate-h2"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _goal_lines(rows: list[tuple[str, str, bool | None]]) -> list[str]:
    """A goals table: each goal, what was measured, and met / **not met** (n/a: no figure)."""
    lines = ["| goal | measured | met |", "|---|---|---|"]
    for goal, measured, ok in rows:
        verdict = "n/a" if ok is None else ("met" if ok else "**not met**")
        lines.append(f"| {goal} | {measured} | {verdict} |")
    return lines


def _med(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def _f(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "n/a" if value is None or value != value else fmt.format(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


class Figures:
    """Medians per target and scenario, and the derived figures the goals use."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.res: dict[str, dict[str, list[dict[str, Any]]]] = raw.get("results", {})
        main = ("S1", "S2", "S3", "S4")  # the cache target runs only C0, C1
        self.targets = [
            t for t in self.res.get("S1", {}) if any(self.res.get(sc, {}).get(t) for sc in main)
        ]
        # older builds measured beside: [{"commit", "sha", "name"}]; a raw file from before
        # there could be several has one "baseline"
        self.baselines: list[dict[str, str]] = raw.get("baselines") or (
            [raw["baseline"]] if raw.get("baseline") else []
        )

    def baseline_for(self, commit: str) -> str | None:
        """The target of the older build `commit` (its short hash), if this run measured it."""
        name = f"relaygate-{commit[:7]}"
        return name if any(b.get("name") == name for b in self.baselines) else None

    @property
    def baseline_names(self) -> list[str]:
        return [b["name"] for b in self.baselines if b.get("name")]

    def med(self, scen: str, target: str, key: str) -> float | None:
        return _med(self.res.get(scen, {}).get(target, []), key)

    def added(self, scen: str, target: str, key: str) -> float | None:
        t, d = self.med(scen, target, key), self.med(scen, "direct", key)
        return t - d if t is not None and d is not None else None

    def s4_all_complete(self, target: str) -> bool | None:
        runs = self.res.get("S4", {}).get(target, [])
        return all(r["completed"] == r["streams"] for r in runs) if runs else None

    def s4_worst(self, target: str, key: str) -> float | None:
        vals = [r[key] for r in self.res.get("S4", {}).get(target, [])]
        return max(vals) if vals else None

    def startup(self, target: str) -> float | None:
        vals = self.raw.get("startup_s", {}).get(target)
        return statistics.median(vals) if vals else None


def summary_table(fg: Figures) -> list[str]:
    head = (
        "| target | S1 req/s | S1 CPU µs/req | S2 streams/s | S3 p50 ms | S3 p99 ms | S3 errors |"
        " S4 done | S4 max gap ms | S4 peak RSS MB | start-up s | idle RSS MB |"
    )
    lines = [head, "|" + "---|" * 12]
    for t in fg.targets:
        s4 = fg.res.get("S4", {}).get(t, [])
        done = f"{min(r['completed'] for r in s4)}/{s4[0]['streams']}" if s4 else "n/a"
        s3 = fg.res.get("S3", {}).get(t, [])
        errs = sum(r["error_count"] for r in s3) if s3 else "n/a"
        lines.append(
            f"| {t} | {_f(fg.med('S1', t, 'rps'))} | {_f(fg.med('S1', t, 'cpu_us_per_req'))} "
            f"| {_f(fg.med('S2', t, 'rps'))} | {_f(fg.med('S3', t, 'p50_ms'), '{:.2f}')} "
            f"| {_f(fg.med('S3', t, 'p99_ms'), '{:.2f}')} | {errs} | {done} "
            f"| {_f(fg.s4_worst(t, 'gap_max_ms'))} | {_f(fg.s4_worst(t, 'peak_rss_mb'), '{:.1f}')} "
            f"| {_f(fg.startup(t), '{:.2f}') if t in fg.raw.get('startup_s', {}) else '-'} "
            f"| {_f(fg.raw.get('idle_rss_mb', {}).get(t), '{:.1f}')} |"
        )
    return lines


def goals(fg: Figures) -> list[str]:
    rg = "relaygate"
    s1 = {t: fg.med("S1", t, "rps") for t in fg.targets}
    imp = fg.raw.get("import", {}).get("import_ms")
    peak = fg.s4_worst(rg, "peak_rss_mb")
    rows: list[tuple[str, str, bool | None]] = [
        (
            "S1 throughput >= 0.7 x minimal relay",
            _f(_ratio(s1.get(rg), s1.get("minimal")), "{:.2f} x")
            + f" ({_f(s1.get(rg))} vs {_f(s1.get('minimal'))} req/s)",
            _ok(_ratio(s1.get(rg), s1.get("minimal")), ">=", 0.7),
        ),
        (
            "S1 throughput >= 30 x LiteLLM",
            _f(_ratio(s1.get(rg), s1.get("litellm")), "{:.1f} x")
            + f" ({_f(s1.get(rg))} vs {_f(s1.get('litellm'))} req/s)",
            _ok(_ratio(s1.get(rg), s1.get("litellm")), ">=", 30),
        ),
        (
            "S3 added latency p50 <= 1 ms",
            _f(fg.added("S3", rg, "p50_ms"), "{:+.2f} ms"),
            _ok(fg.added("S3", rg, "p50_ms"), "<=", 1.0),
        ),
        (
            "S3 added latency p99 <= 3 ms",
            _f(fg.added("S3", rg, "p99_ms"), "{:+.2f} ms"),
            _ok(fg.added("S3", rg, "p99_ms"), "<=", 3.0),
        ),
        ("S4 all streams complete", str(fg.s4_all_complete(rg)), fg.s4_all_complete(rg)),
        (
            "S4 no inter-chunk gap > 200 ms added",
            _f(_added_gap(fg, rg), "{:+.0f} ms")
            + f" (worst gap {_f(fg.s4_worst(rg, 'gap_max_ms'))} vs direct "
            f"{_f(fg.s4_worst('direct', 'gap_max_ms'))} ms)",
            _ok(_added_gap(fg, rg), "<=", 200),
        ),
        ("S4 peak RSS <= 150 MB", _f(peak, "{:.1f} MB"), _ok(peak, "<=", 150)),
        ("start-up < 1 s", _f(fg.startup(rg), "{:.2f} s"), _ok(fg.startup(rg), "<", 1.0)),
        (
            "idle RSS < 80 MB",
            _f(fg.raw.get("idle_rss_mb", {}).get(rg), "{:.1f} MB"),
            _ok(fg.raw.get("idle_rss_mb", {}).get(rg), "<", 80),
        ),
        ("import relaygate < 300 ms", _f(imp, "{:.0f} ms"), _ok(imp, "<", 300)),
    ]
    lines = _goal_lines(rows)
    return lines


def goals_state_seam(fg: Figures) -> list[str]:
    """Issue 12: the state seam costs the in-memory gateway at most 5 % in S1 against the build
    before it (measured in this run beside it), and with Redis state S1 is at least 0.6 x the
    minimal relay."""
    base = fg.baseline_for(ISSUE13_BASELINE)
    rps = {t: fg.med("S1", t, "rps") for t in fg.targets}
    cpu = {t: fg.med("S1", t, "cpu_us_per_req") for t in fg.targets}
    rows: list[tuple[str, str, bool | None]] = []
    if base:
        speed = _ratio(rps.get(MEMORY), rps.get(base))
        cost = _ratio(cpu.get(MEMORY), cpu.get(base))
        rows += [
            (
                f"in-memory S1 req/s within 5 % of the baseline build ({base})",
                _f(speed, "{:.3f} x") + f" ({_f(rps.get(MEMORY))} vs {_f(rps.get(base))} req/s)",
                _ok(speed, ">=", 0.95),
            ),
            (
                f"in-memory S1 CPU µs/req within 5 % of {base}",
                _f(cost, "{:.3f} x")
                + f" ({_f(cpu.get(MEMORY), '{:.1f}')} vs {_f(cpu.get(base), '{:.1f}')} µs)",
                _ok(cost, "<=", 1.05),
            ),
        ]
    else:
        rows.append(
            (f"in-memory S1 within 5 % of the baseline build ({ISSUE13_BASELINE})", "n/a", None)
        )
    red = _ratio(rps.get(REDIS), rps.get("minimal"))
    rows.append(
        (
            "Redis-state S1 >= 0.6 x minimal relay",
            _f(red, "{:.2f} x") + f" ({_f(rps.get(REDIS))} vs {_f(rps.get('minimal'))} req/s)",
            _ok(red, ">=", 0.6),
        )
    )
    lines = _goal_lines(rows)
    lines += [
        "",
        "S1 side by side (medians of this run; x minimal = req/s over the minimal relay's):",
        "",
        "| target | state, transport | S1 req/s | x minimal | CPU µs/req (relay) "
        "| redis-server CPU µs/req | S2 streams/s | S2 CPU µs/stream |",
        "|---|---|---|---|---|---|---|---|",
    ]
    kinds = {
        MEMORY: "memory + SQLite ledger; own HTTP/1.1 client (auto)",
        REDIS: "Redis (REDIS_URL) + SQLite ledger; own client",
        LIBRARY_TARGET: "memory + SQLite; library transport (aiohttp, HTTP/1.1)",
        H2_TARGET: "memory + SQLite; HTTP/2 over TLS (httpx + h2) to the h2 mock",
        "minimal": "none",
    }
    for name in fg.baseline_names:
        kinds[name] = "memory + SQLite; " + _BUILDS.get(
            name.removeprefix("relaygate-"), "an older build"
        )
    for t, kind in kinds.items():
        if t not in fg.targets:
            continue
        lines.append(
            f"| {t} | {kind} | {_f(rps.get(t))} "
            f"| {_f(_ratio(rps.get(t), rps.get('minimal')), '{:.2f}')} "
            f"| {_f(cpu.get(t), '{:.1f}')} "
            f"| {_f(fg.med('S1', t, 'companion_cpu_us_per_req'), '{:.1f}') if t == REDIS else '-'} "
            f"| {_f(fg.med('S2', t, 'rps'))} | {_f(fg.med('S2', t, 'cpu_us_per_req'), '{:.1f}')} |"
        )
    return lines


_BUILDS = {
    ISSUE13_BASELINE: "issue 13's baseline build",
    ISSUE16_BASELINE: "the build before the transport seam",
}


DOORS = {  # scenario -> (what, the chat scenario it is held against)
    "D1": ("/v1/messages, whole answers", "S1"),
    "D2": ("/v1/messages, streamed", "S2"),
    "D3": ("/v1/responses, whole answers", "S1"),
    "D4": ("/v1/responses, streamed", "S2"),
}


def goals_doors(fg: Figures) -> list[str]:
    """Issue 13: each door costs at most 15 % more CPU a request than the chat route (the same
    request in the door's format, to the same OpenAI mock); S2 at least 0.9 x the minimal relay;
    S1's ratio to the minimal relay at least the baseline build's (measured in this run)."""
    rows: list[tuple[str, str, bool | None]] = []
    table = [
        "| scenario | door | req/s | CPU µs/req | chat route's CPU µs/req | x chat | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for scen, (what, chat) in DOORS.items():
        cpu, base = fg.med(scen, MEMORY, "cpu_us_per_req"), fg.med(chat, MEMORY, "cpu_us_per_req")
        ratio = _ratio(cpu, base)
        errors = sum(r.get("errors", 0) for r in fg.res.get(scen, {}).get(MEMORY, []))
        table.append(
            f"| {scen} | {what} | {_f(fg.med(scen, MEMORY, 'rps'))} | {_f(cpu, '{:.1f}')} "
            f"| {_f(base, '{:.1f}')} ({chat}) | {_f(ratio, '{:.3f}')} | {errors} |"
        )
        rows.append(
            (
                f"{what}: CPU a request <= 1.15 x the chat route's ({chat})",
                _f(ratio, "{:.3f} x") + f" ({_f(cpu, '{:.1f}')} vs {_f(base, '{:.1f}')} µs)",
                None if ratio is None else (ratio <= 1.15 and errors == 0),
            )
        )
    s2 = _ratio(fg.med("S2", MEMORY, "rps"), fg.med("S2", "minimal", "rps"))
    rows.append(("S2 streams/s >= 0.9 x minimal relay", _f(s2, "{:.3f} x"), _ok(s2, ">=", 0.9)))
    s1 = _ratio(fg.med("S1", MEMORY, "rps"), fg.med("S1", "minimal", "rps"))
    base = fg.baseline_for(ISSUE13_BASELINE)
    if base:
        before = _ratio(fg.med("S1", base, "rps"), fg.med("S1", "minimal", "rps"))
        rows.append(
            (
                f"S1 / minimal at least the baseline build's ({base})",
                f"{_f(s1, '{:.3f}')} vs {_f(before, '{:.3f}')}",
                None if s1 is None or before is None else s1 >= before,
            )
        )
    lines = _goal_lines(rows)
    intro = "The doors beside the chat route (in-memory relaygate, medians):"
    return [*lines, "", intro, "", *table]


def goals_issue14(fg: Figures) -> list[str]:
    """Issue 14: a cache hit served at least 3x faster than a miss in S1 (C1 against C0 on the
    same cache-enabled relaygate: req/s, and p50 latency at S1's 50 connections); embeddings at
    no more CPU a request than chat (E1 against S1)."""
    hit, miss = fg.med("C1", "relaygate-cache", "rps"), fg.med("C0", "relaygate-cache", "rps")
    speed = _ratio(hit, miss)
    p50_hit = fg.med("C1", "relaygate-cache", "lat_p50_us")
    p50_miss = fg.med("C0", "relaygate-cache", "lat_p50_us")
    faster = _ratio(p50_miss, p50_hit)
    e1, s1 = fg.med("E1", MEMORY, "cpu_us_per_req"), fg.med("S1", MEMORY, "cpu_us_per_req")
    emb = _ratio(e1, s1)
    errors = sum(
        r.get("errors", 0)
        for scen, target in (("C0", "relaygate-cache"), ("C1", "relaygate-cache"), ("E1", MEMORY))
        for r in fg.res.get(scen, {}).get(target, [])
    )
    rows = [
        (
            "S1 cache hits (C1) >= 3 x the req/s of misses (C0)",
            _f(speed, "{:.2f} x") + f" ({_f(hit)} vs {_f(miss)} req/s)",
            _ok(speed, ">=", 3.0),
        ),
        (
            "S1 cache hit p50 latency <= 1/3 of a miss's",
            _f(faster, "{:.2f} x") + f" ({_f(p50_hit)} vs {_f(p50_miss)} µs)",
            _ok(faster, ">=", 3.0),
        ),
        (
            "embeddings (E1): CPU a request <= the chat route's (S1)",
            _f(emb, "{:.3f} x") + f" ({_f(e1, '{:.1f}')} vs {_f(s1, '{:.1f}')} µs)",
            _ok(emb, "<=", 1.0),
        ),
        ("no errors in C0, C1, E1", str(errors), errors == 0),
    ]
    lines = _goal_lines(rows)
    return lines


def _versions(fg: Figures, target: str, scens: tuple[str, ...]) -> dict[str, int]:
    """The POSTs the h2 mock served during `scens`' runs of `target`, by HTTP version."""
    total: Counter[str] = Counter()
    for scen in scens:
        for r in fg.res.get(scen, {}).get(target, []):
            total.update(r.get("upstream_http_versions") or {})
    return dict(sorted(total.items()))


def _versions_text(counts: dict[str, int]) -> str:
    return ", ".join(f"HTTP/{v} {n:,}" for v, n in counts.items()) or "none counted"


def _errors(fg: Figures, target: str) -> int | None:
    """wrk's errors in S1 and S2 plus the streams S4 did not complete, over every run."""
    runs = [fg.res.get(scen, {}).get(target, []) for scen in ("S1", "S2", "S4")]
    if not any(runs):
        return None
    wrk_errors = sum(r.get("errors", 0) for scen_runs in runs[:2] for r in scen_runs)
    return wrk_errors + sum(r["streams"] - r["completed"] for r in runs[2])


def goals_transport(fg: Figures) -> list[str]:
    """Issue 16: with no proxy (the own client, which `transport: auto` keeps), the in-memory
    relaygate's S1 and S2 stay within 5 % of the build before the transport seam (measured in
    this run beside it; CPU shown beside); the library transport's S1, S2 and S4 figures beside
    the own client's; S4 run over HTTP/2 (httpx + h2 to the h2 mock, every call on HTTP/2)."""
    base = fg.baseline_for(ISSUE16_BASELINE)
    before_name = base or f"relaygate-{ISSUE16_BASELINE} (not measured)"
    rows: list[tuple[str, str, bool | None]] = []
    for scen, unit, per in (("S1", "req/s", "µs/req"), ("S2", "streams/s", "µs/stream")):
        now = fg.med(scen, MEMORY, "rps")
        before = fg.med(scen, base, "rps") if base else None
        cpu_now = fg.med(scen, MEMORY, "cpu_us_per_req")
        cpu_before = fg.med(scen, base, "cpu_us_per_req") if base else None
        speed = _ratio(now, before)
        rows.append(
            (
                f"no proxy: in-memory {scen} {unit} within 5 % of {before_name}",
                _f(speed, "{:.3f} x")
                + f" ({_f(now)} vs {_f(before)} {unit}); CPU {_f(cpu_now, '{:.1f}')} vs "
                f"{_f(cpu_before, '{:.1f}')} {per} ({_f(_ratio(cpu_now, cpu_before), '{:.3f}')} x)",
                _ok(speed, ">=", 0.95),
            )
        )
    lib = {scen: fg.med(scen, LIBRARY_TARGET, "rps") for scen in ("S1", "S2")}
    own = {scen: fg.med(scen, MEMORY, "rps") for scen in ("S1", "S2")}
    lib_done = fg.s4_all_complete(LIBRARY_TARGET)
    lib_errors = _errors(fg, LIBRARY_TARGET)
    have = [lib["S1"], lib["S2"], lib_done]
    rows.append(
        (
            "the library transport's S1, S2 and S4 figures beside the own client's (table below)",
            f"S1 {_f(_ratio(lib['S1'], own['S1']), '{:.2f}')} x own's, "
            f"S2 {_f(_ratio(lib['S2'], own['S2']), '{:.2f}')} x, "
            f"S4 all complete: {lib_done}; errors: "
            + (str(lib_errors) if lib_errors is not None else "n/a"),
            None
            if all(v is None for v in have)
            else (all(v is not None for v in have) and bool(lib_done) and lib_errors == 0),
        )
    )
    streams = fg.raw.get("settings", {}).get("s4_streams")
    h2_runs = fg.res.get("S4", {}).get(H2_TARGET, [])
    done = fg.s4_all_complete(H2_TARGET)
    done_text = ", ".join(f"{r['completed']}/{r['streams']}" for r in h2_runs) if h2_runs else "n/a"
    rows.append((f"S4 ({streams} streams) over HTTP/2: all complete", done_text, done))
    gap = _added_gap(fg, H2_TARGET)
    rows.append(
        (
            "S4 over HTTP/2: no inter-chunk gap > 200 ms added (issue 7's bound)",
            _f(gap, "{:+.0f} ms")
            + f" (worst gap {_f(fg.s4_worst(H2_TARGET, 'gap_max_ms'))} vs direct "
            f"{_f(fg.s4_worst('direct', 'gap_max_ms'))} ms)",
            _ok(gap, "<=", 200),
        )
    )
    peak = fg.s4_worst(H2_TARGET, "peak_rss_mb")
    rows.append(
        (
            "S4 over HTTP/2: peak RSS <= 150 MB (issue 7's bound)",
            _f(peak, "{:.1f} MB"),
            _ok(peak, "<=", 150),
        )
    )
    h2_errors = _errors(fg, H2_TARGET)
    rows.append(
        (
            "no errors over HTTP/2 (wrk's in S1 and S2, streams S4 did not complete)",
            str(h2_errors) if h2_errors is not None else "n/a",
            None if h2_errors is None else h2_errors == 0,
        )
    )
    s4_versions = _versions(fg, H2_TARGET, ("S4",))
    all_versions = _versions(fg, H2_TARGET, ("S1", "S2", "S4"))
    s4_done = sum(r["completed"] for r in h2_runs)
    rows.append(
        (
            "every call relaygate-h2 made reached the h2 mock over HTTP/2",
            f"S4: {_versions_text(s4_versions)} ({s4_done:,} streams completed over "
            f"{len(h2_runs)} runs); S1, S2 and S4: {_versions_text(all_versions)}",
            None
            if not h2_runs
            else (set(all_versions) == {"2"} and s4_versions.get("2", 0) >= s4_done > 0),
        )
    )
    lines = _goal_lines(rows)
    lines += [
        "",
        "The transports side by side (medians; S4: TTFB p50 the median of the runs' p50s, "
        "TTFB max, max gap and peak RSS the worst run's; errors: wrk's in S1 and S2 plus streams "
        "S4 did not complete, over every run):",
        "",
        "| target | transport | S1 req/s | S1 CPU µs/req | S2 streams/s | S2 CPU µs/stream "
        "| S4 done | S4 TTFB p50 / max ms | S4 max gap ms | S4 peak RSS MB | errors "
        "| calls at the h2 mock |",
        "|" + "---|" * 12,
    ]
    kinds = {
        MEMORY: "own HTTP/1.1 client (`auto`, no proxy)",
        LIBRARY_TARGET: "library: aiohttp, HTTP/1.1 (`kind: library`)",
        H2_TARGET: "library: httpx + h2, HTTP/2 over TLS (`http2: true`)",
    }
    if base:
        kinds = {base: "the build before the seam (aiohttp)", **kinds}
    for t, kind in kinds.items():
        if t not in fg.targets:
            continue
        s4 = fg.res.get("S4", {}).get(t, [])
        s4_done_text = f"{min(r['completed'] for r in s4)}/{s4[0]['streams']}" if s4 else "-"
        ttfb = (
            f"{_f(fg.med('S4', t, 'ttfb_p50_ms'))} / {_f(fg.s4_worst(t, 'ttfb_max_ms'))}"
            if s4
            else "-"
        )
        errors = _errors(fg, t)
        lines.append(
            f"| {t} | {kind} | {_f(fg.med('S1', t, 'rps'))} "
            f"| {_f(fg.med('S1', t, 'cpu_us_per_req'), '{:.1f}')} | {_f(fg.med('S2', t, 'rps'))} "
            f"| {_f(fg.med('S2', t, 'cpu_us_per_req'), '{:.1f}')} | {s4_done_text} | {ttfb} "
            f"| {_f(fg.s4_worst(t, 'gap_max_ms')) if s4 else '-'} "
            f"| {_f(fg.s4_worst(t, 'peak_rss_mb'), '{:.1f}') if s4 else '-'} "
            f"| {errors if errors is not None else 'n/a'} "
            f"| {_versions_text(all_versions) if t == H2_TARGET else '-'} |"
        )
    direct_ttfb = fg.s4_worst("direct", "ttfb_max_ms")
    if not any(fg.raw.get("transport_configs", {}).values()):
        return lines  # a run from before the transport seam
    lines += [
        "",
        f"- S4's time to first byte includes the wait for a connection (direct: worst "
        f"{_f(direct_ttfb)} ms): the transports keep their default `max_connections_per_host` "
        "(1,000 since commit b47ce58, 100 before: HTTP/1.1 streams past it queue for a free "
        "connection); httpx carries at most 100 streams on one HTTP/2 connection and opens no "
        "second, so before commit e0d363d relaygate-h2's streams past 100 queued there "
        "(time to first byte ~20 s); since, they are spread over lanes of 100.",
    ]
    for scen, per in (("S1", "request"), ("S2", "stream")):
        mock_us = fg.med(scen, H2_TARGET, "companion_cpu_us_per_req")
        rps = fg.med(scen, H2_TARGET, "rps")
        share = mock_us * rps / 1e6 if mock_us is not None and rps is not None else None
        if share is None:
            continue
        lines.append(
            f"- {scen}, relaygate-h2: the h2 mock's own CPU (core 1, beside the load) "
            f"{_f(mock_us, '{:.1f}')} µs a {per}, {_f(share * 100, '{:.0f}')} % of a core at "
            f"{_f(rps)} {per}s/s"
            + (
                "; the mock used half of core 1 or more (which it shares with wrk): relaygate-h2's "
                f"rate there is likely the mock's limit, its CPU a {per} the relay's cost"
                if share >= 0.5
                else ""
            )
            + "."
        )
    return lines


def _added_gap(fg: Figures, target: str) -> float | None:
    t, d = fg.s4_worst(target, "gap_max_ms"), fg.s4_worst("direct", "gap_max_ms")
    return t - d if t is not None and d is not None else None


def _ok(value: float | None, op: str, limit: float) -> bool | None:
    if value is None or value != value:
        return None
    return {"<": value < limit, "<=": value <= limit, ">=": value >= limit}[op]


def ratios(fg: Figures) -> list[str]:
    out = []
    for scen, label in (("S1", "S1 req/s"), ("S2", "S2 streams/s")):
        vals = {t: fg.med(scen, t, "rps") for t in fg.targets}
        for rg in (MEMORY, REDIS):
            if rg not in vals:
                continue
            others = ["minimal", "litellm", "direct"] + ([MEMORY] if rg == REDIS else [])
            if rg == MEMORY:
                others += [LIBRARY_TARGET, H2_TARGET, *fg.baseline_names]
            parts = [
                f"{rg} / {other} = {_f(_ratio(vals.get(rg), vals.get(other)), '{:.2f}')}"
                for other in others
                if other in vals
            ]
            out.append(f"- {label}: " + "; ".join(parts))
    redis_cpu = fg.med("S1", REDIS, "companion_cpu_us_per_req")
    if redis_cpu is not None:
        out.append(
            f"- S1, relaygate-redis: the redis-server's own CPU (core 1, not in the table's "
            f"CPU column) {_f(redis_cpu, '{:.1f}')} µs a request; in S2 "
            f"{_f(fg.med('S2', REDIS, 'companion_cpu_us_per_req'), '{:.1f}')} µs a stream"
        )
    for t in fg.targets:
        if t == "direct" or not fg.res.get("S3", {}).get(t):
            continue
        out.append(
            f"- S3 latency added over direct, {t}: "
            f"p50 {_f(fg.added('S3', t, 'p50_ms'), '{:+.2f}')} ms,"
            f" p99 {_f(fg.added('S3', t, 'p99_ms'), '{:+.2f}')} ms"
        )
    return out


def details(fg: Figures) -> list[str]:
    keys = {
        "S1": ("rps", "lat_p50_us", "lat_p99_us", "errors", "cpu_us_per_req", "redis_cpu_us"),
        "S2": ("rps", "lat_p50_us", "lat_p99_us", "errors", "cpu_us_per_req", "redis_cpu_us"),
        "S3": ("p50_ms", "p90_ms", "p99_ms", "max_ms", "error_count", "send_lag_max_ms"),
        "S4": (
            "completed",
            "ttfb_p50_ms",
            "ttfb_max_ms",
            "gap_p99_ms",
            "gap_max_ms",
            "peak_rss_mb",
            "wall_s",
        ),
    }
    out: list[str] = []
    for scen, cols in keys.items():
        out += ["", f"**{scen}** (every run)", "", "| target | run | " + " | ".join(cols) + " |"]
        out.append("|" + "---|" * (len(cols) + 2))
        for t, runs in fg.res.get(scen, {}).items():
            for i, r in enumerate(runs, 1):
                vals = [_f(r.get(_RAW_KEY.get(c, c)), "{:,.1f}") for c in cols]
                out.append(f"| {t} | {i} | " + " | ".join(vals) + " |")
        errs = {t: [r.get("errors") for r in runs] for t, runs in fg.res.get(scen, {}).items()}
        if scen in ("S3", "S4") and any(any(e for e in v) for v in errs.values()):
            out.append("")
            out.append(f"{scen} errors by kind: " + "; ".join(f"{t}: {v}" for t, v in errs.items()))
    return out


_RAW_KEY = {"redis_cpu_us": "companion_cpu_us_per_req"}  # a column's name -> its raw figure


def _layer(path: str) -> str:
    head = path.split("/", 1)[0] if "/" in path else "(python)"
    if path.startswith("/") or "python3" in path:
        head = path.rsplit("/", 2)[-2] if path.count("/") >= 2 else "(python)"
    return head


def profile_lines(raw_path: Path, *, top: int = 25) -> list[str]:
    if not raw_path.exists():
        return [f"(no profile at {raw_path})"]
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = []
        for fr in stack.split(";"):
            m = _FRAME.match(fr)
            frames.append((m["func"], m["file"]) if m else (fr, "?"))
        if not frames:
            continue
        func, file = frames[-1]
        self_t[f"{file}:{func}"] += n
        layers[_layer(file)] += n
        for key in {
            f"{file}:{func}"
            for func, file in frames
            if file.startswith("relaygate/") and not file.startswith("relaygate/cli/")
        }:
            incl[key] += n
    if not total:
        return ["(empty profile)"]

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f}%"

    out = [
        f"{total} samples (py-spy at 250 Hz, `--gil`: only the thread holding the GIL, i.e. "
        "where the one core's time goes).",
        "",
        "Self time by package:",
        "",
    ]
    out += ["| package | self |", "|---|---|"]
    out += [f"| {k} | {pct(v)} |" for k, v in layers.most_common(12)]
    out += [
        "",
        f"Top {top} functions by self time:",
        "",
        "| # | function | self |",
        "|---|---|---|",
    ]
    out += [f"| {i} | `{k}` | {pct(v)} |" for i, (k, v) in enumerate(self_t.most_common(top), 1)]
    out += ["", "relaygate functions by inclusive time (their own code and all they call):", ""]
    out += ["| # | function | inclusive |", "|---|---|---|"]
    out += [f"| {i} | `{k}` | {pct(v)} |" for i, (k, v) in enumerate(incl.most_common(20), 1)]
    return out


SOAK_START, SOAK_END = "<!-- soak:start -->", "<!-- soak:end -->"


def write_report(raw: dict[str, Any], out: Path, *, bench_dir: Path) -> None:
    fg = Figures(raw)
    v = raw.get("versions", {})
    when = raw.get("finished_utc") or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# relaygate benchmark results",
        "",
        f"Generated by `make bench` (bench/run.py) on {when}, relaygate commit "
        f"{v.get('relaygate commit', '?')}, in {raw.get('elapsed_s', 0) / 60:.1f} min."
        + (" **QUICK smoke run: short runs, figures not meaningful.**" if raw.get("quick") else ""),
        "",
        "Set-up: every target pinned to core 0 (`taskset -c 0`); wrk, the Python load clients and "
        "the upstream mock that the relays forward to on core 1 (`taskset -c 1`). All targets are "
        "alive for the whole run and measured in interleaved rounds; figures are medians of "
        f"{raw.get('settings', {}).get('reps')} runs (LiteLLM S4: one run). 'direct' is a second "
        "mock upstream on core 0, hit directly: the mock's own ceiling and the latency baseline.",
        "",
        "relaygate features on: "
        + ", ".join(
            f"{k}: {'on' if on else 'NOT AVAILABLE'}" for k, on in raw.get("features", {}).items()
        )
        + ". The `relaygate` target keeps its state in memory (the ledger in SQLite); "
        "`relaygate-redis` is the same config served with "
        + (
            f"`REDIS_URL={raw['redis']['url']}`, a private `redis-server` started for the run "
            "(no persistence) pinned to core 1 beside the load"
            if raw.get("redis")
            else "REDIS_URL (not measured in this run)"
        )
        + "."
        + "".join(
            f" `{b['name']}` is the in-memory relaygate of commit {b.get('sha', b['commit'])}"
            f" ({_BUILDS.get(b.get('sha', b['commit'])[:7], 'an older build')}; its src/ from "
            "`git archive`), S1 and S2 only."
            for b in fg.baselines
        )
        + (
            f" `{LIBRARY_TARGET}` is relaygate's config with the provider's "
            "`transport: {kind: library}`"
            if raw.get("transport_configs", {}).get(LIBRARY_TARGET)
            else ""
        )
        + (
            f"; `{H2_TARGET}` sends to an HTTP/2 mock over TLS (bench/h2_upstream.py) with "
            "`transport: {kind: library, http2: true}` and `tls: {ca_bundle}`"
            if raw.get("transport_configs", {}).get(H2_TARGET)
            else ""
        )
        + (
            "; both S1, S2 and S4 only."
            if raw.get("transport_configs", {}).get(LIBRARY_TARGET)
            else ""
        ),
        "",
        "## Goals (issue 7)",
        "",
        *goals(fg),
        "",
        "## Goals (issue 12: the state seam)",
        "",
        *goals_state_seam(fg),
        "",
        "## Goals (issue 13: the front doors)",
        "",
        *goals_doors(fg),
        "",
        "## Goals (issue 14: the response cache, embeddings)",
        "",
        *goals_issue14(fg),
        "",
        "## Goals (issue 16: the transport)",
        "",
        *goals_transport(fg),
        "",
        "## Summary (medians)",
        "",
        *summary_table(fg),
        "",
        *ratios(fg),
        "",
        SCENARIOS.format(
            rate=raw.get("settings", {}).get("s3_rate"),
            streams=raw.get("settings", {}).get("s4_streams"),
        ),
        "",
    ]
    lines += _load_section(raw)
    imp = raw.get("import", {})
    lines += [
        "## Import and start-up",
        "",
        f"- `import relaygate`: median {_f(imp.get('import_ms'), '{:.0f}')} ms in-process "
        f"(runs: {imp.get('import_runs_ms')}); whole `python -c` process "
        f"{_f(imp.get('process_wall_ms'), '{:.0f}')} ms. Command: `{imp.get('command')}`",
        "- Start-up to the first 200 on the health path, every run (s): "
        + "; ".join(
            f"{k}: {[round(x, 3) for x in vals]}" for k, vals in raw.get("startup_s", {}).items()
        ),
        f"- RSS after the whole run (MB): {_rounded(raw.get('rss_after_mb'))}; "
        f"VmHWM (lifetime peak, MB): {_rounded(raw.get('hwm_mb'))}"
        + (
            f"; the redis-server {raw['redis']['rss_after_mb']:.1f}"
            if raw.get("redis", {}).get("rss_after_mb") is not None
            else ""
        ),
        "",
        "Heaviest imports under `import relaygate` (cumulative µs, `python -X importtime`):",
        "",
        *[f"- {us:,} µs `{name.strip()}`" for us, name in imp.get("top_cumulative_us", [])[:10]],
        "",
        "## Profile of relaygate",
        "",
    ]
    prof = raw.get("profile", {})
    for scen, p in prof.items():
        lines += [
            f"### {_profile_title(scen)} ({_f(p.get('load_rps'))} req/s while sampled)",
            "",
            f"Commands: {'; '.join(f'`{c}`' for c in p.get('commands', []))}",
            "",
        ]
        if scen == "S1":
            lines += ["Flame graph: [profile-s1.svg](profile-s1.svg).", ""]
        lines += [*(p.get("table") or profile_lines(Path(p["raw"]))), ""]
    if not prof:
        lines += ["(not profiled in this run)", ""]
    analysis = bench_dir / "ANALYSIS.md"
    if analysis.exists():
        lines += [analysis.read_text().rstrip(), ""]
    lines += ["## Details", *details(fg), "", "## Commands", ""]
    for name, cmd in raw.get("commands", {}).items():
        lines.append(f"- {name}: `{cmd}`")
    for scen in ("S1", "S2", "S3", "S4"):
        runs = fg.res.get(scen, {}).get("relaygate") or []
        if runs:
            lines.append(
                f"- {scen} load (relaygate; the other targets differ only in URL, model and key):"
                f" `{runs[0]['command']}`"
            )
    lines += [
        "",
        "relaygate config used:",
        "",
        "```yaml",
        raw.get("relaygate_config", "").rstrip(),
        "```",
        "",
    ]
    extra = _provider_lines(raw)
    if extra:
        lines += [
            "relaygate-library and relaygate-h2 use the same config with these lines added to the "
            "mock provider (relaygate-h2's base_url is the h2 mock's `https://` URL):",
            "",
            "```yaml",
            *extra,
            "```",
            "",
        ]
    if raw.get("litellm_config"):
        lines += ["LiteLLM config used:", "", "```yaml", raw["litellm_config"].rstrip(), "```", ""]
    lines += ["## Versions", ""] + [f"- {k}: {val}" for k, val in v.items()]
    if raw.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in raw["notes"]]
    text = "\n".join(lines) + "\n"
    if out.exists():  # the soak's section (bench/soak.py) is written by another run: keep it
        old = out.read_text()
        start, end = old.find(SOAK_START), old.find(SOAK_END)
        if 0 <= start < end:
            text += "\n" + old[start : end + len(SOAK_END)] + "\n"
    out.write_text(text)


def _provider_lines(raw: dict[str, Any]) -> list[str]:
    """The lines each transport target's config adds to the bench's config, with a comment."""
    base = set(raw.get("relaygate_config", "").splitlines())
    out = []
    for name, text in raw.get("transport_configs", {}).items():
        added = [ln for ln in (text or "").splitlines() if ln not in base and "base_url" not in ln]
        if added:
            out += [f"# {name}", *added]
    return out


def _profile_title(key: str) -> str:
    """'S1' -> 'Under S1' (relaygate); 'S1, relaygate-redis' -> 'relaygate-redis under S1'."""
    scen, _, target = key.partition(", ")
    return f"{target} under {scen}" if target else f"Under {scen}"


def _rounded(d: dict[str, float] | None) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in (d or {}).items())


def _load_section(raw: dict[str, Any]) -> list[str]:
    snaps = raw.get("load", [])
    busy = sorted({name for s in snaps for name, _ in s.get("busy_elsewhere", [])})
    out = ["## Machine load during the run", ""]
    for s in snaps:
        out.append(
            f"- {s['when']}: load average {' '.join(s['loadavg'])}; other processes busy: "
            + (", ".join(f"{n} {c:.0%}" for n, c in s["busy_elsewhere"]) or "none")
        )
    if busy:
        out += [
            "",
            "**Other work was running on this machine during the run** ("
            + ", ".join(busy)
            + "): the cores were not exclusive to the bench, so absolute figures may be low and "
            "noisy; the interleaved rounds keep the ratios between targets fairer than the "
            "absolute numbers.",
        ]
    return [*out, ""]
