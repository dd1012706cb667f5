"""The OpenAI chat completions door: the core's own format, so nothing is translated. The proxy
handler sends the core's answer and stream bytes as they are (`same_as_core`); render and the
streamer exist for completeness (a caller that goes through them gets the same bytes back)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from relaygate.formats.base import Door, DoorStream


class _ChatStream(DoorStream):
    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def fail(self, error: Mapping[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


class OpenAIChat(Door):
    name = "openai_chat"
    route = "/v1/chat/completions"
    same_as_core: ClassVar[bool] = True

    def chat_body(self) -> dict[str, Any]:
        return self.body

    def render(self, completion: Mapping[str, Any]) -> bytes:
        return orjson.dumps(completion)

    def streamer(self) -> DoorStream:
        return _ChatStream()


DOOR = OpenAIChat
