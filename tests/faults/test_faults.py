"""Fault injection (SPEC §4, §6, §8a, §9): real traffic (the official `openai` SDK and httpx,
streamed and not, from a few threads, bounded in count and time) against the live gateway while
ONE thing at a time breaks:

1. the database locked by a second process (`BEGIN EXCLUSIVE` held 3.5-4 s, past the store's
   1 s busy timeout): requests never wait on it; admin and status-page reads (three readers at
   once) answer within 2.5 s, 200 or 503 `database_unavailable`; rows wait and are all written
   once it is released, also when a monitor gives up on its admin reads; revokes made during the
   lock do what their answer said (a 503 must not land later) and one made after the release
   is in the file;
2. the database file deleted (with its -wal and -shm) under traffic: requests keep being
   answered and the rows of requests made after the deletion are in the new file at that path,
   once each, and /admin/usage reads that file;
3. an upstream that hangs (before its head, or after it), stalls mid-answer, resets the
   connection, sends half a body then closes (chunked, or delimited by the end of the
   connection) or resets, answers 200 with an error inside (a JSON body, or a stream's first
   event) or with an HTML page: every request gets its SPEC answer (502, 504, or one in-stream
   error event and no [DONE]) within the request deadline, each hanging call is hung up on at
   its timeout, and each event the client gets is whole JSON;
4. the client leaving before the upstream answers (streamed or not, upstream silent or after
   its head), mid-stream, and right after sending its request (close, reset, or 50 ms later):
   the upstream call is cancelled within 1 s, the row says `client_closed`, and the other
   clients' requests go on unharmed.

After each phase, from the `ledger` table of the SQLite file, the key states and the budgets:
every request that reached admission has exactly one row (matched by `x-request-id`; refusals by
auth or budget have none), with the status and error code the client saw; `usage_daily` counts
each row once; every budget reservation is settled, spend equals the rows' cost, and no budget
is over its limit by more than one request's worst case; and no key is parked by a fault that
was not the key's (the upstream faults run with a failure threshold no test reaches, so any
parked key was misclassified).

The upstream faults use `FaultyUpstream` below: an OpenAI-compatible upstream on a raw asyncio
socket (chat completions, JSON and chunked SSE) whose behaviour per request is chosen by the last
user message (`fault=<mode> tag=<id> ...`) and which notes when the gateway hung up on it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from relaygate.auth.clients import static_id
from relaygate.state.memory_admissions import utc_month
from tests.conftest import ADMIN_SECRET, CLIENT_KEY, LiveGateway
from tests.fakes._server import ThreadLoop, free_port
from tests.fakes.openai_upstream import FakeOpenAI, Reply, usage_object

MODEL = "up/gpt-4o-mini"
UP_KEYS = ["sk-faults-up-aaaa-000000000001", "sk-faults-up-bbbb-000000000002"]
TIGHT_KEY = "rg-faults-tight-client-key-0123456789abcdefg"
LEAVER_KEY = "rg-faults-leaving-client-key-0123456789abcde"
ADMIN = {"admin-secret": ADMIN_SECRET}
PRICING = {"up/gpt-4o-mini": {"input_per_mtok": 1000, "output_per_mtok": 2000}}
IN, OUT = 0.001, 0.002  # USD per token, from PRICING
MAX_TOKENS = 40
BUDGET = 1000.0  # the main client: never reached
TIGHT_BUDGET = 1.0  # ~10 requests of ~$0.08, then budget_exceeded
REQUEST_TIMEOUT_S = 10.0
REFUSALS = {"invalid_api_key", "rate_limit_exceeded", "budget_exceeded", "model_not_allowed"}
NOT_READY = ("cooling", "exhausted", "invalid")


# --- traffic ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Req:
    text: str
    stream: bool = False
    via: str = "httpx"  # httpx | sdk
    key: str = CLIENT_KEY
    read_timeout: float | None = None  # the client gives up (and leaves) after this long


@dataclass
class Sent:
    req: Req
    started: float
    elapsed: float = 0.0
    status: int | None = None
    request_id: str | None = None
    code: str | None = None  # of an error answer, or of an error event inside a stream
    done: bool = False  # the whole answer arrived (a stream: up to [DONE])
    text: str = ""
    failure: str | None = None  # no answer: the transport error

    @property
    def left_at(self) -> float:
        return self.started + self.elapsed

    @property
    def admitted(self) -> bool:
        """Whether the request reached admission (refusals by auth or limits have no row)."""
        if self.status is None:
            return False
        return not (self.status in (401, 403, 429) and self.code in REFUSALS)

    def __str__(self) -> str:
        kind = f"{self.req.via} {'stream' if self.req.stream else 'plain'}"
        return (
            f"<{kind} {self.req.text!r}: {self.status} {self.code} done={self.done} "
            f"{self.elapsed:.2f}s {self.failure or ''}>"
        )


def body_of(req: Req) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": req.text}],
        "max_tokens": MAX_TOKENS,
        "stream": req.stream,
    }
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    return body


def worst_case(req: Req) -> float:
    """An upper bound of the gateway's reservation for `req` (prompt: request bytes / 3 + 1)."""
    size = len(json.dumps(body_of(req), indent=1)) + 64
    return (size / 3 + 1) * IN + MAX_TOKENS * OUT


def _error_code(raw: bytes) -> str | None:
    try:
        return str(json.loads(raw)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"<not the error shape: {raw[:80]!r}>"


def _event(sent: Sent, line: str) -> None:
    if not line.startswith("data: "):
        return
    data = line[6:]
    if data == "[DONE]":
        sent.done = True
        return
    try:
        obj = json.loads(data)
    except ValueError:
        sent.code = sent.code or f"<an event that is not JSON: {data[:60]!r}>"
        return
    if "error" in obj:
        if not (sent.code or "").startswith("<"):  # an event that was not JSON stays noted
            sent.code = obj["error"].get("code")
        return
    for choice in obj.get("choices") or ():
        sent.text += (choice.get("delta") or {}).get("content") or ""


def send_httpx(http: httpx.Client, base: str, req: Req) -> Sent:
    sent = Sent(req, time.monotonic())
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=req.read_timeout or REQUEST_TIMEOUT_S)
    try:
        with http.stream(
            "POST",
            base + "/v1/chat/completions",
            json=body_of(req),
            headers={"Authorization": f"Bearer {req.key}"},
            timeout=timeout,
        ) as resp:
            sent.status = resp.status_code
            sent.request_id = resp.headers.get("x-request-id")
            if resp.status_code != 200:
                sent.code = _error_code(resp.read())
            elif req.stream:
                for line in resp.iter_lines():
                    _event(sent, line)
            else:
                sent.text = json.loads(resp.read())["choices"][0]["message"]["content"] or ""
                sent.done = True
    except httpx.HTTPError as exc:
        sent.failure = type(exc).__name__
    sent.elapsed = time.monotonic() - sent.started
    return sent


def send_sdk(sdk: openai.OpenAI, req: Req) -> Sent:
    sent = Sent(req, time.monotonic())
    client = sdk if req.read_timeout is None else sdk.with_options(timeout=req.read_timeout)
    messages: Any = body_of(req)["messages"]
    try:
        if req.stream:
            with client.chat.completions.create(
                model=MODEL,
                messages=messages,
                max_tokens=MAX_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
            ) as stream:
                sent.status = stream.response.status_code
                sent.request_id = stream.response.headers.get("x-request-id")
                for chunk in stream:
                    for choice in chunk.choices:
                        sent.text += choice.delta.content or ""
                sent.done = True  # the SDK stops at [DONE] and raises on an error event
        else:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, max_tokens=MAX_TOKENS
            )
            sent.status = raw.status_code
            sent.request_id = raw.headers.get("x-request-id")
            sent.text = raw.parse().choices[0].message.content or ""
            sent.done = True
    except openai.APIStatusError as exc:
        sent.status = exc.status_code
        sent.request_id = exc.response.headers.get("x-request-id")
        sent.code = exc.code or _error_code(exc.response.content)
    except openai.APIConnectionError as exc:  # APITimeoutError included
        sent.failure = type(exc).__name__
    except openai.APIError as exc:  # an error event inside a started stream
        sent.code = exc.code
    except ValueError as exc:  # an event the SDK could not parse
        sent.code = f"<an event that is not JSON: {exc}>"
    sent.elapsed = time.monotonic() - sent.started
    return sent


class Sender:
    """One thread's clients: an httpx.Client and an OpenAI SDK client per client key."""

    def __init__(self, live: LiveGateway) -> None:
        self.live = live
        self.http = httpx.Client(timeout=REQUEST_TIMEOUT_S)
        self._sdks: dict[str, openai.OpenAI] = {}

    def send(self, req: Req) -> Sent:
        if req.via == "httpx":
            return send_httpx(self.http, self.live.base, req)
        sdk = self._sdks.get(req.key)
        if sdk is None:
            sdk = self._sdks[req.key] = openai.OpenAI(
                base_url=self.live.v1, api_key=req.key, max_retries=0, timeout=REQUEST_TIMEOUT_S
            )
        return send_sdk(sdk, req)

    def close(self) -> None:
        self.http.close()
        for sdk in self._sdks.values():
            sdk.close()


class Traffic:
    """`threads` threads, each sending `make(thread, i)` for i = 0, 1, ... until `stop()`, its
    `per_thread` requests, `max_s` seconds or a `make` that returns None, whichever is first."""

    def __init__(
        self,
        live: LiveGateway,
        make: Callable[[int, int], Req | None],
        *,
        threads: int = 4,
        per_thread: int = 80,
        max_s: float = 8.0,
        pause_s: float = 0.02,
    ) -> None:
        self.live, self.make = live, make
        self.per_thread, self.pause_s = per_thread, pause_s
        self.sent: list[Sent] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_s
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, n: int) -> None:
        sender = Sender(self.live)
        try:
            for i in range(self.per_thread):
                if self._stop.is_set() or time.monotonic() > self._deadline:
                    break
                req = self.make(n, i)
                if req is None:
                    break
                sent = sender.send(req)
                with self._lock:
                    self.sent.append(sent)
                self._stop.wait(self.pause_s)
        except BaseException as exc:  # a bug in the test itself: reported by join()
            self.errors.append(exc)
        finally:
            sender.close()

    def stop(self) -> list[Sent]:
        self._stop.set()
        return self.join()

    def join(self) -> list[Sent]:
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in self._threads), "a traffic thread is stuck"
        assert not self.errors, self.errors
        with self._lock:
            return list(self.sent)


def send_all(live: LiveGateway, reqs: list[Req], threads: int = 4) -> list[Sent]:
    """Each request once, spread over `threads` threads, all at the same time."""
    parts = [reqs[n::threads] for n in range(threads)]
    return Traffic(
        live,
        lambda n, i: parts[n][i] if i < len(parts[n]) else None,
        threads=threads,
        per_thread=len(reqs),
        max_s=60,
        pause_s=0,
    ).join()


# --- the database, the ledger, the key states, the budgets --------------------------------------
def db_rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows from the file at `path` (never created here: mode=rw fails when it is missing)."""
    if not path.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5)) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(sql, params)]
    except sqlite3.OperationalError as exc:  # a file deleted or not migrated yet
        if "no such table" in str(exc) or "unable to open" in str(exc):
            return []
        raise


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    return db_rows(path, "SELECT * FROM ledger")


def wait_for_rows(
    live: LiveGateway, ids: set[str], *, min_rows: int = 0, timeout: float = 8.0
) -> list[dict[str, Any]]:
    """The ledger once every id in `ids` (and at least `min_rows` rows) is in the file and the
    gateway's buffer is empty; or once nothing has changed for 1.5 s with the buffer empty (rows
    that never come), or after `timeout`."""
    ledger = live.gateway.accounting.ledger
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        rows = ledger_rows(live.db_path)
        empty = ledger.depth == 0
        if len(rows) != last or not empty:
            last, since = len(rows), time.monotonic()
        drained = empty and ids <= {r["id"] for r in rows} and len(rows) >= min_rows
        if drained:  # a batch being written right now is no longer in the buffer
            time.sleep(0.3)
            return ledger_rows(live.db_path)
        if time.monotonic() - since > 1.5 or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def check_rows(sent: list[Sent], rows: list[dict[str, Any]], client_keys: set[str]) -> None:
    """Every admitted request of these clients has exactly one row, with the status and error
    code its client saw; no row that no request of ours made."""
    ids = {static_id(k) for k in client_keys}
    mine = [r for r in rows if r["client_id"] in ids]
    counts = Counter(r["id"] for r in mine)
    assert not [i for i, n in counts.items() if n > 1], "duplicated ledger rows"
    admitted = [s for s in sent if s.admitted and s.req.key in client_keys]
    no_id = [str(s) for s in admitted if not s.request_id]
    assert not no_id, f"answers without x-request-id: {no_id}"
    expected = {s.request_id for s in admitted}
    missing = [str(s) for s in admitted if s.request_id not in counts]
    assert not missing, f"{len(missing)} of {len(admitted)} requests have no ledger row: {missing}"
    extra = [r for r in mine if r["id"] not in expected]
    assert not extra, f"rows of no request sent: {extra}"
    refused = {s.request_id for s in sent if not s.admitted and s.request_id}
    assert not refused & set(counts), "a refused request has a ledger row"
    by_id = {r["id"]: r for r in mine}
    wrong = [
        (str(s), by_id[s.request_id]["status"], by_id[s.request_id]["error_code"])
        for s in admitted
        if (by_id[s.request_id]["status"], by_id[s.request_id]["error_code"]) != (s.status, s.code)
        or by_id[s.request_id]["stream"] != int(s.req.stream)
    ]
    assert not wrong, f"rows that do not say what the client saw: {wrong}"


def check_daily(path: Path) -> None:
    """`usage_daily` counts each ledger row once (a batch written twice would count it twice:
    the ledger's primary key ignores a second copy, the aggregates do not)."""
    daily = db_rows(
        path,
        "SELECT client_id, SUM(requests) AS n, SUM(cost_usd) AS cost FROM usage_daily "
        "GROUP BY client_id ORDER BY client_id",
    )
    ledger = db_rows(
        path,
        "SELECT client_id, COUNT(*) AS n, SUM(cost_usd) AS cost FROM ledger "
        "GROUP BY client_id ORDER BY client_id",
    )
    assert [(d["client_id"], d["n"]) for d in daily] == [(r["client_id"], r["n"]) for r in ledger]
    for d, r in zip(daily, ledger, strict=True):
        assert d["cost"] == pytest.approx(r["cost"], rel=1e-9, abs=1e-12), (d, r)


def wait_reservations_settled(live: LiveGateway, timeout: float = 3.0) -> dict[str, float]:
    """Reserved USD per client id, once all are ~0 or after `timeout`."""
    budgets = live.gateway.accounting.admissions
    deadline = time.monotonic() + timeout
    while True:
        reserved = {cid: a.reserved for cid, a in list(budgets._accounts.items())}
        if all(v < 1e-9 for v in reserved.values()) or time.monotonic() > deadline:
            return reserved
        time.sleep(0.05)


def check_budgets(
    live: LiveGateway,
    sent: list[Sent],
    budgets: dict[str, float],
    rows: list[dict[str, Any]] | None,
) -> None:
    """Every reservation settled; no budget over its limit by more than one request's worst
    case; and (when `rows` is the whole ledger) spend = the sum of the client's rows' cost."""
    reserved = wait_reservations_settled(live)
    left = {cid: v for cid, v in reserved.items() if v > 1e-9}
    assert not left, f"reservations never settled (USD reserved per client id): {left}"
    for key, budget in budgets.items():
        cid = static_id(key)
        spent = spent_now(live, cid)
        worst = max((worst_case(s.req) for s in sent if s.req.key == key), default=0.0)
        assert spent <= budget + worst + 1e-9, f"{cid} spent {spent} of a {budget} budget"
        if rows is not None:
            cost = sum(r["cost_usd"] for r in rows if r["client_id"] == cid)
            assert spent == pytest.approx(cost, rel=1e-6, abs=1e-9), (cid, spent, cost)


def key_states(live: LiveGateway) -> list[dict[str, Any]]:
    answer = httpx.get(live.base + "/keys/status", headers=ADMIN, timeout=5)
    assert answer.status_code == 200, answer.text
    keys: list[dict[str, Any]] = answer.json()["keys"]
    return keys


def check_keys_ready(live: LiveGateway) -> None:
    parked = [
        (k["key_id"], k["state"], k["reason"])
        for k in key_states(live)
        if k["state"] in NOT_READY or k.get("pool_paused_for_s")
    ]
    assert not parked, f"keys parked by a fault that was not theirs: {parked}"


def check_answered(sent: list[Sent]) -> None:
    lost = [str(s) for s in sent if s.status is None]
    assert not lost, f"requests with no answer: {lost}"
    broken = [str(s) for s in sent if s.status == 500 or ((s.status or 0) >= 500 and not s.code)]
    assert not broken, f"500s or errors without a code: {broken}"


# --- phase 1: the database locked by another process --------------------------------------------
LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()  # held until the test writes a line (or its end of the pipe closes)
db.execute("COMMIT")
db.close()
print("released", flush=True)
"""


def db_config(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            "up": {
                "type": "openai",
                "base_url": fake.base_url,
                "keys": UP_KEYS,
                "models": ["gpt-4o-mini"],
                "timeout_s": 5,
            }
        },
        "clients": [
            {"name": "faults", "key": CLIENT_KEY, "monthly_budget_usd": BUDGET},
            {"name": "tight", "key": TIGHT_KEY, "monthly_budget_usd": TIGHT_BUDGET},
        ],
        "pricing": PRICING,
        "admin_secret": ADMIN_SECRET,
        "retries": {"max_attempts": 2, "deadline_s": 10, "backoff_base_s": 0.01},
        **extra,
    }


def mixed(tag: str) -> Callable[[int, int], Req]:
    """Plain and streamed, SDK and httpx; thread 3 is the client with the tight budget."""

    def make(n: int, i: int) -> Req:
        return Req(
            f"{tag} {n}-{i}",
            stream=i % 3 == 1,
            via="sdk" if (n + i) % 2 else "httpx",
            key=TIGHT_KEY if n == 3 else CLIENT_KEY,
        )

    return make


def admin_reads(
    live: LiveGateway, until: float, out: list[tuple[str, int | None, str | None, float]]
) -> None:
    """Admin and status-page reads, one after the other (0.2 s apart) until `until` (monotonic):
    (path, status, code, seconds)."""
    paths = [
        "/admin/usage",
        "/status.json",  # the status page's data: an open route
        "/admin/clients",
        "/admin/dashboard.json",
        "/admin/failures",
    ]
    time.sleep(0.3)  # rows are waiting by then: each flush before a read tries a write
    with httpx.Client(timeout=REQUEST_TIMEOUT_S, headers=ADMIN) as http:
        for i in range(20):
            if time.monotonic() > until:
                return
            path = paths[i % len(paths)]
            t = time.monotonic()
            try:
                answer = http.get(live.base + path)
            except httpx.HTTPError as exc:
                out.append((path, None, type(exc).__name__, time.monotonic() - t))
            else:
                code = _error_code(answer.content) if answer.status_code != 200 else None
                out.append((path, answer.status_code, code, time.monotonic() - t))
            time.sleep(0.2)


def warm_up(live: LiveGateway) -> list[Sent]:
    sender = Sender(live)
    try:
        sent = [
            sender.send(Req("warm up", stream=s, via=v))
            for s in (False, True)
            for v in ("httpx", "sdk")
        ]
    finally:
        sender.close()
    assert [s.status for s in sent] == [200] * 4, [str(s) for s in sent]
    rows = wait_for_rows(live, {s.request_id for s in sent if s.request_id})
    assert len(rows) == 4
    return sent


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    upstream = FakeOpenAI().start()
    upstream.default = Reply(usage=(20, 30))  # $0.08 a request
    yield upstream
    upstream.stop()


class LockedDatabase:
    """A second process holding `BEGIN EXCLUSIVE` on the gateway's SQLite file until
    `release()` (which returns how long it was held)."""

    def __init__(self, path: Path) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.held_s: float | None = None
        line = self._line()
        if line != "locked":
            self._proc.kill()
            _, err = self._proc.communicate(timeout=10)
            raise AssertionError(f"the second process took no lock: {line} {err}")
        self.locked_at = time.monotonic()

    def _line(self) -> str:
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], 10)
        return self._proc.stdout.readline().strip() if ready else "<nothing in 10 s>"

    def release(self) -> float:
        if self.held_s is None:
            assert self._proc.stdin is not None
            self._proc.stdin.write("release\n")
            self._proc.stdin.flush()
            assert self._line() == "released"
            self.held_s = time.monotonic() - self.locked_at
        return self.held_s

    def close(self) -> None:
        if self.held_s is None and self._proc.poll() is None:
            self.release()
        _, err = self._proc.communicate(timeout=10)  # closes the pipes, waits for the process
        assert self._proc.returncode == 0, err


def issue_client(live: LiveGateway, name: str) -> tuple[str, str]:
    created = httpx.post(
        live.base + "/admin/clients", json={"name": name}, headers=ADMIN, timeout=5
    )
    assert created.status_code == 201, created.text
    return created.json()["client"]["id"], created.json()["key"]


def revoked_at(live: LiveGateway, client_id: str) -> float | None:
    """revoked_at as the file says, read by a connection of its own."""
    stored = db_rows(live.db_path, "SELECT revoked_at FROM clients WHERE id = ?", (client_id,))
    assert stored, f"client {client_id} is not in the database"
    value: float | None = stored[0]["revoked_at"]
    return value


def key_works(live: LiveGateway, key: str) -> bool:
    answer = httpx.post(
        live.v1 + "/chat/completions",
        json=body_of(Req("still valid?")),
        headers={"Authorization": f"Bearer {key}"},
        timeout=5,
    )
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


def test_database_locked_by_another_process(live_gateway, fake):
    live = live_gateway(db_config(fake))
    after_id, after_key = issue_client(live, "revoked-after-the-lock")
    sent = warm_up(live)
    before = len(ledger_rows(live.db_path))

    lock = LockedDatabase(live.db_path)
    try:
        traffic = Traffic(live, mixed("locked"), max_s=6)
        admin: list[tuple[str, int | None, str | None, float]] = []
        readers = [  # three people looking at once, each reading the same pages in turn
            threading.Thread(
                target=admin_reads, args=(live, lock.locked_at + 3.0, admin), daemon=True
            )
            for _ in range(3)
        ]
        for reader in readers:
            reader.start()
        while time.monotonic() < lock.locked_at + 3.2:
            time.sleep(0.05)
        during = len(ledger_rows(live.db_path))  # WAL: readers are let in
        while time.monotonic() < lock.locked_at + 3.5:
            time.sleep(0.05)
        held_s = lock.release()
        time.sleep(0.5)  # traffic goes on across the release
        sent += traffic.stop()
        for reader in readers:
            reader.join(REQUEST_TIMEOUT_S + 5)
    finally:
        lock.close()

    # a revoke made after the release is in the file, and the key stops working
    revoke = httpx.delete(f"{live.base}/admin/clients/{after_id}", headers=ADMIN, timeout=5)
    assert revoke.status_code == 200, revoke.text
    assert revoked_at(live, after_id) is not None, "the revoke is not in the database"
    deadline = time.monotonic() + 2
    while key_works(live, after_key) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not key_works(live, after_key), "a revoked key still works"
    assert 3.3 < held_s < 4.5, held_s
    assert during == before, "rows were written while the database was locked (no real lock?)"
    slow_admin = [a for a in admin if a[3] > 2.5]
    assert not slow_admin, f"admin reads during the lock took longer than 2.5 s: {slow_admin}"
    odd_admin = [
        a for a in admin if (a[1], a[2]) not in ((200, None), (503, "database_unavailable"))
    ]
    assert not odd_admin, f"admin reads during the lock: {odd_admin}"
    check_answered(sent)
    statuses = Counter((s.status, s.code) for s in sent)
    assert set(statuses) <= {(200, None), (429, "budget_exceeded")}, statuses
    assert statuses[429, "budget_exceeded"] > 0, "the tight budget was never reached"
    assert not [str(s) for s in sent if s.status == 200 and not s.done]
    slowest = max(s.elapsed for s in sent)
    assert slowest < 1.0, f"a request waited {slowest:.2f} s (on the database?)"

    admitted = {s.request_id for s in sent if s.admitted and s.request_id}
    rows = wait_for_rows(live, admitted, timeout=10)
    check_rows(sent, rows, {CLIENT_KEY, TIGHT_KEY})
    check_daily(live.db_path)
    check_budgets(live, sent, {CLIENT_KEY: BUDGET, TIGHT_KEY: TIGHT_BUDGET}, rows)
    check_keys_ready(live)


def impatient_reads(live: LiveGateway, until: float, out: list[tuple[str, str]]) -> None:
    """A monitor that gives up on an admin read after 0.3 s (curl -m 0.3), every 0.1 s."""
    with httpx.Client(timeout=0.3, headers=ADMIN) as http:
        for _ in range(40):
            if time.monotonic() > until:
                return
            try:
                answer = http.get(live.base + "/admin/usage")
                out.append(("/admin/usage", str(answer.status_code)))
            except httpx.TimeoutException:
                out.append(("/admin/usage", "gave up"))
            time.sleep(0.1)


def test_readers_giving_up_during_the_lock_cost_no_rows(live_gateway, fake):
    """The same lock, read by a monitor with a short timeout: a read it gives up on (the route's
    task is cancelled) must not take rows waiting for the database with it."""
    live = live_gateway(db_config(fake))
    sent = warm_up(live)
    lock = LockedDatabase(live.db_path)
    try:
        traffic = Traffic(live, mixed("impatient"), max_s=6)
        reads: list[tuple[str, str]] = []
        monitor = threading.Thread(
            target=impatient_reads, args=(live, lock.locked_at + 2.5, reads), daemon=True
        )
        monitor.start()
        while time.monotonic() < lock.locked_at + 4.0:
            time.sleep(0.05)
        lock.release()
        time.sleep(0.3)
        sent += traffic.stop()
        monitor.join(REQUEST_TIMEOUT_S)
    finally:
        lock.close()
    assert ("/admin/usage", "gave up") in reads, reads
    check_answered(sent)
    admitted = {s.request_id for s in sent if s.admitted and s.request_id}
    rows = wait_for_rows(live, admitted, timeout=8)
    check_rows(sent, rows, {CLIENT_KEY, TIGHT_KEY})
    check_daily(live.db_path)
    check_budgets(live, sent, {CLIENT_KEY: BUDGET, TIGHT_KEY: TIGHT_BUDGET}, rows)
    check_keys_ready(live)


def revoke(
    live: LiveGateway, client_id: str, out: dict[str, tuple[int, str | None, float]]
) -> None:
    t = time.monotonic()
    answer = httpx.delete(
        f"{live.base}/admin/clients/{client_id}", headers=ADMIN, timeout=REQUEST_TIMEOUT_S
    )
    code = None if answer.status_code == 200 else _error_code(answer.content)
    out[client_id] = (answer.status_code, code, time.monotonic() - t)


def test_admin_writes_during_the_lock_do_what_they_answered(live_gateway, fake):
    """Four revokes at once while the database is locked: each answers within 2.5 s, 200 (and
    the key is revoked) or 503 `database_unavailable` (and it is not, not even once the lock is
    gone: a write the route gave up on must not land afterwards)."""
    live = live_gateway(db_config(fake))
    issued = dict(issue_client(live, f"revoke-during-the-lock-{n}") for n in range(4))
    warm_up(live)
    answers: dict[str, tuple[int, str | None, float]] = {}
    lock = LockedDatabase(live.db_path)
    try:
        traffic = Traffic(live, mixed("admin-writes"), threads=2, max_s=6)
        time.sleep(0.3)
        revokes = [
            threading.Thread(target=revoke, args=(live, cid, answers), daemon=True)
            for cid in issued
        ]
        for thread in revokes:
            thread.start()
        for thread in revokes:
            thread.join(REQUEST_TIMEOUT_S + 2)
        lock.release()  # as soon as every revoke has its answer
        sent = traffic.stop()
    finally:
        lock.close()
    time.sleep(1.5)  # the gateway re-reads its clients every second
    assert len(answers) == len(issued)
    slow = {cid: a for cid, a in answers.items() if a[2] > 2.5}
    assert not slow, f"revokes during the lock that took longer than 2.5 s: {slow}"
    odd = {
        cid: a
        for cid, a in answers.items()
        if a[:2] not in ((200, None), (503, "database_unavailable"))
    }
    assert not odd, odd
    broken = []
    for cid, key in issued.items():
        said_done = answers[cid][0] == 200
        stored, works = revoked_at(live, cid) is not None, key_works(live, key)
        if (stored, works) != (said_done, not said_done):
            broken.append(
                (cid, answers[cid], f"revoked in the file: {stored}", f"key works: {works}")
            )
    assert not broken, f"revokes that did not do what their answer said: {broken}"
    check_answered(sent)
    assert max(s.elapsed for s in sent) < 1.0


# --- phase 2: the database file deleted under traffic -------------------------------------------
def test_database_file_deleted_under_traffic(live_gateway, fake):
    live = live_gateway(db_config(fake))
    old = warm_up(live)
    old_ids = {s.request_id for s in old}
    traffic = Traffic(live, mixed("deleted"), max_s=6)
    time.sleep(0.5)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{live.db_path}{suffix}")
    deleted_at = time.monotonic()
    time.sleep(1.2)
    sent = traffic.stop()

    check_answered(sent)
    statuses = Counter((s.status, s.code) for s in sent)
    assert set(statuses) <= {(200, None), (429, "budget_exceeded")}, statuses
    assert not [str(s) for s in sent if s.status == 200 and not s.done]
    after = [s for s in sent if s.started > deleted_at]
    assert len(after) >= 20, "too little traffic after the deletion"
    after_ids = {s.request_id for s in after if s.admitted and s.request_id}
    rows = wait_for_rows(live, after_ids, timeout=10)
    assert live.db_path.exists(), "no new database file at the same path"
    counts = Counter(r["id"] for r in rows)
    assert not [i for i, n in counts.items() if n > 1], "duplicated ledger rows"
    missing = [str(s) for s in after if s.admitted and s.request_id not in counts]
    assert not missing, f"rows of requests made after the deletion are missing: {missing}"
    ours = {s.request_id for s in sent} | old_ids
    assert set(counts) <= ours, "rows in the new file that no request made"
    assert not old_ids & set(counts), "rows written before the deletion were written again"
    by_id = {r["id"]: r for r in rows}
    wrong = [
        str(s)
        for s in sent
        if s.request_id in by_id
        and (by_id[s.request_id]["status"], by_id[s.request_id]["error_code"]) != (s.status, s.code)
    ]
    assert not wrong, wrong
    check_daily(live.db_path)
    usage = httpx.get(live.base + "/admin/usage", headers=ADMIN, timeout=5)
    assert usage.status_code == 200, usage.text
    assert usage.json()["totals"]["requests"] == len(rows), "/admin/usage reads the old file"
    check_budgets(live, sent, {CLIENT_KEY: BUDGET, TIGHT_KEY: TIGHT_BUDGET}, None)
    check_keys_ready(live)


# --- a faulty upstream on a raw socket ----------------------------------------------------------
@dataclass
class Seen:
    """One request as the upstream saw it."""

    tag: str
    mode: str
    stream: bool
    key: str | None
    at: float
    peer_closed_at: float | None = None  # the gateway hung up before the answer was complete


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return _chunk(f"data: {data}\n\n".encode())


SERVER_ERROR = {
    "error": {
        "message": "The server had an error processing your request. Sorry about that! "
        "You can retry your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}


class FaultyUpstream:
    """OpenAI chat completions (protocols.md §1-2: JSON answers with Content-Length, streams as
    chunked SSE ending with a usage chunk and [DONE]) on a raw asyncio socket. The last user
    message picks what happens: `fault=<mode>`, optional `tag=`, `chunks=`, `delay=`:

    ok         the answer (kept alive)
    slow       waits `delay` s (default 5) before a plain answer; a stream sends its first
               chunk at once, then `chunks` (default 40) content chunks `delay` s (0.2) apart
    hang       reads the request and never answers
    hang_head  sends the head of a 200 (JSON or SSE), then nothing
    stall      a plain answer: its head and half its body; a stream: its head and two events;
               then nothing
    reset      reads the request, then a TCP reset
    half       a plain answer: its head and half its body, then the connection closed; a
               stream: its head and three events, then closed without the last chunk
    half_eof   as half, for an answer whose end is the end of the connection (no Content-Length,
               not chunked: `connection: close`), the stream cut in the middle of an event
    reset_mid  as half, then a TCP reset instead of a close
    error200   200 with `{"error": {...}}` as the body; a stream: that as its first event
    garbage    200 with an HTML body (a proxy's error page), streamed or not

    While the gateway waits (slow, hang, hang_head, stall) a watcher notes when it hangs up
    (`Seen.peer_closed_at`).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop = ThreadLoop()
        self._loop.call(self._start())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()

        self._loop.call(close(), timeout=5)
        self._loop.stop()

    def tagged(self, tag: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.tag == tag]

    # --- the server ---------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None or not await self._answer(reader, writer, *request):
                    return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()

    async def _answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        headers: dict[str, str],
        raw: bytes,
    ) -> bool:
        """Answers one request; False: the connection is done."""
        body = json.loads(raw)
        auth = headers.get("authorization", "")
        text = str(body["messages"][-1]["content"])
        opts = dict(part.split("=", 1) for part in text.split() if "=" in part)
        mode, stream = opts.get("fault", "ok"), bool(body.get("stream"))
        seen = Seen(
            opts.get("tag", ""),
            mode,
            stream,
            auth[7:] if auth.startswith("Bearer ") else None,
            time.monotonic(),
        )
        with self._lock:
            self.seen.append(seen)
        model = body["model"]
        if mode == "ok":
            await self._ok(writer, model, stream, chunks=int(opts.get("chunks", 4)), keep=True)
            return True
        if mode == "hang":
            await _peer_gone(reader, seen, None)
            return False
        if mode == "slow":
            if not stream:
                if not await _peer_gone(reader, seen, float(opts.get("delay", 5))):
                    await self._ok(writer, model, False, chunks=4, keep=False)
                return False
            await self._slow_stream(
                reader,
                writer,
                seen,
                model,
                int(opts.get("chunks", 40)),
                float(opts.get("delay", 0.2)),
            )
            return False
        if mode in ("hang_head", "stall"):
            payload = json.dumps(_completion(model, "Stalled half way")).encode()
            if stream:
                events = _sse(_role(model)) + _sse(_content(model, "Stalled"))
                writer.write(_SSE_HEAD + (events if mode == "stall" else b""))
            else:
                head = _json_head(len(payload), keep=True)
                writer.write(head + (payload[: len(payload) // 2] if mode == "stall" else b""))
            await writer.drain()
            await _peer_gone(reader, seen, None)
            return False
        if mode == "half_eof":
            head = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: "
            if stream:
                event = f"data: {json.dumps(_content(model, ' cut'))}\n\n".encode()
                writer.write(head + b"text/event-stream; charset=utf-8\r\n\r\n")
                for obj in (_role(model), _content(model, "Half")):
                    writer.write(f"data: {json.dumps(obj)}\n\n".encode())
                writer.write(event[: len(event) // 2])
            else:
                payload = json.dumps(_completion(model, "Half a body never ends")).encode()
                writer.write(head + b"application/json\r\n\r\n" + payload[: len(payload) // 2])
            await writer.drain()
            return False
        if mode == "garbage":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\n"
                + f"content-length: {len(page)}\r\n\r\n".encode()
                + page
            )
            await writer.drain()
            return True
        if mode == "reset":
            _reset(writer)
            return False
        if mode in ("half", "reset_mid"):
            if stream:
                writer.write(_SSE_HEAD + _sse(_role(model)) + _sse(_content(model, "Half")))
                writer.write(_sse(_content(model, " a")))
            else:
                payload = json.dumps(_completion(model, "Half a body never ends")).encode()
                writer.write(_json_head(len(payload), keep=True) + payload[: len(payload) // 2])
            await writer.drain()
            await asyncio.sleep(0.3)  # the gateway has read it all
            if mode == "reset_mid":
                _reset(writer)
            return False
        if mode == "error200":
            if stream:
                writer.write(_SSE_HEAD + _sse(SERVER_ERROR) + _chunk(b""))
            else:
                payload = json.dumps(SERVER_ERROR).encode()
                writer.write(_json_head(len(payload), keep=True) + payload)
            await writer.drain()
            return True
        raise AssertionError(f"unknown fault mode {mode!r}")

    async def _ok(
        self, writer: asyncio.StreamWriter, model: str, stream: bool, *, chunks: int, keep: bool
    ) -> None:
        words = [" word"] * chunks
        if not stream:
            payload = json.dumps(_completion(model, "".join(words), completion=chunks)).encode()
            writer.write(_json_head(len(payload), keep=keep) + payload)
        else:
            writer.write((_SSE_HEAD if keep else _SSE_HEAD_CLOSE) + _sse(_role(model)))
            for word in words:
                writer.write(_sse(_content(model, word)))
            writer.write(_stream_tail(model, chunks))
        await writer.drain()

    async def _slow_stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        seen: Seen,
        model: str,
        chunks: int,
        delay: float,
    ) -> None:
        watcher = asyncio.ensure_future(reader.read(1))
        try:
            writer.write(_SSE_HEAD_CLOSE + _sse(_role(model)) + _sse(_content(model, "Slow")))
            await writer.drain()
            for _ in range(chunks):
                done, _ = await asyncio.wait({watcher}, timeout=delay)
                if done:
                    seen.peer_closed_at = time.monotonic()
                    return
                writer.write(_sse(_content(model, " word")))
                await writer.drain()
            writer.write(_stream_tail(model, chunks + 1))
            await writer.drain()
        finally:
            watcher.cancel()


async def _read_request(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    raw = await reader.readexactly(int(headers.get("content-length", "0")))
    return headers, raw


async def _peer_gone(reader: asyncio.StreamReader, seen: Seen, timeout: float | None) -> bool:
    """Waits up to `timeout` s for the gateway to hang up; notes when it did."""
    watcher = asyncio.ensure_future(reader.read(1))
    try:
        done, _ = await asyncio.wait({watcher}, timeout=timeout)
    finally:
        watcher.cancel()
    if done:
        seen.peer_closed_at = time.monotonic()
    return bool(done)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _json_head(length: int, *, keep: bool) -> bytes:
    return (
        "HTTP/1.1 200 OK\r\n"
        "content-type: application/json\r\n"
        f"content-length: {length}\r\n"
        f"x-request-id: req_{uuid.uuid4().hex}\r\n"
        "openai-processing-ms: 12\r\n"
        f"connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
    ).encode()


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n"
    b"cache-control: no-cache\r\n"
    b"x-request-id: req_faulty0stream\r\n\r\n"
)
_SSE_HEAD_CLOSE = _SSE_HEAD[:-2] + b"connection: close\r\n\r\n"


def _usage(completion: int) -> dict[str, Any]:
    return usage_object(20, completion)


def _completion(model: str, text: str, completion: int = 10) -> dict[str, Any]:
    return {
        "id": "chatcmpl-faulty0000000000000000000",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(completion),
        "service_tier": "default",
        "system_fingerprint": None,
    }


def _chunk_obj(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-faulty0000000000000000000",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def _role(model: str) -> dict[str, Any]:
    return _chunk_obj(model, {"role": "assistant", "content": "", "refusal": None})


def _content(model: str, text: str) -> dict[str, Any]:
    return _chunk_obj(model, {"content": text})


def _stream_tail(model: str, completion: int) -> bytes:
    final = _chunk_obj(model, {})
    final["choices"], final["usage"] = [], _usage(completion)
    return _sse(_chunk_obj(model, {}, "stop")) + _sse(final) + _sse("[DONE]") + _chunk(b"")


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    fake = FaultyUpstream()
    yield fake
    fake.stop()


def upstream_config(
    upstream: FaultyUpstream, *, timeout_s: float, deadline_s: float, idle_s: float = 5.0
) -> dict[str, Any]:
    return {
        "providers": {
            "up": {
                "type": "openai",
                "base_url": upstream.base_url,
                "keys": UP_KEYS,
                "models": ["gpt-4o-mini"],
                "timeout_s": timeout_s,
                "stream_idle_timeout_s": idle_s,
            }
        },
        "clients": [
            {"name": "faults", "key": CLIENT_KEY, "monthly_budget_usd": BUDGET},
            {"name": "leaver", "key": LEAVER_KEY, "monthly_budget_usd": BUDGET},
        ],
        "pricing": PRICING,
        "admin_secret": ADMIN_SECRET,
        "retries": {
            "max_attempts": 2,
            "deadline_s": deadline_s,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "failure_threshold": 1000,  # no test here reaches it: a parked key was misjudged
        },
    }


# --- phase 3: upstream faults -------------------------------------------------------------------
# (mode, streamed) -> what the client must see: (status, error code)
EXPECTED = {
    ("hang", False): (504, "upstream_timeout"),
    ("hang", True): (504, "upstream_timeout"),
    ("hang_head", False): (504, "upstream_timeout"),
    ("hang_head", True): (504, "upstream_timeout"),
    ("stall", False): (504, "upstream_timeout"),
    ("stall", True): (200, "upstream_timeout"),  # started, then silent past the idle timeout
    ("garbage", False): (502, "upstream_error"),
    ("garbage", True): (502, "upstream_error"),
    ("reset", False): (502, "upstream_error"),
    ("reset", True): (502, "upstream_error"),
    ("half", False): (502, "upstream_error"),
    ("half", True): (200, "upstream_error"),  # started: one error event, no [DONE]
    ("half_eof", False): (502, "upstream_error"),
    ("half_eof", True): (200, "upstream_error"),  # the cut event is not relayed as if whole
    ("reset_mid", False): (502, "upstream_error"),
    ("reset_mid", True): (200, "upstream_error"),
    ("error200", False): (502, "upstream_error"),
    ("error200", True): (502, "upstream_error"),  # before any byte: retried, then a 502
}
TIMEOUT_S, DEADLINE_S = 1.0, 2.5


@pytest.mark.parametrize(
    "mode",
    [
        "hang",
        "hang_head",
        "stall",
        "reset",
        "half",
        "half_eof",
        "reset_mid",
        "error200",
        "garbage",
    ],
)
def test_upstream_fault(live_gateway, upstream, mode):
    live = live_gateway(
        upstream_config(upstream, timeout_s=TIMEOUT_S, deadline_s=DEADLINE_S, idle_s=TIMEOUT_S)
    )
    tag = uuid.uuid4().hex[:8]
    reqs = [
        Req(f"fault={text} tag={tag}", stream=stream, via=via)
        for text in (mode, "ok")
        for stream in (False, True)
        for via in ("httpx", "sdk")
    ]
    sent = send_all(live, reqs)
    check_answered(sent)
    assert len(sent) == len(reqs)
    wrong = []
    for s in sent:
        faulty = f"fault={mode} " in s.req.text
        want = EXPECTED[mode, s.req.stream] if faulty else (200, None)
        if (s.status, s.code) != want or s.done != (want == (200, None)):
            wrong.append((str(s), want))
    assert not wrong, f"answers to an upstream that does {mode!r}: {wrong}"
    too_slow = [str(s) for s in sent if s.elapsed > DEADLINE_S + 1.0]
    assert not too_slow, f"answered after the request deadline: {too_slow}"
    faults = [s for s in upstream.tagged(tag) if s.mode == mode]
    assert faults, "the upstream never saw the faulty requests"
    if mode in ("hang", "hang_head", "stall"):  # each call is hung up on at its timeout
        late = [
            f.peer_closed_at - f.at if f.peer_closed_at else None
            for f in faults
            if f.peer_closed_at is None or f.peer_closed_at - f.at > TIMEOUT_S + 0.5
        ]
        assert not late, f"hanging upstream calls not closed at their timeout: {late}"

    admitted = {s.request_id for s in sent if s.admitted and s.request_id}
    rows = wait_for_rows(live, admitted)
    check_rows(sent, rows, {CLIENT_KEY})
    attempts = Counter(r["attempts"] for r in rows if r["status"] >= 500)
    assert set(attempts) <= {2}, f"failed requests not retried once on another key: {attempts}"
    check_daily(live.db_path)
    check_budgets(live, sent, {CLIENT_KEY: BUDGET}, rows)
    check_keys_ready(live)


# --- phase 4: the client leaving ----------------------------------------------------------------
LEAVE_TIMEOUT_S = 3.0  # the upstream timeout: a call not cancelled is closed only after this


def leaving_config(upstream: FaultyUpstream) -> dict[str, Any]:
    return upstream_config(upstream, timeout_s=LEAVE_TIMEOUT_S, deadline_s=8)


def healthy(tag: str, count: int = 12) -> Callable[[int, int], Req | None]:
    """Traffic alongside the clients that leave: every one of these must be answered."""

    def make(n: int, i: int) -> Req | None:
        if i >= count:
            return None
        return Req(f"fault=ok tag={tag}", stream=i % 2 == 1, via="sdk" if n else "httpx")

    return make


def check_cancelled(upstream: FaultyUpstream, left: dict[str, float]) -> None:
    """Each upstream call whose client left (by tag) was hung up on within 1 s of the leave
    (waits until each has been, or until 1.2 s after the last leave)."""
    deadline = max(left.values()) + 1.2
    while True:
        seen = [(tag, s) for tag in left for s in upstream.tagged(tag)]
        if all(s.peer_closed_at for _, s in seen) and time.monotonic() > max(left.values()) + 0.3:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    late = [
        (
            tag,
            s.mode,
            s.stream,
            None if s.peer_closed_at is None else round(s.peer_closed_at - left[tag], 2),
        )
        for tag, s in seen
        if s.peer_closed_at is None or s.peer_closed_at - left[tag] > 1.0
    ]
    assert not late, f"upstream calls not cancelled within 1 s of the client leaving: {late}"


def closed_rows(live: LiveGateway, count: int, *, timeout: float = 6.0) -> list[dict[str, Any]]:
    """The leaving client's rows once `count` of them are in and the buffer is empty."""
    leaver = static_id(LEAVER_KEY)
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in ledger_rows(live.db_path) if r["client_id"] == leaver]
        if (len(rows) >= count and live.gateway.accounting.ledger.depth == 0) or (
            time.monotonic() > deadline
        ):
            time.sleep(0.3)  # nothing more is coming
            return [r for r in ledger_rows(live.db_path) if r["client_id"] == leaver]
        time.sleep(0.05)


def check_after_leaving(live: LiveGateway, sent: list[Sent], others: list[Sent]) -> None:
    check_answered(others)
    bad = [str(s) for s in others if (s.status, s.code, s.done) != (200, None, True)]
    assert not bad, f"requests of other clients hurt by the ones leaving: {bad}"
    rows = wait_for_rows(live, {s.request_id for s in others if s.request_id})
    check_rows(others, rows, {CLIENT_KEY})
    check_daily(live.db_path)
    check_budgets(live, sent + others, {CLIENT_KEY: BUDGET, LEAVER_KEY: BUDGET}, rows)
    check_keys_ready(live)


@pytest.mark.parametrize("upstream_mode", ["hang", "hang_head"])
def test_client_leaves_before_the_upstream_answers(live_gateway, upstream, upstream_mode):
    """Streamed and plain, while the upstream has said nothing (hang) or only its status line
    and headers (hang_head): the clients give up after 0.5 s."""
    live = live_gateway(leaving_config(upstream))
    tags = [uuid.uuid4().hex[:8] for _ in range(8)]
    reqs = [
        Req(
            f"fault={upstream_mode} tag={tag}",
            stream=i % 2 == 0,
            via="sdk" if i // 2 % 2 else "httpx",
            key=LEAVER_KEY,
            read_timeout=0.5,
        )
        for i, tag in enumerate(tags)
    ]
    others = Traffic(live, healthy(uuid.uuid4().hex[:8]), threads=2, max_s=8)
    sent = send_all(live, reqs)
    others_sent = others.join()
    gone = [str(s) for s in sent if s.status is not None or "Timeout" not in (s.failure or "")]
    assert not gone, f"clients that should have given up waiting: {gone}"
    left = {s.req.text.split("tag=")[1]: s.left_at for s in sent}
    assert all(upstream.tagged(t) for t in left), "a request never reached the upstream"
    check_cancelled(upstream, left)
    rows = closed_rows(live, len(sent))
    outcome = Counter((r["status"], r["error_code"], r["stream"]) for r in rows)
    assert outcome == {(499, "client_closed", 0): 4, (499, "client_closed", 1): 4}, outcome
    assert all(r["cost_usd"] == 0 for r in rows)
    check_after_leaving(live, sent, others_sent)


def leave_mid_stream(live: LiveGateway, req: Req, events: int) -> Sent:
    """Reads the stream's first `events` content events, then closes the connection."""
    sent = Sent(req, time.monotonic())
    seen = 0
    if req.via == "sdk":
        with (
            openai.OpenAI(base_url=live.v1, api_key=req.key, max_retries=0, timeout=10) as sdk,
            sdk.chat.completions.create(
                model=MODEL, messages=body_of(req)["messages"], max_tokens=MAX_TOKENS, stream=True
            ) as stream,
        ):
            sent.status = stream.response.status_code
            sent.request_id = stream.response.headers.get("x-request-id")
            for chunk in stream:
                seen += bool(chunk.choices and chunk.choices[0].delta.content)
                if seen >= events:
                    break
    else:
        with (
            httpx.Client(timeout=10) as http,
            http.stream(
                "POST",
                live.v1 + "/chat/completions",
                json=body_of(req),
                headers={"Authorization": f"Bearer {req.key}"},
            ) as resp,
        ):
            sent.status = resp.status_code
            sent.request_id = resp.headers.get("x-request-id")
            for line in resp.iter_lines():
                before = len(sent.text)
                _event(sent, line)
                seen += len(sent.text) > before
                if seen >= events:
                    break
    sent.elapsed = time.monotonic() - sent.started
    return sent


def test_client_leaves_mid_stream(live_gateway, upstream):
    live = live_gateway(leaving_config(upstream))
    others = Traffic(live, healthy(uuid.uuid4().hex[:8]), threads=2, max_s=8)
    results: list[Sent] = []
    lock = threading.Lock()

    def leave(i: int) -> None:
        tag = uuid.uuid4().hex[:8]
        req = Req(
            f"fault=slow tag={tag} chunks=40 delay=0.2",
            stream=True,
            via="sdk" if i % 2 else "httpx",
            key=LEAVER_KEY,
        )
        sent = leave_mid_stream(live, req, events=2 + i % 3)
        with lock:
            results.append(sent)

    threads = [threading.Thread(target=leave, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    others_sent = others.join()
    assert len(results) == 6 and all(s.status == 200 and s.request_id for s in results)
    left = {s.req.text.split("tag=")[1].split()[0]: s.left_at for s in results}
    check_cancelled(upstream, left)
    rows = closed_rows(live, len(results))
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == sorted(s.request_id for s in results), "rows != requests"
    wrong = [
        r
        for r in rows
        if (r["status"], r["error_code"], r["stream"], r["estimated"])
        != (200, "client_closed", 1, 1)
        or not 1 <= r["completion_tokens"] < 40
        or r["cost_usd"] <= 0
    ]
    assert not wrong, f"rows of streams the client left: {wrong}"
    check_after_leaving(live, results, others_sent)


@pytest.mark.parametrize("how", ["close", "reset", "close_after_50ms"])
def test_client_leaves_right_after_sending(live_gateway, upstream, how):
    live = live_gateway(leaving_config(upstream))
    others = Traffic(live, healthy(uuid.uuid4().hex[:8]), threads=2, max_s=8)
    left: dict[str, float] = {}
    sent: list[Sent] = []
    for i in range(8):
        tag = uuid.uuid4().hex[:8]
        req = Req(f"fault=hang tag={tag}", stream=i % 2 == 1, key=LEAVER_KEY)
        sent.append(Sent(req, time.monotonic()))
        payload = json.dumps(body_of(req)).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{live.server.port}\r\n"
            f"Authorization: Bearer {LEAVER_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", live.server.port), timeout=5) as sock:
            sock.sendall(head + payload)
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif how == "close_after_50ms":
                time.sleep(0.05)
        left[tag] = time.monotonic()
    others_sent = others.join()
    check_cancelled(upstream, left)
    reached = sum(bool(upstream.tagged(t)) for t in left)
    if how == "close_after_50ms":
        assert reached == len(left), "requests that reached admission never reached the upstream"
    rows = closed_rows(live, reached)
    outcome = Counter((r["status"], r["error_code"]) for r in rows)
    assert set(outcome) <= {(499, "client_closed")}, outcome
    assert reached <= len(rows) <= len(left), (
        f"{len(rows)} rows for {len(left)} requests sent, {reached} of which reached the upstream"
    )
    assert all(r["cost_usd"] == 0 for r in rows)
    check_after_leaving(live, sent, others_sent)


def spent_now(live: Any, client_id: str) -> float:
    """The client's settled spend this month, as the gateway's admissions hold it."""
    month = utc_month(time.time())
    return float(asyncio.run(live.gateway.accounting.admissions.spent(client_id, month)))
