"""The hostile-input suite's gateway and tools (SPEC §5, §7, §8, §8a).

One gateway for the whole package (`hostile`): a FakeOpenAI upstream, canary secrets planted in
every place a secret can come from here (two upstream keys, the client key, the admin secret),
and a log handler on the "relaygate", "uvicorn" and "asyncio" loggers that keeps every record.
The tools send a request on a raw socket (`raw`, nothing is cleaned up on the way) or with httpx
(`Case.send`), and check an answer (`run_case`, `run_raw`): its status, the SPEC's error shape,
no 5xx, no canary in the answer (head and body) or in the log, no traceback or unhandled error in
the log, and no upstream call made for it. `Case` and `RawCase` are the rows of the tables in the
test files. The slow-head cases (`SLOW`) start together in threads from the package fixture
`slow_heads`, so that their ten seconds overlap the rest of the suite."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import LiveGateway, build_config, openai_provider
from tests.fakes._server import UvicornServer
from tests.fakes.openai_upstream import FakeOpenAI

CANARY_UPSTREAM_KEY = "sk-CANARYhostileUpstream-7f3a9c1e5b2d4086"
CANARY_UPSTREAM_KEY_2 = "sk-CANARYhostileUpstreamTwo-2c4e6a8f0b1d3957"
CANARY_CLIENT_KEY = "rg-CANARYhostileClient-5d7f9b1c3e0a2468ace"
CANARY_ADMIN_SECRET = "CANARYhostileAdminSecret-9e1c3a5f7b0d2468"
CANARIES = {
    "upstream key": CANARY_UPSTREAM_KEY,
    "second upstream key": CANARY_UPSTREAM_KEY_2,
    "client key": CANARY_CLIENT_KEY,
    "admin secret": CANARY_ADMIN_SECRET,
}
MODEL = "up/gpt-4o-mini"
GOOD_MARKER = "good-client-ping"  # in every well-behaved request, to tell its upstream calls apart
UNAUTHORIZED_BODY = {
    "error": {
        "message": "Invalid or missing API key. Send it as 'Authorization: Bearer <key>' or "
        "'x-api-key'.",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
        "param": None,
    }
}
AUTH = {"Authorization": f"Bearer {CANARY_CLIENT_KEY}"}
ADMIN = {"admin-secret": CANARY_ADMIN_SECRET}


# --- answers --------------------------------------------------------------------------------------
@dataclass
class Answer:
    """One HTTP answer as it came off the wire."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def text(self) -> str:
        head = "\n".join(f"{k}: {v}" for k, v in self.headers)
        return f"{self.status} {self.reason}\n{head}\n\n{self.body.decode('utf-8', 'replace')}"

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Exchange:
    """What a raw connection got back: every answer in order, and whether the server closed it."""

    answers: list[Answer]
    closed: bool
    raw: bytes
    elapsed: float
    send_error: str | None = None

    @property
    def first(self) -> Answer:
        assert self.answers, f"no answer at all (closed={self.closed}, raw={self.raw[:200]!r})"
        return self.answers[0]


def _parse_answers(data: bytes) -> tuple[list[Answer], bytes]:
    """Complete answers at the start of `data`, and the bytes left after them."""
    answers: list[Answer] = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return answers, data
        lines = data[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status, reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
        headers_ = [(k, v) for k, v in headers]  # type: ignore[misc]
        rest = data[end + 4 :]
        length = next((int(v) for k, v in headers_ if k.lower() == "content-length"), None)
        chunked = any(
            k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers_
        )
        if length is not None:
            if len(rest) < length:
                return answers, data
            body, rest = rest[:length], rest[length:]
        elif chunked:
            body, pos, done = b"", 0, False
            while True:
                eol = rest.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(rest[pos:eol].split(b";")[0], 16)
                if len(rest) < eol + 2 + size + 2:
                    break
                body += rest[eol + 2 : eol + 2 + size]
                pos = eol + 2 + size + 2
                if size == 0:
                    done = True
                    break
            if not done:
                return answers, data
            rest = rest[pos:]
        else:
            body, rest = rest, b""  # until the close
        answers.append(Answer(status, reason, headers_, body))
        data = rest


def raw(
    port: int,
    chunks: bytes | Iterable[bytes],
    *,
    pause_s: float = 0.0,
    timeout_s: float = 10.0,
    linger_s: float = 0.3,
    until_close: bool = False,
) -> Exchange:
    """Send `chunks` on a fresh connection, `pause_s` apart (the sending stops once the server
    has closed), then read answers until the server closes, or until `linger_s` passes
    without a byte after a complete answer (unless `until_close`), or `timeout_s` in all."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    received = b""
    closed = False
    send_error = None
    pieces = [chunks] if isinstance(chunks, bytes) else list(chunks)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        for i, piece in enumerate(pieces):
            if i and pause_s:
                readable, _, _ = select.select([sock], [], [], pause_s)
                if readable:  # the server said something while we were trickling
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:  # ... and closed: stop sending
                        closed = True
                        break
                    received += data
            if time.monotonic() > deadline:
                break
            try:
                sock.sendall(piece)
            except OSError as exc:  # the server answered and closed while we were sending
                send_error = type(exc).__name__
                break
        while not closed:
            answers, _ = _parse_answers(received)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(min(left, linger_s) if answers and not until_close else left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:  # reset
                closed = True
                break
            if not data:
                closed = True
                break
            received += data
    answers, _ = _parse_answers(received)
    return Exchange(answers, closed, received, time.monotonic() - t0, send_error)


def request_bytes(
    method: str,
    path: str | bytes,
    *,
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    body: bytes | None = None,
    content_length: bool = True,
) -> bytes:
    """A request head (and body) exactly as given; Host is added, Content-Length too when a body is
    given and `content_length` is true."""

    def b(x: str | bytes) -> bytes:
        return x if isinstance(x, bytes) else x.encode("latin-1")

    lines = [b(method) + b" " + b(path) + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [b(k) + b": " + b(v) for k, v in headers]
    if body is not None and content_length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


# --- the log ------------------------------------------------------------------------------------
class LogKeeper(logging.Handler):
    """Keeps every record, formatted as a log line would be (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []
        self._lines_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception as exc:  # a record that cannot be formatted is itself a finding
            line = f"UNFORMATTABLE {record.name}: {type(exc).__name__}"
        with self._lines_lock:
            self.lines.append(line)

    def since(self, mark: int) -> list[str]:
        with self._lines_lock:
            return list(self.lines[mark:])

    def mark(self) -> int:
        with self._lines_lock:
            return len(self.lines)


LOGGERS = ("relaygate", "uvicorn", "asyncio")


@contextlib.contextmanager
def kept_logs() -> Iterator[LogKeeper]:
    keeper = LogKeeper()
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.addHandler(keeper)
        if name == "relaygate":
            logger.setLevel(logging.DEBUG)
    try:
        yield keeper
    finally:
        for logger, level in saved:
            logger.removeHandler(keeper)
            logger.setLevel(level)


def leaked(text: str) -> list[str]:
    return [name for name, secret in CANARIES.items() if secret in text]


# --- the gateway ----------------------------------------------------------------------------------
@dataclass
class Hostile:
    live: LiveGateway
    fake: FakeOpenAI
    log: LogKeeper
    client: httpx.Client

    @property
    def port(self) -> int:
        return self.live.server.port

    @property
    def base(self) -> str:
        return self.live.base

    def hostile_calls(self) -> int:
        """Upstream calls made for anything but the well-behaved client."""
        return sum(1 for c in self.fake.calls() if GOOD_MARKER not in orjson.dumps(c.json).decode())

    def call(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        timeout_s: float = 15.0,
    ) -> Answer:
        r = self.client.request(
            method, self.base + path, headers=headers or {}, content=content, timeout=timeout_s
        )
        return Answer(r.status_code, r.reason_phrase, list(r.headers.multi_items()), r.content)


@contextlib.contextmanager
def serve_hostile(db: Path) -> Iterator[Hostile]:
    """The gateway with its canaries, its fake upstream and its kept log, until the exit."""
    from relaygate.gateway import Gateway
    from relaygate.http.app import create_app

    fake = FakeOpenAI().start()
    config = build_config(
        {
            "providers": {
                "up": openai_provider(fake, [CANARY_UPSTREAM_KEY, CANARY_UPSTREAM_KEY_2])
            },
            "clients": [{"name": "hostile-tests", "key": CANARY_CLIENT_KEY}],
            "admin_secret": CANARY_ADMIN_SECRET,
        },
        db,
    )
    try:
        with kept_logs() as log:
            gw = Gateway(config)
            app = create_app(gateway=gw, announce=lambda text: None)
            live = LiveGateway(UvicornServer(app).start(), gw, CANARY_CLIENT_KEY, db)
            try:
                with httpx.Client(timeout=15) as client:
                    yield Hostile(live, fake, log, client)
            finally:
                live.server.stop()
    finally:
        fake.stop()


@pytest.fixture(scope="package")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    with serve_hostile(Path(tmp_path_factory.mktemp("hostile")) / "hostile.db") as served:
        yield served


# --- checks ---------------------------------------------------------------------------------------
def assert_error_shape(answer: Answer, status: int, code: str | None = None) -> dict[str, Any]:
    """`status`, JSON content, and the error shape of the route's door (SPEC §8, §7a): exactly
    {"error": {"message", "type", "code", "param"}}; Anthropic's {"type": "error", "error":
    {"type", "message"}} (its `type` by status; no code to compare); Google's {"error": {"code":
    <status>, "message", "status", "details"?}} (the code read from its ErrorInfo reason).
    Returns the error as the SPEC's four fields."""
    assert answer.status == status, f"expected {status}, got {answer.text()[:600]}"
    ctype = answer.header("content-type") or ""
    assert ctype.startswith("application/json"), f"content-type {ctype!r}: {answer.text()[:300]}"
    body = answer.json()
    assert isinstance(body, dict), body
    if body.get("type") == "error":  # Anthropic's shape
        assert set(body) == {"type", "error"}, body
        err = body["error"]
        assert set(err) == {"type", "message"}, err
        assert err["type"] == ANTHROPIC_TYPES.get(status, err["type"]), err
        assert isinstance(err["message"], str) and err["message"], err
        return {"message": err["message"], "type": err["type"], "code": code, "param": None}
    assert set(body) == {"error"}, body
    err = body["error"]
    if isinstance(err.get("code"), int):  # Google's shape
        assert err["code"] == status and isinstance(err.get("status"), str), err
        assert set(err) <= {"code", "message", "status", "details"}, err
        reasons = [d.get("reason") for d in err.get("details", ()) if "reason" in d]
        found = reasons[0].lower() if reasons else None
        if code is not None:
            assert found == code, err
        param = next((d["metadata"].get("param") for d in err.get("details", ()) if
                      "metadata" in d), None)  # fmt: skip
        return {"message": err["message"], "type": err["status"], "code": found, "param": param}
    assert set(err) == {"message", "type", "code", "param"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["code"] is None or isinstance(err["code"], str), err
    assert err["param"] is None or isinstance(err["param"], str), err
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def assert_unauthorized(answer: Answer) -> None:
    err = assert_error_shape(answer, 401, "invalid_api_key")
    if answer.json() != UNAUTHORIZED_BODY:  # a door's own shape: the same fixed message
        assert err["message"] == UNAUTHORIZED_BODY["error"]["message"], err


def assert_clean(hostile: Hostile, mark: int, *answers: Answer | bytes) -> None:
    """No canary in the answers or in the log lines since `mark`; no traceback, no unhandled
    error and no 500 in them."""
    for answer in answers:
        text = answer.text() if isinstance(answer, Answer) else answer.decode("latin-1")
        assert not leaked(text), f"{leaked(text)} in the answer: {text[:400]}"
        if isinstance(answer, Answer):
            assert answer.status < 500, f"a 5xx: {text[:600]}"
    lines = hostile.log.since(mark)
    joined = "\n".join(lines)
    assert not leaked(joined), f"{leaked(joined)} in the log:\n{joined[:2000]}"
    bad = [
        line
        for line in lines
        if "Traceback" in line
        or "Exception in ASGI application" in line
        or line.startswith(("ERROR", "CRITICAL"))
    ]
    assert not bad, "errors in the log:\n" + "\n".join(bad)[:3000]


# --- cases ----------------------------------------------------------------------------------------
ANY: Any = object()  # an expectation that is not checked


@dataclass(frozen=True)
class Case:
    """One hostile request sent with httpx, and what the SPEC says it gets. `body` may be a
    function (a large body is built only when sent); `chunked` sends it without Content-Length.
    Unless `upstream_ok`, the request must not cause an upstream call."""

    id: str
    method: str
    path: str
    body: bytes | Callable[[], bytes] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    status: int | tuple[int, ...] = 400
    code: str | None = None
    param: Any = ANY
    chunked: bool = False
    upstream_ok: bool = False
    heavy: bool = False  # sent once in the barrage, not in a loop

    def statuses(self) -> tuple[int, ...]:
        return self.status if isinstance(self.status, tuple) else (self.status,)

    def send(self, client: httpx.Client, base: str) -> Answer:
        body = self.body() if callable(self.body) else self.body
        content: Any = body
        if self.chunked and body is not None:
            step = 1024 * 1024
            content = (body[i : i + step] for i in range(0, len(body), step))
        r = client.request(
            self.method, base + self.path, headers=list(self.headers), content=content
        )
        return Answer(r.status_code, r.reason_phrase, list(r.headers.multi_items()), r.content)


@dataclass(frozen=True)
class RawCase:
    """One hostile exchange on a raw socket. `status` None: no answer expected, only a close.
    `closed`: whether the server must close the connection after its answer (None: either).
    `answers`: how many answers the exchange must get (a smuggled request must get none)."""

    id: str
    data: bytes | tuple[bytes, ...]
    status: int | tuple[int, ...] | None = 400
    code: str | None = None
    closed: bool | None = True
    answers: int = 1
    then_status: int | None = None  # the status of every answer after the first
    pause_s: float = 0.0
    timeout_s: float = 5.0
    until_close: bool = False
    max_s: float | None = None  # the answer (or close) within this many seconds
    min_s: float | None = None  # and not before
    upstream_ok: bool = False

    def send(self, port: int) -> Exchange:
        return raw(
            port,
            self.data,
            pause_s=self.pause_s,
            timeout_s=self.timeout_s,
            until_close=self.until_close,
        )


def check_answer(
    hostile: Hostile,
    answer: Answer,
    statuses: tuple[int, ...],
    *,
    code: str | None = None,
    param: Any = ANY,
) -> None:
    """The status; for an error, the SPEC's shape (and the fixed 401 body); no 5xx, no canary, and
    nothing that looks like a file of the machine."""
    assert answer.status in statuses, f"expected {statuses}, got {answer.text()[:800]}"
    assert answer.status < 500, answer.text()[:800]
    if answer.status >= 400:
        err = assert_error_shape(answer, answer.status, code)
        if param is not ANY:
            assert err["param"] == param, err
    if answer.status == 401:
        assert_unauthorized(answer)
    text = answer.text()
    assert not leaked(text), f"{leaked(text)} in the answer: {text[:600]}"
    for sign in ("root:x:0:0", "[build-system]", "SQLite format 3", "PRIVATE KEY"):
        assert sign not in text, f"a file's content ({sign!r}) in the answer"


def run_case(hostile: Hostile, case: Case) -> Answer:
    """Send one case and check everything about it, the log and the upstream included."""
    mark, calls = hostile.log.mark(), hostile.hostile_calls()
    answer = case.send(hostile.client, hostile.base)
    check_answer(hostile, answer, case.statuses(), code=case.code, param=case.param)
    if not case.upstream_ok or answer.status >= 400:
        assert hostile.hostile_calls() == calls, f"{case.id}: an upstream call was made"
    assert_clean(hostile, mark, answer)
    return answer


def check_exchange(hostile: Hostile, case: RawCase, ex: Exchange) -> None:
    statuses = (
        ()
        if case.status is None
        else case.status
        if isinstance(case.status, tuple)
        else (case.status,)
    )
    if case.status is None:
        assert not ex.answers, f"an answer where only a close was expected: {ex.raw[:300]!r}"
        assert ex.closed, f"the connection was left open ({ex.elapsed:.1f} s)"
    else:
        assert len(ex.answers) == case.answers, (
            f"{len(ex.answers)} answers, expected {case.answers} (closed={ex.closed}, "
            f"{ex.elapsed:.1f} s): {ex.raw[:600]!r}"
        )
        check_answer(hostile, ex.answers[0], statuses, code=case.code)
        for extra in ex.answers[1:]:
            check_answer(hostile, extra, (case.then_status or ex.answers[0].status,))
    if case.closed is not None:
        assert ex.closed == case.closed, (
            f"closed={ex.closed}, expected {case.closed} ({ex.elapsed:.1f} s)"
        )
    if case.max_s is not None:
        assert ex.elapsed <= case.max_s, f"took {ex.elapsed:.1f} s, more than {case.max_s} s"
    if case.min_s is not None:
        assert ex.elapsed >= case.min_s, f"cut after {ex.elapsed:.1f} s, before {case.min_s} s"
    assert not leaked(ex.raw.decode("latin-1")), f"{leaked(ex.raw.decode('latin-1'))} answered"


def run_raw(hostile: Hostile, case: RawCase) -> Exchange:
    mark, calls = hostile.log.mark(), hostile.hostile_calls()
    ex = case.send(hostile.port)
    check_exchange(hostile, case, ex)
    if not case.upstream_ok:
        assert hostile.hostile_calls() == calls, f"{case.id}: an upstream call was made"
    assert_clean(hostile, mark, ex.raw)
    return ex


def good_body(i: int = 0, **extra: Any) -> bytes:
    """The well-behaved client's chat body (its upstream calls carry GOOD_MARKER)."""
    return orjson.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": f"{GOOD_MARKER} {i}"}], **extra}
    )


# --- slow heads (started once, in threads, so that their ten seconds overlap the rest) -----------
def _slow(id_: str, data: bytes | tuple[bytes, ...], **kw: Any) -> RawCase:
    kw.setdefault("status", 408)
    kw.setdefault("code", "request_timeout" if kw["status"] == 408 else None)
    return RawCase(id_, data, timeout_s=15, max_s=12.0, **kw)


SLOW = [
    _slow("silent-connection", b"", status=None),
    _slow("request-line-then-nothing", b"GET /health HTTP/1.1\r\n", min_s=9.0),
    _slow(
        "partial-head-with-a-key-then-nothing",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + CANARY_CLIENT_KEY.encode()
        + b"\r\nContent-",
        min_s=9.0,
    ),
    _slow(
        "head-trickled-a-byte-every-300ms",
        tuple(bytes([c]) for c in b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: b\r\n" * 20),
        pause_s=0.3,
        min_s=9.0,
    ),
    _slow(
        "header-lines-trickled-every-second",
        (b"GET /health HTTP/1.1\r\nHost: x\r\n", *(b"X-Loris-%d: a\r\n" % i for i in range(15))),
        pause_s=1.0,
        min_s=9.0,
    ),
    _slow(
        "keep-alive-then-a-partial-second-head",
        (request_bytes("GET", "/health"), b"GET /health HTTP/1.1\r\nHost: x\r\n"),
        status=200,  # the first answer; the second must be a 408 within 12 s
        then_status=408,
        answers=2,
        pause_s=0.5,
        until_close=True,
    ),
]


@pytest.fixture(scope="package")
def slow_heads(hostile: Hostile) -> Iterator[dict[str, Future[Exchange]]]:
    """The slow cases, all started at once in threads; each test waits for its own."""
    with ThreadPoolExecutor(len(SLOW), thread_name_prefix="slow-head") as pool:
        yield {case.id: pool.submit(case.send, hostile.port) for case in SLOW}
