"""The OpenAI embeddings door (SPEC §7a, protocols.md §14): `POST /v1/embeddings` and
`POST /embeddings` (a root URL given as the base). An operation other than chat (native_only):
the body is checked here (relaygate/embed_fields.py: `input`, `model`, `encoding_format`,
`dimensions`, a 400 naming the field before any upstream call) and goes to a target whose
provider declares an embeddings codec for this door's name; the codec answers in OpenAI's list
shape (base64 made by the gateway where the target has none). Errors in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relaygate import embed_fields
from relaygate.errors import InvalidRequest
from relaygate.formats.base import Door, DoorStream


class OpenAIEmbeddings(Door):
    name = "openai_embeddings"
    route = "embeddings"
    native_only = True

    def __init__(
        self,
        body: dict[str, Any],
        *,
        request_id: str,
        model: str | None = None,
        stream: bool | None = None,
    ) -> None:
        super().__init__(body, request_id=request_id, model=model, stream=False)
        self.stream = False  # never a stream, whatever the body says

    def chat_body(self) -> dict[str, Any]:
        """Checks the body (the core runs a stand-in chat body for admission, http/proxy.py)."""
        embed_fields.check(self.body)
        return {"model": self.model, "messages": [{"role": "user", "content": ""}]}

    def output_limit(self) -> int | None:
        return 1  # an embedding has no output tokens: reserve one

    def render(self, completion: Mapping[str, Any]) -> bytes:
        raise InvalidRequest("Embeddings are answered by the target's codec.")

    def streamer(self) -> DoorStream:
        raise InvalidRequest("Embeddings do not stream.")


DOOR = OpenAIEmbeddings
