"""The library's embeddings call (SPEC §12, §7a): `Gateway.embed(input, model=..., **params)`,
an OpenAI embeddings body run through the same routing, key pools, retries, limits and ledger
as the server's `/v1/embeddings` (route `embeddings`), answered as OpenAI's list object. The
body is checked first (relaygate/embed_fields.py: a 400-style InvalidRequest naming the field);
only the targets whose provider declares an embeddings codec are tried."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from relaygate import embed_fields
from relaygate.errors import InvalidRequest
from relaygate.providers._embeddings import OPENAI_DOOR
from relaygate.routing.attempts import Completed
from relaygate.types import NativeBody

if TYPE_CHECKING:
    from relaygate.gateway import Gateway

ROUTE = "embeddings"


async def embed(gw: Gateway, given: Any, *, model: str, **params: Any) -> dict[str, Any]:
    body = {**params, "model": model, "input": given}
    body.pop("stream", None)
    try:
        embed_fields.check(body)
        serves = [
            t
            for t in gw.router.resolve(model)
            if OPENAI_DOOR in gw.providers[t.provider].native_doors
        ]
        if not serves:
            raise InvalidRequest(
                f"The model '{model}' has no target that serves embeddings.", param="model"
            )
    except InvalidRequest:
        gw.accounting.refused("invalid")
        raise
    # admission and routing read a stand-in chat body: the model, one output token, the size
    chat = {"model": model, "messages": [{"role": "user", "content": ""}], "max_tokens": 1}
    raw = orjson.dumps(body)
    call, plan = await gw.begin(chat, client=None, route=ROUTE, raw_size=len(raw))
    plan = [t for t in plan if OPENAI_DOOR in gw.providers[t.provider].native_doors]
    native = NativeBody(OPENAI_DOOR, body, False, only=True)
    result = await gw.open_chat(chat, call, plan, native)
    assert isinstance(result, Completed)
    out: dict[str, Any] = orjson.loads(result.body)
    return out
