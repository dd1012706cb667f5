"""Server-sent events framing (protocols.md §0): split bytes into events, any line ending."""

from __future__ import annotations

import re

import orjson

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\n|\r")
MAX_EVENT_BYTES = 4 * 1024 * 1024


class EventTooLarge(Exception):
    """An upstream event without a boundary grew past MAX_EVENT_BYTES."""


class SSEBuffer:
    """Collects bytes and hands back complete events (the raw block, without its blank line)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        # LF-only bytes (what OpenAI-compatible upstreams send) split the same way without the
        # regex, several times faster
        parts = buf.split(b"\n\n") if b"\r" not in buf else _BOUNDARY.split(buf)
        self._buf = parts.pop()
        if len(self._buf) > MAX_EVENT_BYTES:
            raise EventTooLarge
        return [p for p in parts if p]

    @property
    def pending(self) -> bool:
        """Whether part of an event is held."""
        return bool(self._buf)

    def keep(self, rest: bytes) -> None:
        """Hold `rest` (the start of an event a caller read past the last boundary)."""
        if len(rest) > MAX_EVENT_BYTES:
            raise EventTooLarge
        self._buf = rest

    def flush(self) -> list[bytes]:
        """At the end of the body: what is left is an event only when it is whole, an event
        whose data is `[DONE]` or a complete JSON value (an upstream that ends without the
        last blank line); a cut one is dropped, as SSE drops an unterminated event."""
        rest, self._buf = self._buf, b""
        if not rest.strip():
            return []
        _, data = parse_event(rest.rstrip(b"\r\n"))
        if data is None:
            return [rest]  # only comments or other fields: harmless to hand on
        if data.strip() == b"[DONE]":
            return [rest]
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        return [rest]


def parse_event(block: bytes) -> tuple[bytes | None, bytes | None]:
    """(event name, data) of one event block; data lines are joined with a newline.
    Comments give (None, None)."""
    if block.startswith(b"data: ") and b"\n" not in block and b"\r" not in block:
        return None, block[6:]  # one data line, the usual event: no line splitting
    name: bytes | None = None
    data: list[bytes] = []
    for line in _LINE.split(block):
        if not line or line.startswith(b":"):
            continue
        fld, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if fld == b"data":
            data.append(value)
        elif fld == b"event":
            name = value
    return name, (b"\n".join(data) if data else None)


def data_event(payload: bytes) -> bytes:
    """One `data:` event; a payload of several lines (joined by parse_event) gets one `data:`
    line each, so the client reads back exactly the payload."""
    if b"\n" in payload:
        return b"".join(b"data: " + line + b"\n" for line in payload.split(b"\n")) + b"\n"
    return b"data: " + payload + b"\n\n"
