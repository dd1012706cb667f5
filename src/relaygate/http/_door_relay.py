"""The core's stream rendered in a front door's format as it is relayed (http/proxy.py): one
small object called on each piece of the core's SSE bytes, no generator of its own."""

from __future__ import annotations

import re

import orjson

from relaygate.formats.base import DoorStream
from relaygate.providers._sse import parse_event

# the common chunk, answer text alone for choice 0, as OpenAI-compatible upstreams and the
# native relays write it (compact JSON): found with a plain search, its text's JSON literal
# handed to the door as it is (DoorStream.text_literal), no parse, no dump
_TEXT_HEAD = b'"choices":[{"index":0,"delta":{"content":'
_TEXT_REST = re.compile(
    rb'("[^"\\]*(?:\\.[^"\\]*)*")\}(?:,"logprobs":null)?,"finish_reason":null\}\]'
)


class DoorRelay:
    """The core's SSE bytes -> a door's events, called on each piece the core relays (no
    generator of its own): each chunk fed to the door's stream (a chunk of answer text alone
    found with one search and one match, its JSON literal handed on as it is); the core's error
    event becomes the door's failure, [DONE] its end. The core frames every event as `data:`
    lines ending in a blank line, LF only."""

    __slots__ = ("_done", "_out", "_rest")

    def __init__(self, out: DoorStream) -> None:
        self._out = out
        self._rest = b""
        self._done = False

    def feed(self, data: bytes) -> bytes:
        blocks = (self._rest + data if self._rest else data).split(b"\n\n")
        self._rest = blocks.pop()
        out, literal, parts = self._out, self._out.text_literal, []
        for block in blocks:
            if self._done:
                break
            at = block.find(_TEXT_HEAD)  # the common chunk first, in the fewest steps
            if at != -1:
                text = _TEXT_REST.match(block, at + len(_TEXT_HEAD))
                if text is not None and block.find(b'"usage":{', text.end()) == -1:
                    fast = literal(text.group(1))
                    if fast is not None:
                        parts.append(fast)
                        continue
            if block.startswith(b"data: ") and b"\n" not in block:
                payload: bytes | None = block[6:]
            else:
                _, payload = parse_event(block)
            if payload is None:
                continue
            if payload.startswith(b"[DONE]"):
                parts.append(out.end())
                self._done = True
                continue
            obj = orjson.loads(payload)
            if len(obj) == 1 and "error" in obj:
                parts.append(out.fail(obj["error"]))
                self._done = True
            else:
                parts.append(out.feed(obj))
        return b"".join(parts)

    def finish(self) -> bytes:
        """The stream's end when the core's ended without [DONE] or an error event."""
        if self._done:
            return b""
        self._done = True
        return self._out.end()
