"""Raw ASGI pieces of the proxy path (http/proxy.py): the request's headers and the client
key where a door's SDK puts it, a body read within its bound, an error answer in a door's shape,
and a stream relayed chunk by chunk while a watcher waits for the client to go away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol
from urllib.parse import parse_qs

from starlette.types import Message, Receive, Scope, Send

from relaygate.errors import PayloadTooLarge, RelaygateError
from relaygate.formats.base import Door
from relaygate.http._common import HOLD, refuse_declared
from relaygate.http.headers import error_headers

JSON = (b"content-type", b"application/json")
_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}


class ClientGone(Exception):
    """The client went away while its request body was being read."""


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def google_key(scope: Scope) -> str | None:
    value = header(scope, b"x-goog-api-key")
    if value is not None and value.strip():
        return value.decode("latin-1").strip()
    query = scope.get("query_string", b"").decode("latin-1")
    keys = parse_qs(query).get("key") if query else None
    return keys[0].strip() if keys and keys[0].strip() else None


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    refuse_declared(declared, limit)
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def not_allowed() -> RelaygateError:
    error = RelaygateError("Method Not Allowed", code="method_not_allowed")
    error.status, error.type = 405, "invalid_request_error"
    return error


def encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def answer_error(
    send: Send,
    exc: RelaygateError,
    rid: str,
    redact: Callable[[str], str] | None = None,
    door: type[Door] | None = None,
) -> None:
    """An error answer in the door's shape (the SPEC's by default), as raw ASGI sends (also the
    app's 404 for a path with control characters); `rid` empty: no x-request-id."""
    message = exc.message if redact is None else redact(exc.message)
    body = exc.body(lambda _: message) if door is None else door.error_body(exc, message)
    head = encoded(error_headers(exc))
    if rid:
        head.append((b"x-request-id", rid.encode("latin-1")))
    await answer_whole(send, exc.status, head, body)


async def answer_whole(
    send: Send, status: int, head: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """A whole JSON answer: `head` gains its length and content type; under relaygate's own
    server the head and the body leave in one write (HOLD)."""
    head.append((b"content-length", str(len(body)).encode("latin-1")))
    head.append(JSON)
    await send({"type": "http.response.start", "status": status, "headers": head, HOLD: True})
    await send({"type": "http.response.body", "body": body})


class Render(Protocol):
    """What turns the core's stream into a door's (http/proxy.py:DoorRelay)."""

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


async def relay_stream(
    chunks: AsyncIterator[bytes],
    receive: Receive,
    send: Send,
    *,
    watch: bool = True,
    render: Render | None = None,
    finished: Callable[[], bool] | None = None,
) -> None:
    """Relay the stream's chunks. When the client goes away first, this task is cancelled,
    which cancels the upstream read and lets the relay mark the call client_closed: by
    relaygate's server (http/server.py, `watch` False), or else by a watcher task of this
    stream's own that waits for `http.disconnect`; the watcher's cancellation ends here.
    `render`: each piece goes out in a door's format (its tail when the core's stream ends).
    `finished`: true once the piece just read completed the stream ([DONE] seen): that piece
    goes out as the last part (one write with the end of the chunked body), and the stream is
    read on to its end (where the call is settled; nothing more comes)."""
    task = asyncio.current_task()
    assert task is not None
    state = {"done": False, "gone": False}

    async def watcher_task() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if not state["done"]:
            state["gone"] = True
            task.cancel()

    watcher = asyncio.get_running_loop().create_task(watcher_task()) if watch else None
    try:
        ended = False
        async for piece in chunks:
            if ended:
                continue  # past the stream's end: nothing is sent after the last part
            chunk = piece if render is None else render.feed(piece)
            if finished is not None and finished():
                ended = True
                if render is not None:
                    chunk += render.finish()
                state["done"] = True
                await send({"type": "http.response.body", "body": chunk})
            elif chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not ended:
            tail = b"" if render is None else render.finish()
            if tail:
                await send({"type": "http.response.body", "body": tail, "more_body": True})
            state["done"] = True
            await send(_END)
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        task.uncancel()
    finally:
        state["done"] = True
        if watcher is not None:
            watcher.cancel()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
