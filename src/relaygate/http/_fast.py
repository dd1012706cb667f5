"""POST /v1/chat/completions, the hot path, in raw ASGI: the body is read straight from
`receive` within the size bound, answers go out as raw `send` calls with byte header lists, and a
stream is relayed chunk by chunk while a watcher waits for the client to go away. No Starlette
Request, Response or middleware is on this path; the answers are the ones the FastAPI route in
routes/chat.py gives (same headers, bodies and statuses), which stays for the OpenAPI schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from starlette.types import Message, Receive, Scope, Send

from relaygate.accounting import Call, new_request_id
from relaygate.errors import InvalidRequest, PayloadTooLarge, RelaygateError, Unauthorized
from relaygate.gateway import Gateway
from relaygate.http._common import cancelled_by_us, internal_error, parse_json
from relaygate.http.headers import error_headers, extract_key
from relaygate.http.routes import chat
from relaygate.inflight import SHUTTING_DOWN
from relaygate.routing.attempts import Completed, StreamStarted

_JSON = (b"content-type", b"application/json")
_SSE_TAIL = (
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
)
_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}


class _ClientGone(Exception):
    """The client went away while its request body was being read."""


class FastChat:
    """Serves POST /v1/chat/completions for the app (see http/app.py:RelaygateApp). Unhandled
    errors end as a 500 in the SPEC's shape, logged by type only, as ErrorBoundary does."""

    __slots__ = ("gw", "limit")

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.limit = gateway.config.server.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        task = asyncio.current_task()
        if task is not None:
            self.gw.inflight.track(task)
        try:
            rid = new_request_id()
            try:
                result, call = await self._open(scope, receive, rid)
            except RelaygateError as exc:
                started = True
                await answer_error(send, exc, rid, self.gw.redact)
                return
            except _ClientGone:
                return
            if isinstance(result, Completed):
                head = _encoded(chat.answer_headers(result, call))
                head.append((b"content-length", str(len(result.body)).encode("latin-1")))
                head.append(_JSON)
                started = True
                await send({"type": "http.response.start", "status": 200, "headers": head})
                await send({"type": "http.response.body", "body": result.body})
                return
            try:
                head = _encoded(chat.answer_headers(result, call))
                head.extend(_SSE_TAIL)
                started = True
                await send({"type": "http.response.start", "status": 200, "headers": head})
                await _stream(self.gw.relay(result, call), receive, send)
            finally:
                if not result.settled:  # never relayed: the client left before the first byte
                    self.gw.discard(result, call)
        except asyncio.CancelledError:
            if not cancelled_by_us(scope, self.gw):
                raise
            if self.gw.inflight.closing and not started:
                await answer_error(send, SHUTTING_DOWN, "")
        except Exception as exc:  # noqa: BLE001 (the ASGI boundary: log, answer, no traceback)
            await internal_error(scope, send, exc, started=started)

    async def _open(
        self, scope: Scope, receive: Receive, rid: str
    ) -> tuple[Completed | StreamStarted, Call]:
        """Authenticate, read and open the request as routes/chat.py does."""
        gw = self.gw
        raw_headers: dict[bytes, bytes] = dict(reversed(scope["headers"]))  # the first one wins
        presented = {
            name: raw_headers[raw].decode("latin-1")
            for name, raw in (("authorization", b"authorization"), ("x-api-key", b"x-api-key"))
            if raw in raw_headers
        }
        client = gw.clients.authenticate(extract_key(presented))
        if client is None:
            gw.accounting.refused("auth")
            raise Unauthorized()
        raw = await _read_body(receive, raw_headers.get(b"content-length"), self.limit)
        return await chat.open_call(gw, client, parse_json(raw), len(raw), rid)


async def _read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    if declared is not None:
        try:
            if int(declared.decode("latin-1")) > limit:
                raise PayloadTooLarge(limit)
        except ValueError:
            raise InvalidRequest("Content-Length is not a number.") from None
    message = await receive()
    if message["type"] != "http.request":
        raise _ClientGone
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
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def answer_error(
    send: Send, exc: RelaygateError, rid: str, redact: Callable[[str], str] | None = None
) -> None:
    """An error answer in the SPEC's shape, as raw ASGI sends (also the app's 404 for a path
    with control characters); `rid` empty: no x-request-id."""
    body = exc.body(redact)
    head = _encoded(error_headers(exc))
    if rid:
        head.append((b"x-request-id", rid.encode("latin-1")))
    head.append((b"content-length", str(len(body)).encode("latin-1")))
    head.append(_JSON)
    await send({"type": "http.response.start", "status": exc.status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def _stream(chunks: AsyncGenerator[bytes, None], receive: Receive, send: Send) -> None:
    """Relay the stream's chunks. A watcher waits for `http.disconnect`; when the client goes
    away first, this task is cancelled, which cancels the upstream read and lets the relay mark
    the call client_closed; the cancellation ends here."""
    task = asyncio.current_task()
    assert task is not None
    state = {"done": False, "gone": False}

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if not state["done"]:
            state["gone"] = True
            task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        state["done"] = True
        await send(_END)
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        task.uncancel()
    finally:
        state["done"] = True
        watcher.cancel()
        await chunks.aclose()
