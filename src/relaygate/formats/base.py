"""The formats seam (SPEC §7a): what a front door is. The core speaks OpenAI chat; a door turns
its client's request into a chat body for the core, and the core's answer, stream and errors back
into its own format. A door never knows which provider answers.

A `Door` is made per request from the parsed body (and, for doors that carry them in the path,
the model and whether to stream), so what it learns while parsing (tool names to map back, the
client's model name) is there when it renders. Ids a door invents (a message's, a response's, an
output item's) derive from the request id (`req_<32 hex>`): `msg_<32 hex>`, `resp_<32 hex>`, and
`<prefix>_<32 hex>_<n>` for the n-th item, so answers match the ledger and tests are exact.
`DoorStream` turns the core's stream, one chat completion chunk at a time, into the door's
events; the core's chunks always carry usage last."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from relaygate.errors import InvalidRequest, RelaygateError


class Untranslatable(InvalidRequest):
    """A body valid in the door's own format that the core's format cannot say (a document
    block, a forced hosted tool, inline data other than an image): a 400 for targets that
    need it translated, but a target that speaks the door's format takes it as it came
    (http/proxy.py). Any other InvalidRequest of a door is refused whatever the target, before
    any upstream call (SPEC §8a)."""


class DoorStream(ABC):
    """One streamed answer in the door's format. `feed` is called with each chat completion
    chunk (already parsed) and returns the bytes to send now; `end` after the last chunk; `fail`
    when the stream breaks after it started (the stream ends after its bytes). A stream is
    never fed after `end` or `fail`."""

    @abstractmethod
    def feed(self, chunk: Mapping[str, Any]) -> bytes: ...

    def text_run(self, literals: list[bytes], texts: list[str]) -> bytes | None:
        """Chunks in a row that are each the last chunk given to `feed` but for their text (that
        chunk carried only answer text for choice 0: no usage, no finish, nothing else in the
        delta) and their `obfuscation` (random text OpenAI adds to each chunk: no door reads
        it), given at once as the JSON string literals of their texts, each as orjson writes it
        (to copy into the door's own events as it is), and the texts: the door's bytes for all
        of them, the same as `feed` makes of them one by one, or None to have the first one
        parsed and given to `feed` (a door takes all or none: text never changes what it takes
        next). By default None."""
        return None

    @abstractmethod
    def end(self) -> bytes: ...

    @abstractmethod
    def fail(self, error: Mapping[str, Any]) -> bytes:
        """`error` is the SPEC's error object: message (redacted), type, code, param."""


class Door(ABC):
    """One front door's format for one request. `name` is what providers that speak the format
    natively declare (a same-format target gets the client's body passed through); `route` is
    the ledger's and the metrics' label."""

    name: ClassVar[str]
    route: ClassVar[str]
    same_as_core: ClassVar[bool] = False  # True: answers and streams go out as the core made them
    # the client's headers a same-format upstream is given with its body (lower-case names)
    native_headers: ClassVar[tuple[str, ...]] = ()
    stream_content_type: ClassVar[bytes] = b"text/event-stream; charset=utf-8"
    # where the body gives the most output tokens (a path of keys), for a same-format body
    # the translation refuses: admission still reserves by it
    output_limit_field: ClassVar[tuple[str, ...]] = ()
    # True: an operation other than chat (embeddings, transcription). The door has no chat
    # translation: only targets whose provider declares a codec for `name` serve it (the others
    # are left out of the plan) and the codec builds the upstream request from the door's body
    native_only: ClassVar[bool] = False
    # True: the door parses its own body (`parse_form`: a form by its content type, or JSON)
    takes_forms: ClassVar[bool] = False
    # True: a seed route (formats/seed.py): a request without a model gets routing.seed_model
    seed: ClassVar[bool] = False

    def __init__(
        self,
        body: dict[str, Any],
        *,
        request_id: str,
        model: str | None = None,
        stream: bool | None = None,
    ) -> None:
        self.body = body
        self.request_id = request_id
        self.model = model if model is not None else body.get("model")
        self.stream = bool(body.get("stream")) if stream is None else stream

    @classmethod
    def parse_form(cls, raw: bytes, content_type: str | None) -> dict[str, Any]:
        """The body of a door that `takes_forms`, read by its Content-Type."""
        raise NotImplementedError

    @abstractmethod
    def chat_body(self) -> dict[str, Any]:
        """The OpenAI chat body the core runs (InvalidRequest naming the field when the body
        cannot be translated). A stream asks for usage: `stream_options.include_usage`."""

    @abstractmethod
    def render(self, completion: Mapping[str, Any]) -> bytes:
        """A whole answer: the core's chat.completion -> the door's answer body."""

    @abstractmethod
    def streamer(self) -> DoorStream:
        """The door's stream renderer for this request."""

    @classmethod
    def error_body(cls, error: RelaygateError, message: str) -> bytes:
        """An error answer's body in the door's shape (`message` already redacted); the status
        is the error's own. The default is OpenAI's shape."""
        return error.body(lambda _: message)

    def output_limit(self) -> int | None:
        """The most output tokens the body asks for, read at `output_limit_field`."""
        value: Any = self.body
        for key in self.output_limit_field:
            value = value.get(key) if isinstance(value, dict) else None
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value if ok else None

    @classmethod
    def stream_error(cls, error: Mapping[str, Any]) -> bytes:
        """A failure after a passed-through stream started (the upstream's own events went out
        as they came): the door's error event alone. The default is the SPEC's `data:` event."""
        return b"data: " + orjson.dumps({"error": error}) + b"\n\n"

    def new_id(self, prefix: str, n: int | None = None) -> str:
        """`<prefix>_<the request id's hex>`, with `_<n>` for the n-th of several."""
        core = self.request_id.removeprefix("req_")
        return f"{prefix}_{core}" if n is None else f"{prefix}_{core}_{n}"


def text_alone(chunk: Mapping[str, Any]) -> str | None:
    """The text of a core chunk that carries answer text alone for choice 0 (one choice, index
    0, no finish, a delta of `content` only, no usage); None for any other chunk."""
    if type(chunk) is not dict or chunk.get("usage") is not None:
        return None
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1 or type(choices[0]) is not dict:
        return None
    choice = choices[0]
    index, delta = choice.get("index", 0), choice.get("delta")
    if type(index) is not int or index != 0 or choice.get("finish_reason") is not None:
        return None
    if type(delta) is not dict or len(delta) != 1:
        return None
    text = delta.get("content")
    return text if type(text) is str else None


def nonempty(literals: list[bytes], texts: list[str]) -> tuple[list[bytes], list[str]]:
    """A run's literals and texts (DoorStream.text_run) without its empty texts: an empty text
    is no event in any door."""
    if "" not in texts:
        return literals, texts
    return [lit for lit in literals if lit != b'""'], [text for text in texts if text]


def reasoning_of(message: Mapping[str, Any]) -> str:
    """The reasoning text of a core chat message or delta (`reasoning_content`, or `reasoning`
    as some OpenAI-compatible upstreams name it); empty when there is none."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""
