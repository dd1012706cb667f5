"""The Gemini embeddings door (SPEC §7a, protocols.md §13.2, §14.2):
`POST /{v1,v1beta}/models/{model}:embedContent` (`{"content", "taskType"?, "title"?,
"outputDimensionality"?}` -> `{"embedding": {"values"}}`) and `:batchEmbedContents`
(`{"requests": [...]}` -> `{"embeddings": [{"values"}...]}`, what the google-genai SDK's
`models.embed_content` sends whichever api_version it uses). An operation other than chat
(native_only): the body is checked here (each content's parts must be text: embedding models
take text) and goes to a target whose provider declares a codec for this door's name. A Gemini
target gets the body as it came but for the model; other targets get it translated by their
codec and the answer rendered back in Gemini's shape. Errors in Gemini's shape (google.rpc.Status,
as the Gemini chat door gives them). Both snake_case and camelCase field names are accepted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from relaygate.embed_fields import MAX_INPUTS
from relaygate.errors import InvalidRequest, RelaygateError
from relaygate.formats import _gemini_request as rq
from relaygate.formats.base import Door, DoorStream
from relaygate.formats.gemini_native import GeminiNative


class GeminiEmbed(Door):
    """`:embedContent`: one content."""

    name = "gemini_embeddings"
    route = "embeddings"
    native_only = True
    batch: ClassVar[bool] = False

    def __init__(
        self,
        body: dict[str, Any],
        *,
        request_id: str,
        model: str | None = None,
        stream: bool | None = None,
    ) -> None:
        super().__init__(body, request_id=request_id, model=model, stream=False)
        if isinstance(self.model, str):
            self.model = self.model.removeprefix("models/")
        self.stream = False

    def chat_body(self) -> dict[str, Any]:
        """Checks the body (the core runs a stand-in chat body for admission, http/proxy.py)."""
        body = self.body
        if not isinstance(body, Mapping):
            rq.invalid("The body must be a JSON object.", "content")
        if self.batch:
            requests = rq.field(body, "requests")
            if not isinstance(requests, list) or not requests:
                rq.invalid(
                    "'requests' must be a non-empty array of EmbedContentRequest.", "requests"
                )
            if len(requests) > MAX_INPUTS:
                rq.invalid(f"'requests' holds at most {MAX_INPUTS} entries.", "requests")
            for i, request in enumerate(requests):
                check_request(request, f"requests[{i}]")
        else:
            check_request(body, "")
        return {"model": self.model, "messages": [{"role": "user", "content": ""}]}

    def output_limit(self) -> int | None:
        return 1  # an embedding has no output tokens: reserve one

    def render(self, completion: Mapping[str, Any]) -> bytes:
        raise InvalidRequest("Embeddings are answered by the target's codec.")

    def streamer(self) -> DoorStream:
        raise InvalidRequest("Embeddings do not stream.")

    @classmethod
    def error_body(cls, error: RelaygateError, message: str) -> bytes:
        return GeminiNative.error_body(error, message)


class GeminiBatchEmbed(GeminiEmbed):
    """`:batchEmbedContents`: several contents, answered in request order."""

    batch = True


def check_request(request: Any, where: str) -> None:
    """One EmbedContentRequest: a content of text parts, and the optional fields' types."""
    at = f"{where}." if where else ""
    if not isinstance(request, Mapping):
        rq.invalid(f"'{where}' must be an object.", where)
    content = rq.field(request, "content")
    if not isinstance(content, Mapping):
        rq.invalid(f"'{at}content' must be a Content object.", f"{at}content")
    parts = rq.field(content, "parts")
    if not isinstance(parts, list) or not parts:
        rq.invalid(f"'{at}content.parts' must be a non-empty array.", f"{at}content.parts")
    for i, part in enumerate(parts):
        text = part.get("text") if isinstance(part, Mapping) else None
        if not isinstance(text, str):
            param = f"{at}content.parts[{i}]"
            rq.invalid(f"'{param}' must be a text part: embedding models take text.", param)
    dims = rq.field(request, "outputDimensionality")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        param = f"{at}outputDimensionality"
        rq.invalid(f"'{param}' must be a positive integer.", param)
    for name in ("taskType", "title", "model"):
        value = rq.field(request, name)
        if value is not None and not isinstance(value, str):
            rq.invalid(f"'{at}{name}' must be a string.", f"{at}{name}")


DOOR = GeminiEmbed
BATCH_DOOR = GeminiBatchEmbed
