"""GET /v1/models (and /models, for a tool given the root URL as its base): every routable model
and alias, in OpenAI's list format."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from relaygate.http._common import gateway, json_response, require_client

router = APIRouter(tags=["client"])


@router.get("/v1/models", summary="List routable models and aliases")
@router.get("/models", summary="List routable models and aliases (for a root base URL)")
async def list_models(request: Request) -> Response:
    require_client(request)
    gw = gateway(request)
    data = []
    for model_id in gw.models():
        owner = model_id.split("/", 1)[0] if "/" in model_id else "relaygate"
        data.append({"id": model_id, "object": "model", "created": 0, "owned_by": owner})
    return json_response({"object": "list", "data": data})
