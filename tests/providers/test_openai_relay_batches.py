"""The OpenAI stream relay's batch path (whole `data:` events of one read passed on as they came)
gives exactly what reading each event gives: the same bytes, usage, end and error, whatever the
events hold (text with `data: `, "usage" or "error" in it, tool calls, null usage keys, groq's
x_groq usage, compact JSON or with spaces) and wherever the reads are cut. Property-tested
against the event-by-event path."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.providers._openai_compat import OpenAIStreamRelay


class _EventByEvent(OpenAIStreamRelay):
    """The same relay with the batch path off: the reference."""

    def _whole_events(self, data: bytes) -> bytes | None:
        return None


PIECES = ["a", " ", "é", "data: ", "usage", "error", '"', "\\", "\n", "[DONE]", '"usage":{']
TEXT = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)


@st.composite
def streams(draw: Any) -> tuple[bytes, list[int]]:
    chunks: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 6))):
        delta: dict[str, Any] = {"content": draw(TEXT)}
        if draw(st.booleans()):
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": draw(TEXT)}}]}
        chunk: dict[str, Any] = {"id": "c", "choices": [{"index": 0, "delta": delta}]}
        if draw(st.booleans()):
            chunk["usage"] = None
        chunks.append(chunk)
    if draw(st.booleans()):
        usage = {"prompt_tokens": draw(st.integers(0, 99)), "completion_tokens": 3}
        if draw(st.booleans()):
            chunks.append({"id": "c", "choices": [], "usage": usage})
        else:
            chunks.append({"id": "c", "choices": [], "x_groq": {"usage": usage}})
    if draw(st.booleans()):  # compact, as most upstreams send it
        raw = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    else:  # JSON with spaces (Python's json): the usage must be read all the same
        raw = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    if draw(st.booleans()):
        raw += b"data: [DONE]\n\n"
    if draw(st.booleans()):
        raw += b": keep-alive\n\n"
    cuts = sorted(draw(st.lists(st.integers(0, max(0, len(raw))), max_size=4)))
    return raw, cuts


def run(relay: OpenAIStreamRelay, raw: bytes, cuts: list[int]) -> tuple[bytes, Any, bool]:
    out, last = b"", 0
    for cut in [*cuts, len(raw)]:
        out += relay.feed(raw[last:cut])
        last = cut
    out += relay.end()
    usage = None if relay.usage is None else (relay.usage.prompt_tokens, relay.usage.total_tokens)
    return out, usage, relay.finished


@settings(max_examples=400, deadline=None)
@given(streams())
def test_batches_give_what_each_event_gives(case: tuple[bytes, list[int]]) -> None:
    raw, cuts = case
    fast = run(OpenAIStreamRelay(include_usage=True), raw, cuts)
    slow = run(_EventByEvent(include_usage=True), raw, cuts)
    assert fast == slow


def test_a_read_of_whole_events_goes_out_as_it_came() -> None:
    events = [
        b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}],"usage":null}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}],"usage":null}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n',
        b"data: [DONE]\n\n",
    ]
    relay = OpenAIStreamRelay(include_usage=True)
    raw = b"".join(events)
    assert relay.feed(raw) == raw
    assert relay.finished and relay.usage is not None and relay.usage.total_tokens == 7
    assert relay.content_events == 3  # every event but [DONE]: an estimate, for no usage
