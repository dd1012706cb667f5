"""Same-format passthrough (SPEC §7a): a client's body in a format the provider speaks goes up
as it came, and the answer or stream comes back byte for byte. Only what the gateway must know is
read on the way: usage, an in-band error, whether the stream finished. Each provider that speaks
a door's format gives a `Reader` of its events; this module owns the relay around it."""

from __future__ import annotations

from typing import Any

import orjson

from relaygate.providers._sse import EventTooLarge, SSEBuffer, parse_event
from relaygate.providers.base import StreamRelay
from relaygate.types import Failure, Usage


class Reader:
    """What one stream's events say: `on_event` is called with each event's name and JSON
    object and updates `usage`, `error` (stop: nothing more is relayed), `finished` (the
    format's terminal event) and `content` (events that carried output, for an estimate)."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.error: Failure | None = None
        self.finished = False
        self.content = 0

    def on_event(self, name: bytes | None, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    def on_end(self) -> None:
        """The body ended (a format without a terminal event marks itself finished here)."""


class PassthroughRelay(StreamRelay):
    """Relays a same-format SSE stream event by event, untouched (a blank line after each
    event, as SSE frames them), while its Reader notes what the gateway needs. An in-band
    failure event goes out too (it is in the client's format already) and is the last."""

    def __init__(self, reader: Reader) -> None:
        super().__init__()
        self._sse = SSEBuffer()
        self._reader = reader

    def feed(self, data: bytes) -> bytes:
        try:
            blocks = self._sse.feed(data)
        except EventTooLarge:
            oversized = Failure("server", 502, "the upstream sent an oversized event")
            self.error = self.error or oversized
            return b""
        return b"".join([self._event(block) for block in blocks])

    def end(self) -> bytes:
        out = b"".join([self._event(block) for block in self._sse.flush()])
        if self.error is None and not self.finished:
            self._reader.on_end()
            self._sync()
        return out

    def _event(self, block: bytes) -> bytes:
        if self.error is not None or self.finished:
            return b""
        name, data = parse_event(block)
        if data is not None:
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                self._reader.on_event(name, obj)
                self._sync()
                if self.error is not None:  # the upstream's failure event, in the client's own
                    self.error_sent = True  # format: it goes out as it came, and ends the stream
        return block + b"\n\n"

    def _sync(self) -> None:
        reader = self._reader
        self.usage = reader.usage or self.usage
        self.error = reader.error
        self.finished = reader.finished
        self.content_events = reader.content
