"""SSE framing (protocols.md §0) as the OpenAI relay re-frames it for the client: any line ending,
any split, comments, and events whose data spans several `data:` lines."""

from __future__ import annotations

import json

import pytest

from relaygate.providers._openai_compat import OpenAIStreamRelay
from relaygate.providers._sse import SSEBuffer, data_event, parse_event

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi"}}]}


def client_events(raw: bytes) -> list[str]:
    """What a WHATWG-conformant client decoder (like the openai SDK's) reads from our bytes."""
    events, data = [], []
    for line in raw.decode().split("\n"):
        if line == "":
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        else:
            assert line.startswith(":"), f"a line that is neither data nor a comment: {line!r}"
    assert not data, "the last event was not terminated"
    return events


def test_data_event_frames_every_line():
    assert data_event(b"[DONE]") == b"data: [DONE]\n\n"
    assert client_events(data_event(b'{"a":\n1}')) == ['{"a":\n1}']


def test_multi_line_data_reaches_the_client_intact():
    pretty = json.dumps(CHUNK, indent=1)  # a server that pretty-prints its chunks
    upstream = "".join(f"data: {line}\n" for line in pretty.split("\n")) + "\n"
    relay = OpenAIStreamRelay(include_usage=False)
    out = relay.feed(upstream.encode()) + relay.feed(b"data: [DONE]\n\n")
    events = client_events(out)
    assert [json.loads(e) for e in events[:-1]] == [CHUNK] and events[-1] == "[DONE]"


@pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_every_split_point_gives_the_same_events(nl):
    body = json.dumps(CHUNK).encode()
    stream = (
        b": OPENROUTER PROCESSING" + nl + nl + b"data: " + body + nl + nl + b"data:" + body + nl
    )
    stream += nl + b"data: [DONE]" + nl + nl
    for cut in range(len(stream) + 1):
        buf = SSEBuffer()
        blocks = buf.feed(stream[:cut]) + buf.feed(stream[cut:]) + buf.flush()
        payloads = [parse_event(b)[1] for b in blocks]
        assert payloads == [None, body, body, b"[DONE]"], cut
