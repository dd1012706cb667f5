"""POST /v1/chat/completions: OpenAI chat, streaming or not, to any provider."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from relaygate.accounting import Call
from relaygate.auth.clients import ClientInfo
from relaygate.errors import RelaygateError
from relaygate.gateway import Gateway
from relaygate.http._common import gateway, read_json, request_id, require_client
from relaygate.http.headers import limit_headers
from relaygate.routing.attempts import Completed, StreamStarted

router = APIRouter(tags=["client"])
ROUTE = "/v1/chat/completions"

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["messages"],
                    "properties": {
                        "model": {"type": "string", "example": "echo/hello"},  # provider-name-ok
                        "messages": {"type": "array", "items": {"type": "object"}},
                        "stream": {"type": "boolean"},
                        "stream_options": {"type": "object"},
                    },
                    "additionalProperties": True,
                },
                "example": {
                    "model": "echo/hello",  # provider-name-ok
                    "messages": [{"role": "user", "content": "Hello there"}],
                },
            }
        },
    }
}


@router.post(
    "/v1/chat/completions",
    openapi_extra=_BODY_DOC,
    summary="OpenAI chat completions, routed to any configured provider",
)
async def chat_completions(request: Request) -> Response:
    gw = gateway(request)
    client = require_client(request)
    body, size = await read_json(request, gw.config.server.max_body_bytes)
    result, call = await open_call(gw, client, body, size, request_id(request))
    headers = answer_headers(result, call)
    if isinstance(result, Completed):
        return Response(result.body, media_type="application/json", headers=headers)
    headers["cache-control"] = "no-cache"
    headers["x-accel-buffering"] = "no"
    return StreamingResponse(
        gw.relay(result, call),
        media_type="text/event-stream; charset=utf-8",
        headers=headers,
    )


async def open_call(
    gw: Gateway, client: ClientInfo, body: dict[str, Any], size: int, rid: str
) -> tuple[Completed | StreamStarted, Call]:
    """Check, admit and open one request (this route and the raw-ASGI one in http/_fast.py): the
    whole answer or the started stream. A failure carries the call's headers (rate limits)."""
    call, plan = await gw.begin(body, client=client, route=ROUTE, raw_size=size, request_id=rid)
    try:
        result = await gw.open_chat(body, call, plan)
    except RelaygateError as exc:
        if exc.admission is None:
            exc.admission = call.admission  # its answer shows the client's rate-limit headers
        raise
    return result, call


def answer_headers(result: Completed | StreamStarted, call: Call) -> dict[str, str]:
    """The headers of a 200 (a stream adds cache-control and x-accel-buffering)."""
    return {
        **limit_headers(call.admission),
        "x-request-id": call.request_id,
        "x-relaygate-provider": result.target.provider,
        "x-relaygate-model": result.target.model,
        "x-relaygate-key-id": result.key_id
        if isinstance(result, Completed)
        else result.lease.key_id,
        "x-relaygate-attempts": str(result.attempts),
        "x-relaygate-cache": "bypass",
    }
