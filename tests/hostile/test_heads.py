"""Hostile request heads on raw sockets (SPEC §8a; http/server.py), where no HTTP library cleans
the input up: heads over 64 KiB (one huge header, many headers, a huge URL) and over 100 header
lines get 431; conflicting or broken framing (Content-Length with Transfer-Encoding, two
Content-Lengths, a Content-Length that is not a number, bad chunks) gets 400 and the connection
closed; a request hidden after a framing conflict is never served; malformed request lines, header
lines and request targets (CONNECT, broken absolute URLs, protocol upgrades, TLS bytes) get a 400
in the error shape, never a silent drop with a traceback in the log; and slow heads (silent,
partial, trickled, the second request of a kept-alive connection) get 408 or a close within
10-12 s. Head problems are answered before authentication, so these cases carry a valid client key
where it matters and still get 431/400/408, and none of them reaches the upstream.

The slow cases (conftest.SLOW) run in threads from the package fixture `slow_heads`, so that their
ten seconds overlap the rest of the suite (test_barrage.py starts them and runs its barrage
meanwhile)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from tests.hostile.conftest import (
    CANARY_CLIENT_KEY,
    SLOW,
    Exchange,
    Hostile,
    RawCase,
    check_exchange,
    good_body,
    request_bytes,
    run_raw,
)

CHAT = "/v1/chat/completions"
KEY = ("Authorization", f"Bearer {CANARY_CLIENT_KEY}")
JSON = ("Content-Type", "application/json")
BODY = good_body(0, note="hostile")  # a body that would be served if it were read
SMUGGLED = request_bytes("POST", CHAT, headers=[KEY, JSON], body=good_body(0, note="smuggled"))


def chat(headers: list[tuple[str, str]], body: bytes = BODY, *, length: bool = True) -> bytes:
    """A chat request with a valid key; `length`: add a Content-Length of the body."""
    return request_bytes(
        "POST", CHAT, headers=[KEY, JSON, *headers], body=body, content_length=length
    )


def health(headers: list[tuple[str, str]]) -> bytes:
    return request_bytes("GET", "/health", headers=headers)


def line(target: bytes, method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def too_large(id_: str, data: bytes | tuple[bytes, ...]) -> RawCase:
    return RawCase(id_, data, 431, "request_headers_too_large")


TOO_LARGE = [
    too_large("one-70KiB-header", health([("X-Big", "a" * 70_000)])),
    too_large("one-70KiB-header-on-chat-with-key", chat([("X-Big", "a" * 70_000)])),
    too_large("90-headers-of-900-bytes", health([(f"X-H{i}", "a" * 900) for i in range(90)])),
    too_large("101-header-lines", health([(f"X-H{i}", "a") for i in range(100)])),
    too_large("101-header-lines-on-chat-with-key", chat([(f"X-H{i}", "a") for i in range(99)])),
    too_large("5000-header-lines", health([("X-A", "b")] * 5000)),
    too_large("70KiB-url", request_bytes("GET", "/" + "a" * 70_000)),
    too_large("70KiB-query", request_bytes("GET", "/health?" + "a=b&" * 17_500)),
    too_large("70KiB-authorization", health([("Authorization", "Bearer " + "k" * 70_000)])),
    too_large(
        "70KiB-head-in-1KB-pieces",
        (
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            *(b"X-Piece: " + b"p" * 1000 + b"\r\n" for _ in range(70)),
        ),
    ),
]

WITHIN_LIMITS = [  # controls: just under the limits is served
    RawCase("100-header-lines", health([(f"X-H{i}", "a") for i in range(99)]), 200, closed=False),
    RawCase("60KiB-header", health([("X-Big", "a" * 60_000)]), 200, closed=False),
    RawCase("20KB-path", request_bytes("GET", "/" + "a" * 20_000), 404, closed=False),
]


def bad(id_: str, data: bytes, status: int | tuple[int, ...] = 400, **kw: Any) -> RawCase:
    """400 (code invalid_request) in the error shape, and the connection closed."""
    kw.setdefault("code", "invalid_request" if status == 400 else None)
    return RawCase(id_, data, status, **kw)


FRAMING = [
    bad(
        "content-length-and-transfer-encoding",
        chat(
            [("Content-Length", "5"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n", length=False
        ),
    ),
    bad(
        "transfer-encoding-and-content-length",
        chat(
            [("Transfer-Encoding", "chunked"), ("Content-Length", "5")], b"0\r\n\r\n", length=False
        ),
    ),
    bad(
        "two-different-content-lengths",
        chat([("Content-Length", str(len(BODY))), ("Content-Length", "3")], length=False),
    ),
    bad(
        "content-length-list",
        chat([("Content-Length", f"{len(BODY)}, 3")], length=False),
    ),
    bad("content-length-word", chat([("Content-Length", "abc")], length=False)),
    bad("content-length-negative", chat([("Content-Length", "-1")], length=False)),
    bad("content-length-plus", chat([("Content-Length", f"+{len(BODY)}")], length=False)),
    bad("content-length-hex", chat([("Content-Length", "0x10")], length=False)),
    bad(
        "content-length-overflow",
        chat([("Content-Length", "9" * 30)], length=False),
    ),
    bad(
        "transfer-encoding-gzip",
        chat([("Transfer-Encoding", "gzip")], length=False),
    ),
    bad(
        "transfer-encoding-chunked-twice",
        chat(
            [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
            b"0\r\n\r\n",
            length=False,
        ),
    ),
    bad(
        "transfer-encoding-chunked-then-identity",
        chat([("Transfer-Encoding", "chunked, identity")], b"0\r\n\r\n", length=False),
    ),
    bad(  # framing is answered before authentication: 400, not 401
        "content-length-and-transfer-encoding-without-a-key",
        request_bytes(
            "POST",
            CHAT,
            headers=[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            body=b"0\r\n\r\n",
            content_length=False,
        ),
    ),
    bad(
        "two-content-lengths-without-a-key",
        request_bytes(
            "POST",
            CHAT,
            headers=[("Content-Length", "2"), ("Content-Length", "3")],
            body=b"{}",
            content_length=False,
        ),
    ),
    bad(
        "chunk-size-not-hex",
        chat([("Transfer-Encoding", "chunked")], b"zz\r\nabc\r\n0\r\n\r\n", length=False),
    ),
    bad(
        "chunk-size-overflow",
        chat([("Transfer-Encoding", "chunked")], b"f" * 20 + b"\r\nabc\r\n0\r\n\r\n", length=False),
    ),
]

SMUGGLING = [
    bad(
        "cl-te-with-a-hidden-request",
        chat(
            [("Content-Length", str(5 + len(SMUGGLED))), ("Transfer-Encoding", "chunked")],
            b"0\r\n\r\n" + SMUGGLED,
            length=False,
        ),
    ),
    bad(
        "te-cl-with-a-hidden-request",
        chat(
            [("Transfer-Encoding", "chunked"), ("Content-Length", "4")],
            b"0\r\n\r\n" + SMUGGLED,
            length=False,
        ),
    ),
    bad(
        "two-content-lengths-with-a-hidden-request",
        request_bytes(
            "POST",
            "/health",
            headers=[("Content-Length", "0"), ("Content-Length", str(len(SMUGGLED)))],
            body=SMUGGLED,
            content_length=False,
        ),
    ),
    bad(
        "te-with-space-before-colon",
        chat(
            [("Transfer-Encoding ", "chunked"), ("Content-Length", str(5 + len(SMUGGLED)))],
            b"0\r\n\r\n" + SMUGGLED,
            length=False,
        ),
    ),
    bad(
        "te-obfuscated-xchunked",
        chat(
            [("Transfer-Encoding", "xchunked"), ("Content-Length", str(5 + len(SMUGGLED)))],
            b"0\r\n\r\n" + SMUGGLED,
            length=False,
        ),
    ),
    bad(
        "te-with-a-tab",
        chat(
            [("Transfer-Encoding", "\tchunked"), ("Content-Length", "4")],
            b"0\r\n\r\n" + SMUGGLED,
            length=False,
        ),
    ),
]
SMUGGLING += [
    # a body that holds a request is a body: one answer, the inner request never served
    RawCase(
        "a-request-inside-a-get-body",
        request_bytes("GET", "/health", body=SMUGGLED),
        200,
        closed=False,
    ),
    # the control: two honest pipelined requests get two answers (so a served smuggled request
    # would be seen)
    RawCase(
        "control-two-pipelined-requests",
        health([]) + health([]),
        200,
        closed=False,
        answers=2,
    ),
]

MALFORMED = [
    bad("connect-authority-form", line(b"evil.example:443", b"CONNECT"), (400, 405)),
    bad("connect-to-loopback", line(b"127.0.0.1:22", b"CONNECT"), (400, 405)),
    bad("absolute-url-bad-ipv6", line(b"http://[::1/health")),
    bad("absolute-url-port-99999", line(b"http://evil:99999/health")),
    bad("absolute-url-empty-host", line(b"http://")),
    bad("authority-form-on-get", line(b"evil:443")),
    bad("asterisk-form-on-get", line(b"*"), (400, 404), closed=None),
    bad("url-raw-byte-ff", line(b"/\xff\xfe")),
    bad("url-raw-nul", line(b"/\x00")),
    bad("url-with-space", line(b"/a b")),
    bad("query-raw-byte", line(b"/health?%00=\xff")),
    bad("header-without-colon", b"GET /health HTTP/1.1\r\nHost: x\r\nBadHeader\r\n\r\n"),
    bad("header-name-with-space", b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"),
    bad("obsolete-line-folding", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n"),
    bad("nul-in-header-value", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
    bad("cr-in-header-value", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n"),
    bad("bare-lf-line-ends", b"GET /health HTTP/1.1\nHost: x\n\n"),
    bad("method-with-nul", b"G\x00T /health HTTP/1.1\r\nHost: x\r\n\r\n"),
    bad("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100),
    bad("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    bad("http-version-9.9", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", (400, 505)),
    bad(
        "upgrade-to-h2c",
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ),
    bad(
        "upgrade-to-websocket-on-chat",
        b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
    ),
]


@pytest.mark.parametrize("case", TOO_LARGE + WITHIN_LIMITS, ids=lambda c: c.id)
def test_a_head_over_the_limits_gets_431_and_a_close(hostile: Hostile, case: RawCase) -> None:
    run_raw(hostile, case)


@pytest.mark.parametrize("case", FRAMING, ids=lambda c: c.id)
def test_conflicting_or_broken_framing_gets_400_and_a_close(
    hostile: Hostile, case: RawCase
) -> None:
    run_raw(hostile, case)


@pytest.mark.parametrize("case", SMUGGLING, ids=lambda c: c.id)
def test_a_smuggled_request_is_never_served(hostile: Hostile, case: RawCase) -> None:
    run_raw(hostile, case)


@pytest.mark.parametrize("case", MALFORMED, ids=lambda c: c.id)
def test_a_malformed_request_gets_a_400_in_the_error_shape(hostile: Hostile, case: RawCase) -> None:
    run_raw(hostile, case)


@pytest.mark.parametrize("case", SLOW, ids=lambda c: c.id)
def test_a_slow_head_gets_408_or_a_close_within_12_s(
    hostile: Hostile, slow_heads: dict[str, Future[Exchange]], case: RawCase
) -> None:
    ex = slow_heads[case.id].result(timeout=20)
    check_exchange(hostile, case, ex)
    if len(ex.answers) == 2:  # the kept-alive connection: its second head timed out
        assert ex.answers[1].status == 408, ex.answers[1].text()
