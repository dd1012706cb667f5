"""The one proxy path: every proxied route (http/doors.py) in raw ASGI. The body is read straight
from `receive` within the size bound; the door turns it into the core's chat request; the core
admits, routes and runs it; the answer, stream and errors go back in the door's format as raw
`send` calls with byte header lists, and a stream is relayed chunk by chunk while a watcher waits
for the client to go away. No Starlette Request, Response or middleware is on this path.

A door that speaks the core's format (OpenAI chat) gets the core's bytes untouched; the others
get the core's answer parsed and rendered, and its stream parsed event by event."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Receive, Scope, Send

from relaygate.accounting import Call, new_request_id
from relaygate.auth.clients import ClientInfo
from relaygate.errors import InvalidRequest, RelaygateError, Unauthorized
from relaygate.formats.base import Door, Untranslatable
from relaygate.gateway import Gateway
from relaygate.http._asgi import (
    ClientGone,
    Render,
    answer_error,
    answer_whole,
    encoded,
    google_key,
    not_allowed,
    read_body,
    relay_stream,
)
from relaygate.http._common import HOLD, WATCHED, cancelled_by_us, internal_error, parse_json
from relaygate.http._door_relay import DoorRelay
from relaygate.http.doors import Route
from relaygate.http.headers import extract_key, limit_headers
from relaygate.http.uploads import content_type, serve_upload
from relaygate.inflight import SHUTTING_DOWN
from relaygate.routing.attempts import Completed, StreamStarted
from relaygate.routing.native_count import native_count
from relaygate.types import NativeBody, Target

if TYPE_CHECKING:
    from relaygate.http.cached import CachedPath

_SSE_TAIL = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))
_KEY_HEADERS = {b"authorization": "authorization", b"x-api-key": "x-api-key"}


class Proxy:
    """Serves the proxied routes for the app (see http/app.py:RelaygateApp). Unhandled errors
    end as a 500 in the SPEC's shape, logged by type only, as ErrorBoundary does."""

    __slots__ = ("cache", "gw", "limit")

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.limit = gateway.config.server.max_body_bytes
        self.cache: CachedPath | None = None  # the response cache's path (http/cached.py)
        if gateway.cache is not None:
            from relaygate.http.cached import CachedPath

            self.cache = CachedPath(self, gateway.cache)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        started = False
        task = asyncio.current_task()
        if task is not None:
            self.gw.inflight.track(task)
        door = route.door
        try:
            rid = new_request_id()
            try:
                if route.op == "not_allowed":
                    raise not_allowed()
                who = self._authenticate(scope, route)
                if route.op == "upload":  # a multipart upload, streamed (http/uploads.py)
                    await serve_upload(self, scope, receive, send, route, rid, who)
                    return
                if route.op != "chat":
                    await self._other(scope, receive, send, route, who[1])
                    return
                capture = None
                if self.cache is None:
                    result, call, rendered = await self._open(scope, receive, rid, route, who)
                else:
                    opened = await self.cache.open(scope, receive, send, rid, route, who)
                    if opened is None:  # a hit, answered
                        return
                    result, call, rendered, capture = opened
            except RelaygateError as exc:
                started = True
                await answer_error(send, exc, rid, self.gw.redact, door)
                return
            except ClientGone:
                return
            if isinstance(result, Completed):
                if capture is not None:
                    capture.completed(result, call)
                body = result.body if rendered is None else door_body(rendered, result.body)
                started = True
                await answer_whole(send, 200, encoded(answer_headers(result, call)), body)
                if capture is not None:
                    await capture.store()
                return
            try:
                head = encoded(answer_headers(result, call))
                head.extend(_SSE_TAIL)
                head.append((b"content-type", door.stream_content_type))
                started = True  # the head leaves with the first part (HOLD): it is at hand
                await send(
                    {"type": "http.response.start", "status": 200, "headers": head, HOLD: True}
                )
                render: Render | None = None
                if rendered is not None:
                    chunks = self.gw.relay(result, call)
                    render = DoorRelay(rendered.streamer())
                elif result.native:
                    chunks = self.gw.relay(result, call, self._native_error(door))
                else:
                    chunks = self.gw.relay(result, call)
                if capture is not None:
                    render = capture.tap(render, result)
                watch = not scope.get(WATCHED)
                relay = result.relay
                await relay_stream(
                    chunks, receive, send, watch=watch, render=render, finished=relay.is_finished
                )
            finally:
                if not result.settled:  # never relayed: the client left before the first byte
                    self.gw.discard(result, call)
                if capture is not None:
                    capture.streamed(result, call)
            if capture is not None:
                await capture.store()
        except asyncio.CancelledError:
            if not cancelled_by_us(scope, self.gw):
                raise
            if self.gw.inflight.closing and not started:
                await answer_error(send, SHUTTING_DOWN, "", None, door)
        except Exception as exc:  # noqa: BLE001 (the ASGI boundary: log, answer, no traceback)
            await internal_error(scope, send, exc, started=started)

    def _stand_in(self, door: Door, error: Untranslatable | None) -> dict[str, Any]:
        """A body the core's format cannot say may still suit targets that speak the door's
        format: when every target of its model does, a stand-in chat body carries what
        admission and routing read (the model, stream, the output limit) and the body itself
        goes through. A native-only door (error None: embeddings, transcription) needs one
        target of its model that serves the operation."""
        gw = self.gw
        try:
            plan = gw.router.resolve(door.model)
        except RelaygateError:
            plan = []
        speaks = [door.name in gw.providers[t.provider].native_doors for t in plan]
        if error is None and plan and not any(speaks):
            gw.accounting.refused("invalid")
            raise InvalidRequest(
                f"The model '{door.model}' has no target that serves {door.route}.", param="model"
            )
        if error is not None and (not speaks or not all(speaks)):
            gw.accounting.refused("invalid")
            raise error
        chat: dict[str, Any] = {"messages": [{"role": "user", "content": ""}]}
        chat["model"], chat["stream"] = door.model, door.stream
        limit = door.output_limit()
        if limit is not None:
            chat["max_tokens"] = limit
        return chat

    def _native_error(self, door: type[Door]) -> Callable[[RelaygateError], bytes]:
        redact = self.gw.redact

        def event(error: RelaygateError) -> bytes:
            return door.stream_error(error.to_dict(redact)["error"])

        return event

    def _authenticate(self, scope: Scope, route: Route) -> tuple[ClientInfo, bytes | None]:
        """The client, and the declared Content-Length (one pass over the headers)."""
        presented: dict[str, str] = {}
        length: bytes | None = None
        for raw, value in scope["headers"]:
            if raw in _KEY_HEADERS:
                presented.setdefault(_KEY_HEADERS[raw], value.decode("latin-1"))  # first wins
            elif raw == b"content-length" and length is None:
                length = value
        key = extract_key(presented)
        if key is None and route.google_key:
            key = google_key(scope)
        client = self.gw.clients.authenticate(key)
        if client is None:
            self.gw.accounting.refused("auth")
            raise Unauthorized()
        return client, length

    async def _open(
        self,
        scope: Scope,
        receive: Receive,
        rid: str,
        route: Route,
        who: tuple[ClientInfo, bytes | None],
    ) -> tuple[Completed | StreamStarted, Call, Door | None]:
        """Read, translate, admit and open the request: the whole answer or the started stream,
        and the door to render it (None: the core's bytes are the answer)."""
        gw, (client, length) = self.gw, who
        raw = await read_body(receive, length, self.limit)
        cls = route.door
        # a door that takes forms (the seed routes) reads its body by its content type
        body = cls.parse_form(raw, content_type(scope)) if cls.takes_forms else parse_json(raw)
        if cls.same_as_core:  # the core's own format (the hot path): no door to make
            call, plan = await gw.begin(
                body, client=client, route=cls.route, raw_size=len(raw), request_id=rid
            )
            return await self._run(body, call, plan, None), call, None
        door, chat = self._translate(body, rid, route)
        call, plan = await gw.begin(
            chat, client=client, route=door.route, raw_size=len(raw), request_id=rid
        )
        result = await self._run_door(scope, door, body, chat, call, plan)
        return result, call, None if result.native else door

    def _translate(
        self, body: dict[str, Any], rid: str, route: Route
    ) -> tuple[Door, dict[str, Any]]:
        """The door of a request and the chat body the core admits and routes (a stand-in for
        a body only targets of the door's own format take)."""
        cls, gw = route.door, self.gw
        door = cls(body, request_id=rid, model=route.model, stream=route.stream)
        if cls.seed and not door.model:
            door.model = gw.config.routing.seed_model
        try:
            if cls.native_only:  # the door checks its body; admission runs a stand-in
                door.chat_body()
                chat = self._stand_in(door, None)
            else:
                chat = door.chat_body()
        except Untranslatable as exc:
            chat = self._stand_in(door, exc)
        except InvalidRequest:
            gw.accounting.refused("invalid")
            raise
        return door, chat

    async def _run_door(
        self,
        scope: Scope,
        door: Door,
        body: dict[str, Any],
        chat: dict[str, Any],
        call: Call,
        plan: list[Target],
    ) -> Completed | StreamStarted:
        """Run an admitted door's call; a target that speaks the door's format gets the body as
        it came."""
        only = type(door).native_only
        if only:  # only the targets that serve the operation
            plan = [t for t in plan if door.name in self.gw.providers[t.provider].native_doors]
        headers = native_headers(scope, door)
        native = NativeBody(door.name, body, door.stream, headers, only=only)
        return await self._run(chat, call, plan, native)

    async def _run(
        self, chat: dict[str, Any], call: Call, plan: list[Target], native: NativeBody | None
    ) -> Completed | StreamStarted:
        """Open the call: a failure carries the call's admission (its rate-limit headers)."""
        try:
            return await self.gw.open_chat(chat, call, plan, native)
        except RelaygateError as exc:
            if exc.admission is None:
                exc.admission = call.admission
            raise

    async def _other(
        self, scope: Scope, receive: Receive, send: Send, route: Route, length: bytes | None
    ) -> None:
        """A token count or a model list: answered here. A count is exact when the model's
        first target counts in the door's own format (routing/native_count.py), else estimated
        as admission estimates a prompt."""
        from relaygate.formats import anthropic_messages, gemini_native

        if route.op == "models":
            body = gemini_native.models_body(self.gw.models())
        else:
            raw = await read_body(receive, length, self.limit)
            request = parse_json(raw)
            if route.google_key:
                chat = gemini_native.count_tokens_chat(request, route.model or "")
            else:
                chat = anthropic_messages.count_tokens_chat(request)
            tokens = await self._exact_count(scope, route, request)
            if tokens is None:
                per_token = self.gw.config.limits.prompt_bytes_per_token
                tokens = int(len(orjson.dumps(chat)) / per_token) + 1
            body = (
                gemini_native.count_tokens_body(tokens)
                if route.google_key
                else anthropic_messages.count_tokens_body(tokens)
            )
        await answer_whole(send, 200, [], body)

    async def _exact_count(self, scope: Scope, route: Route, request: dict[str, Any]) -> int | None:
        door = route.door
        model = route.model if route.model is not None else request.get("model")
        try:
            plan = self.gw.router.resolve(model if isinstance(model, str) else None)
        except RelaygateError:
            return None
        native = NativeBody(door.name, request, False, native_headers(scope, door))
        return await native_count(self.gw.attempts, plan, native)


def door_body(door: Door, core: bytes) -> bytes:
    return door.render(orjson.loads(core))


def answer_headers(result: Completed | StreamStarted, call: Call) -> dict[str, str]:
    """The headers of a 200 (a stream adds cache-control, x-accel-buffering, content-type)."""
    return {
        **limit_headers(call.admission),
        "x-request-id": call.request_id,
        "x-relaygate-provider": result.target.provider,
        "x-relaygate-model": result.target.model,
        "x-relaygate-key-id": result.key_id
        if isinstance(result, Completed)
        else result.lease.key_id,
        "x-relaygate-attempts": str(result.attempts),
        "x-relaygate-cache": call.cache,
    }


def native_headers(scope: Scope, door: Door | type[Door]) -> dict[str, str]:
    """The client's headers a same-format upstream gets with the body (the door names them)."""
    wanted = door.native_headers
    if not wanted:
        return {}
    given = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    return {name: given[name] for name in wanted if name in given}
