"""The core's stream rendered in a front door's format as it is relayed (http/proxy.py): one
small object called on each piece of the core's SSE bytes, no generator of its own.

Each event is parsed and fed to the door's stream, but for most of a stream: chunks of answer
text alone, all written alike by an upstream. The first of them is parsed and teaches their
shape (http/_text_runs.py); the chunks of that shape after it are cut from the bytes, a run of
them at once, and handed to the door as their text's JSON literals (`DoorStream.text_run`).
The door's bytes are the same either way."""

from __future__ import annotations

import orjson

from relaygate.formats.base import DoorStream
from relaygate.http._text_runs import CONTENT, Shape, cut, learn, single
from relaygate.providers._sse import parse_event

_MISSES = 4  # shapes learnt in a row that no chunk after them had: learn no more


class DoorRelay:
    """The core's SSE bytes -> a door's events, called on each piece the core relays (no
    generator of its own): chunks of the shape last learnt go to the door as their literals, a
    run of them at once; any other chunk is parsed and fed to the door's stream; the core's
    error event becomes the door's failure, [DONE] its end. The core frames every event as
    `data:` lines ending in a blank line, LF only."""

    __slots__ = ("_done", "_misses", "_out", "_rest", "_shape", "_synced")

    def __init__(self, out: DoorStream) -> None:
        self._out = out
        self._rest = b""
        self._done = False
        self._shape: Shape | None = None
        self._misses = 0  # shapes learnt since one was last of use
        # whether the last chunk fed had the shape: only then may the door be given chunks of
        # it as literals (it may read their other fields, the model say, from the last one)
        self._synced = False

    def feed(self, data: bytes) -> bytes:
        if self._rest:
            data = self._rest + data
        shape = self._shape
        if shape is not None and self._synced and data.startswith(shape.head):
            found = single(shape, data)  # one chunk of the shape: the common piece
            if found is not None:
                sent = None if self._done else self._out.text_run([found[0]], [found[1]])
                if sent is not None:
                    self._rest = b""
                    self._misses = 0
                    return sent
        end = data.rfind(b"\n\n") + 2  # past the last whole event (1: none yet)
        if end == 1 or self._done:
            self._rest = b"" if self._done else data
            return b""
        self._rest = data[end:]
        parts: list[bytes] = []
        at = 0
        while at < end:
            shape = self._shape
            if shape is not None and data.startswith(shape.head, at):
                at = self._run(shape, data, at, end, parts)
            else:
                stop = data.find(b"\n\n", at)
                parts.append(self._event(data[at:stop]))
                at = stop + 2
            if self._done:
                break
        return b"".join(parts)

    def _run(self, shape: Shape, data: bytes, at: int, end: int, parts: list[bytes]) -> int:
        """The event at `at` (it starts as the shape does) and the chunks of the shape after
        it, each fast or the exact way: where the next event starts."""
        stop = data.find(b"\n", at) + 2  # the end of a chunk of the shape (one line)
        if not data.endswith(shape.tail, at, stop):  # not one: another shape, same start
            stop = data.find(b"\n\n", at) + 2
            parts.append(self._event(data[at : stop - 2]))
            return stop
        if not self._synced:  # the door is to read this one's other fields: the exact way
            one = single(shape, data[at:stop]) is not None
            parts.append(self._event(data[at : stop - 2], teach=not one))
            self._synced = self._synced or one
            return stop
        literals, texts, last = cut(shape, data, at, end)
        if not literals:  # not a chunk of the shape after all
            parts.append(self._event(data[at : stop - 2]))
            return stop
        out = self._out
        while literals:
            sent = out.text_run(literals, texts)
            if sent is not None:
                parts.append(sent)
                self._misses = 0
                return last
            stop = data.find(b"\n", at) + 2  # the door takes the first the exact way
            parts.append(self._event(data[at : stop - 2], teach=False))
            self._synced = True
            at = stop
            del literals[0], texts[0]
        return at

    def _event(self, block: bytes, *, teach: bool = True) -> bytes:
        """One event the exact way: parsed, then fed to the door (or its end, or its failure).
        A chunk of answer text alone may teach a shape (not after a few that went unused)."""
        if block.startswith(b"data: ") and b"\n" not in block:
            payload: bytes | None = block[6:]
        else:
            _, payload = parse_event(block)
        if payload is None:
            return b""
        out = self._out
        if payload.startswith(b"[DONE]"):
            self._done = True
            return out.end()
        obj = orjson.loads(payload)
        if len(obj) == 1 and "error" in obj:
            self._done = True
            return out.fail(obj["error"])
        sent = out.feed(obj)
        self._synced = False
        if teach and self._misses < _MISSES:
            at = block.find(CONTENT)
            shape = learn(block, at, obj) if at != -1 else None
            if shape is not None:
                self._shape = shape
                self._misses += 1
                self._synced = True
        return sent

    def finish(self) -> bytes:
        """The stream's end when the core's ended without [DONE] or an error event."""
        if self._done:
            return b""
        self._done = True
        return self._out.end()
