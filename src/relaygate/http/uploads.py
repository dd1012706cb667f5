"""The upload routes on the proxy path (SPEC §7a Audio, the seed route /upload): a multipart form
read from `receive` as it arrives, the file spooled (formats/_form.py: memory, then a temporary
file), within the audio body limit (SPEC §8: 413 before a byte is read when Content-Length says
more, 413 as soon as the body passes it). The core then admits, routes and runs the
transcription like any call (key pools, retries, fallback, limits, ledger): the codec streams
the spool upstream (providers/_transcribe.py). The answer goes back as the upstream sent it, body
and content type, or for /upload in the seed's shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Receive, Scope, Send

from relaygate.auth.clients import ClientInfo
from relaygate.errors import InvalidRequest, PayloadTooLarge
from relaygate.formats import seed
from relaygate.formats._form import FormReader
from relaygate.formats.audio import HEADER_BYTES, form_model, most_seconds, wav_seconds
from relaygate.formats.base import Door
from relaygate.gateway import Gateway
from relaygate.http._asgi import ClientGone, encoded, header
from relaygate.http._common import refuse_declared
from relaygate.http.doors import Route
from relaygate.providers.base import native_codec
from relaygate.routing.attempts import Completed
from relaygate.types import NativeBody, Upload

if TYPE_CHECKING:
    from relaygate.http.proxy import Proxy

FILE_FIELD = "file"


async def read_form(
    receive: Receive, kind: str | None, declared: bytes | None, limit: int
) -> FormReader:
    """The form, read whole within `limit` bytes; the caller closes it."""
    refuse_declared(declared, limit)
    form = FormReader(kind, FILE_FIELD)
    try:
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(limit)
            if chunk:
                form.feed(chunk)
            more = message.get("more_body", False)
        form.finish()
    except BaseException:
        form.close()
        raise
    return form


def content_type(scope: Scope) -> str | None:
    value = header(scope, b"content-type")
    return None if value is None else value.decode("latin-1")


def seed_model(gw: Gateway, door: type[Door]) -> str:
    """/upload's model: `routing.audio_model`, else the first provider (in the priority order)
    whose transcription codec names a default model."""
    routing = gw.config.routing
    if routing.audio_model:
        return routing.audio_model
    names = [n for n in routing.priority if n in gw.providers] + list(gw.providers)
    for name in dict.fromkeys(names):
        codec = native_codec(gw.providers[name], door.name)
        default = getattr(codec, "default_model", None)
        model = default(gw.providers[name]) if default is not None else None
        if model:
            return f"{name}/{model}"
    raise InvalidRequest(
        "No provider serves transcription: set routing.audio_model.", param="model"
    )


async def serve_upload(
    proxy: Proxy,
    scope: Scope,
    receive: Receive,
    send: Send,
    route: Route,
    rid: str,
    who: tuple[ClientInfo, bytes | None],
) -> None:
    gw, (client, length) = proxy.gw, who
    limit = gw.config.server.max_audio_body_bytes
    form = await read_form(receive, content_type(scope), length, limit)
    try:
        cls = route.door
        if form.spool is None and not any(name == "url" for name, _ in form.fields):
            gw.accounting.refused("invalid")
            raise InvalidRequest(
                "The form field 'file' is required: the audio to transcribe.", param="file"
            )
        fields = form.fields
        try:
            if cls.seed:  # the text is wanted back: JSON, whatever the client asked
                model = dict(fields).get("model") or seed_model(gw, cls)
                fields = [(k, v) for k, v in fields if k not in ("model", "response_format")]
                fields += [("model", model), ("response_format", "json")]
            else:
                model = form_model(fields)
        except InvalidRequest:
            gw.accounting.refused("invalid")
            raise
        upload = Upload(fields, form.file_name or "", form.filename, form.file_type, *_spool(form))
        door = cls({"model": model, "upload": upload}, request_id=rid)
        chat = proxy._stand_in(door, None)
        file_head = _head(upload)
        text_size = sum(len(k) + len(v) for k, v in fields) + len(form.filename)
        call, plan = await gw.begin(
            chat,
            client=client,
            route=door.route,
            raw_size=text_size,
            request_id=rid,
            audio_bound_s=most_seconds(file_head, upload.size),  # what the budget reserves
        )
        call.audio_seconds = wav_seconds(file_head)  # billed by when the answer does not say
        plan = [t for t in plan if door.name in gw.providers[t.provider].native_doors]
        native = NativeBody(door.name, door.body, False, only=True)
        result = await proxy._run(chat, call, plan, native)
        assert isinstance(result, Completed)  # never streamed
        from relaygate.http.proxy import answer_headers

        head = encoded(answer_headers(result, call))
        if cls.seed:
            body = _seed_answer(result)
            kind = "application/json"
        else:
            body = result.body
            kind = result.content_type or "application/json"
        head.append((b"content-length", str(len(body)).encode("latin-1")))
        head.append((b"content-type", kind.encode("latin-1", "replace")))
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": body})
    finally:
        form.close()


def _spool(form: FormReader) -> tuple[Any, int]:
    if form.spool is None:
        import io

        return io.BytesIO(), 0
    return form.spool, form.file_size


def _head(upload: Upload) -> bytes:
    """The file's first bytes: where its header says its length (a WAV's) and its frame size."""
    if not upload.size:
        return b""
    upload.spool.seek(0)
    head: bytes = upload.spool.read(HEADER_BYTES)
    return head


def _seed_answer(result: Completed) -> bytes:
    try:
        obj = orjson.loads(result.body)
    except orjson.JSONDecodeError:
        obj = {"text": result.body.decode("utf-8", "replace")}
    text = obj.get("text") if isinstance(obj, dict) else None
    usage = result.usage
    figures: dict[str, Any] = {}
    if usage is not None:
        figures = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "audio_seconds": usage.audio_seconds,
        }
    return seed.answer(text if isinstance(text, str) else "", result.target.model, figures)
