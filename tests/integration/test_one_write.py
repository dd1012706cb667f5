"""relaygate's server (http/server.py) writes a whole answer marked HOLD in one write; these
tests hold it to uvicorn's own rendering through a real socket: the same status line, default
headers, framing and keep-alive; every case the one write does not cover (more body parts, a
length that does not match, HEAD, an app error after the held head, a bad header value) gets
uvicorn's own rendering. Also: the server freezes start-up's objects for the collector."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from relaygate.http._common import HOLD
from relaygate.http.server import GC_YOUNG_THRESHOLD, GatewayServer, server_config
from tests.fakes._server import free_port

BODY = b'{"ok":true}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    head = [(b"x-relaygate-test", path.encode()), (b"content-type", b"application/json")]
    length = [(b"content-length", b"%d" % len(BODY))]
    start = {"type": "http.response.start", "status": 200, HOLD: True}
    if path == "/whole":
        await send({**start, "headers": head + length})
        await send({"type": "http.response.body", "body": BODY})
    elif path == "/parts":  # chunked: uvicorn frames it
        await send({**start, "headers": head})
        await send({"type": "http.response.body", "body": BODY[:4], "more_body": True})
        await send({"type": "http.response.body", "body": BODY[4:]})
    elif path == "/wrong-length":
        await send({**start, "headers": [*head, (b"content-length", b"99")]})
        await send({"type": "http.response.body", "body": BODY})
    elif path == "/fails":  # an error after the head was held: uvicorn's 500
        await send({**start, "headers": head + length})
        raise RuntimeError("boom")
    elif path == "/bad-value":
        await send({**start, "headers": [*head, *length, (b"x-bad", b"a\r\nx-injected: 1")]})
        await send({"type": "http.response.body", "body": BODY})


class _Thread:
    def __init__(self) -> None:
        import threading

        self.port = free_port()
        config = server_config(app, grace_s=1, host="127.0.0.1", port=self.port)
        self.server = GatewayServer(config, _NoGateway(), 1.0)
        self.thread = threading.Thread(target=self.server.run, daemon=True)


class _Inflight:
    async def drain(self, grace_s: float) -> None:
        return None


class _NoGateway:
    inflight = _Inflight()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    import time

    before = gc.get_threshold()
    served = _Thread()
    served.thread.start()
    deadline = time.monotonic() + 15
    while not served.server.started:
        assert time.monotonic() < deadline and served.thread.is_alive()
        time.sleep(0.02)
    try:
        yield served.port
    finally:
        served.server.should_exit = True
        served.thread.join(15)
        gc.unfreeze()
        gc.set_threshold(*before)


ENDS = (BODY, b"0\r\n\r\n", b"Internal Server Error")


def exchange(port: int, *requests: bytes, ends: tuple[bytes, ...] = ENDS) -> bytes:
    """Send the requests on one connection; read until every answer is in or it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join(requests))
        received = b""
        while received.count(b"HTTP/1.1 ") < len(requests) or not received.endswith(ends):
            data = sock.recv(65536)
            if not data:
                break
            received += data
        return received


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nhost: x\r\n{extra}\r\n".encode()


def heads(raw: bytes) -> list[dict[str, str]]:
    out = []
    for part in raw.split(b"HTTP/1.1 ")[1:]:
        head = part.split(b"\r\n\r\n", 1)[0].decode()
        status, *lines = head.split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines)
        fields[":status"] = status
        out.append(fields)
    return out


def test_a_whole_answer_is_uvicorns_rendering_and_the_connection_stays_open(port):
    raw = exchange(port, get("/whole"), get("/whole"))
    first, second = heads(raw)
    assert raw.count(BODY) == 2
    for head in (first, second):
        assert head[":status"] == "200 OK"
        assert head["content-length"] == str(len(BODY))
        assert head["x-relaygate-test"] == "/whole"
        assert "date" in head and head["server"] == "uvicorn"  # uvicorn's default headers
        assert "connection" not in head


def test_connection_close_asked_by_the_client_is_honoured(port):
    raw = exchange(port, get("/whole", extra="connection: close\r\n"))
    (head,) = heads(raw)
    assert head["connection"] == "close"
    assert raw.endswith(BODY)


def test_cases_outside_the_one_write_get_uvicorns_path(port):
    (parts,) = heads(raw := exchange(port, get("/parts")))
    assert parts["transfer-encoding"] == "chunked"
    assert raw.endswith(b"0\r\n\r\n") and b"4\r\n" + BODY[:4] + b"\r\n" in raw
    head_only = exchange(port, get("/whole", method="HEAD"), ends=(b"\r\n\r\n",))
    assert heads(head_only)[0]["content-length"] == str(len(BODY))
    assert not head_only.endswith(BODY)
    for path in ("/fails", "/bad-value"):  # never a header of the app's on the wire
        raw = exchange(port, get(path))
        assert heads(raw)[0][":status"] == "500 Internal Server Error"
        assert b"x-injected" not in raw


def test_a_length_that_does_not_match_is_never_sent(port):
    raw = exchange(port, get("/wrong-length"))  # uvicorn refuses it: the connection closes
    assert b"content-length: 99" not in raw and BODY not in raw


def test_start_up_freezes_its_objects_and_raises_the_young_threshold(port):
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
