"""The proxy path's door relay (http/_door_relay.py: chunks of answer text alone cut from the
bytes in runs, by the shape of the first, and handed to the door as their JSON literals) gives
exactly the bytes of feeding the parsed chunks one by one to the door's stream, for every door
that renders streams: whatever the chunks hold (text with quotes, backslashes, line breaks and
any unicode, empty text, role chunks, reasoning, refusals, tool-call fragments, a finish, usage
alone or riding on a text chunk, `"usage":null` on each, an `"obfuscation"` field the same on
each or different, a shape that changes mid-stream, a chunk from another model in between, the
text's keys in another field), however they are written (as orjson writes them, as the core
does; with escaped non-ASCII or spaces, as some upstreams do), however the stream ends ([DONE],
an error event, nothing) and wherever the reads are cut. Property-tested against the parsed
chunks."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.http._door_relay import DoorRelay
from tests.formats.test_contract import make

REQUESTS: dict[str, dict[str, Any]] = {
    "anthropic_messages": {
        "body": {
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
        }
    },
    "openai_responses": {
        "body": {
            "model": "gpt-4.1-mini",
            "input": "Hi",
            "tools": [
                {"type": "function", "name": "get", "parameters": {"type": "object"}},
                {"type": "custom", "name": "patch"},
            ],
            "stream": True,
        }
    },
    "gemini_native": {
        "body": {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
        "model": "groq/llama-3.3-70b",
        "stream": True,
    },
}
ERROR = {"message": "The upstream failed.", "type": "upstream_error", "param": None, "code": None}
PIECES = ["a", " ", '"', "\\", "\n", "é", "日本", "😀", "\x00", "\x1f", "\u2028", "/", "%", "}"]
TEXT = st.one_of(
    st.sampled_from(["a", "b"]),
    st.lists(st.sampled_from(PIECES), max_size=5).map("".join),
    st.text(max_size=4),
)


@st.composite
def chunk_list(draw: Any) -> list[dict[str, Any]]:
    """A stream's chunks as the core sends them: most of them text alone, alike but for it."""
    decoy = draw(st.booleans())  # the text's keys in another field before, its text "a" or "b"
    base: dict[str, Any] = {
        "id": draw(st.sampled_from(["chatcmpl-1", 'c"\\1', "é"])),
        "object": "chat.completion.chunk",
        "created": 1755137921,
        "model": draw(st.sampled_from(["gpt-4o-mini", "m/é"])),  # reversed: another model
    }
    logprobs, null_usage = draw(st.booleans()), draw(st.booleans())
    obfuscation = draw(st.sampled_from(["none", "same", "each"]))
    chunks: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 24))):
        kind = draw(
            st.sampled_from(
                ["text"] * 16
                + ["empty", "role", "reasoning", "tool", "refusal", "usage", "aside"] * 2
                + ["other"] * 4
            )
        )
        delta: dict[str, Any] = {"content": draw(TEXT) if kind != "empty" else ""}
        if kind == "role":
            delta = {"role": "assistant", "content": ""}
        elif kind == "reasoning":
            delta = {"reasoning_content": draw(TEXT) or "hm"}
        elif kind == "refusal":
            delta = {"refusal": draw(TEXT) or "no"}
        elif kind == "tool":
            call: dict[str, Any] = {"index": draw(st.integers(0, 1))}
            call["function"] = {"arguments": draw(TEXT)}
            if draw(st.booleans()):
                call["id"] = f"call_{len(chunks)}"
                call["function"]["name"] = draw(st.sampled_from(["get", "patch"]))
            delta = {"tool_calls": [call]}
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        if logprobs:
            choice["logprobs"] = None
        choice["finish_reason"] = None
        chunk = {**base, "choices": [choice]}
        if decoy:
            chunk = {"meta": {"delta": {"content": draw(st.sampled_from(["a", "b"]))}}, **chunk}
        if kind == "other":  # another shape from here on: a new second, or another model
            key = draw(st.sampled_from(["created", "model", "model"]))
            base[key] = base[key] + 1 if key == "created" else base[key][::-1]
            chunk[key] = base[key]
        elif kind == "aside":  # one chunk (not text) from another model
            chunk["model"] = base["model"][::-1]
            chunk["choices"] = [{**choice, "delta": {"reasoning_content": "hm"}}]
        if kind == "usage":  # usage riding on a text chunk
            chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        elif null_usage:
            chunk["usage"] = None
        if obfuscation != "none":
            chunk["obfuscation"] = "x" if obfuscation == "same" else draw(TEXT)
        chunks.append(chunk)
        for _ in range(draw(st.integers(0, 3)) if kind == "text" else 0):  # a run of them
            more = {**chunk, "choices": [{**choice, "delta": {"content": draw(TEXT)}}]}
            if decoy:
                more["meta"] = {"delta": {"content": draw(st.sampled_from(["a", "b"]))}}
            if obfuscation == "each":
                more["obfuscation"] = draw(TEXT)
            chunks.append(more)
    if draw(st.booleans()):
        reason = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
        choice = {"index": 0, "delta": {}, "finish_reason": reason}
        chunks.append({**base, "choices": [choice]})
    if draw(st.booleans()):
        usage = {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32}
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


@st.composite
def streams(draw: Any) -> tuple[list[dict[str, Any]], str, bytes, list[int]]:
    chunks = draw(chunk_list())
    ending = draw(st.sampled_from(["done", "error", "none"]))
    writer = draw(st.sampled_from(["orjson", "orjson", "ascii", "spaces"]))
    if writer == "orjson":  # as the core writes a chunk it made
        raw = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    else:  # as some upstreams write them: escaped non-ASCII, or spaces
        sep = (",", ":") if writer == "ascii" else (", ", ": ")
        raw = b"".join(b"data: " + json.dumps(c, separators=sep).encode() + b"\n\n" for c in chunks)
    if ending == "done":
        raw += b"data: [DONE]\n\n"
    elif ending == "error":
        raw += b"data: " + orjson.dumps({"error": ERROR}) + b"\n\n"
    cuts = draw(st.sampled_from(["whole", "events", "random"]))
    if cuts == "whole":
        at: list[int] = []
    elif cuts == "events":
        at = [i + 2 for i in range(len(raw)) if raw.startswith(b"\n\n", i)]
    else:
        at = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    return chunks, ending, raw, at


def fed(name: str, chunks: list[dict[str, Any]], ending: str) -> bytes:
    """The reference: the chunks fed one by one to a fresh stream of the door."""
    door = make(name, REQUESTS[name])
    door.chat_body()
    stream = door.streamer()
    out = b"".join(stream.feed(chunk) for chunk in chunks)
    return out + (stream.fail(ERROR) if ending == "error" else stream.end())


def relayed(
    name: str, raw: bytes, cuts: list[int], kind: type[DoorRelay] = DoorRelay
) -> tuple[bytes, DoorRelay]:
    """The bytes read in pieces cut at `cuts` through a relay (of `kind`) of a fresh stream of
    the door: its output, and the relay."""
    door = make(name, REQUESTS[name])
    door.chat_body()
    relay = kind(door.streamer())
    out, last = b"", 0
    for cut in [*cuts, len(raw)]:
        out += relay.feed(raw[last:cut])
        last = cut
    return out + relay.finish(), relay


@settings(max_examples=200, deadline=None)
@given(streams())
def test_the_relay_gives_what_feeding_the_chunks_gives(
    case: tuple[list[dict[str, Any]], str, bytes, list[int]],
) -> None:
    chunks, ending, raw, cuts = case
    for name in REQUESTS:
        assert relayed(name, raw, cuts)[0] == fed(name, chunks, ending), name


class _Counted(DoorRelay):
    """The relay, counting the events it parses."""

    parsed = 0

    def _event(self, block: bytes, *, teach: bool = True) -> bytes:
        self.parsed += 1
        return super()._event(block, teach=teach)


def test_a_run_of_text_goes_to_the_door_at_once() -> None:
    """The fast path is taken: the chunks after the first of a shape are not parsed, whether
    they come in one read or one by one."""
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"content": f"w{n}"}, "finish_reason": None}]}
        for n in range(5)
    ]
    raw = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    for name in REQUESTS:
        for cuts in ([], [i + 2 for i in range(len(raw)) if raw.startswith(b"\n\n", i)]):
            out, relay = relayed(name, raw, cuts, _Counted)
            assert out == fed(name, chunks, "done")
            assert isinstance(relay, _Counted)
            assert relay.parsed == 2, name  # the first chunk, then [DONE]


def test_a_chunk_that_is_not_json_fails_as_parsing_it_does() -> None:
    """A chunk cut like the others but whose text or obfuscation is not a JSON string is read
    the exact way: the relay fails there, as parsing the chunk fails."""
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    good = [
        {**base, "choices": [{"index": 0, "delta": {"content": t}}], "obfuscation": "x" + t}
        for t in ("a", "b", "c")
    ]
    frames = [b"data: " + orjson.dumps(c) + b"\n\n" for c in good]
    for broken in (b'"obfuscation":"xb"', b'"content":"b"'):
        bad = frames[1].replace(broken, broken[:-1] + b'\x01"')  # a raw control character
        for name in REQUESTS:
            for reads in ([frames[0] + bad + frames[2]], [frames[0], bad, frames[2]]):
                door = make(name, REQUESTS[name])
                door.chat_body()
                relay = DoorRelay(door.streamer())
                with pytest.raises(orjson.JSONDecodeError):
                    for read in reads:
                        relay.feed(read)
