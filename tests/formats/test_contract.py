"""One contract for every front-door format, over fixtures in fixtures/<door>/ (like the provider
contract suite): each directory names a module of relaygate.formats whose `DOOR` is the Door.

- `request[-case].json`: `{"body", "model"?, "stream"?}` (model and stream as a door that reads
  them from the path is given them) and `expected_chat[-case].json`: the chat body the core runs,
  or `{"error": {"param"?, "message_contains"?}}` when the request is a 400.
- `answer[-case].json`: `{"request": <as above>, "completion": <chat.completion>}` and
  `expected_answer[-case].json`: the door's answer body.
- `stream[-case].json`: `{"request", "chunks": [<chat.completion.chunk>..., {"error": {...}}?]}`
  (a last `error` item: the stream fails there) and `expected_stream[-case].json`: the door's
  events in order, each `{"event": <name or null>, "data": <JSON, or the raw text>}`.
- `errors.json`: for each error of ERRORS below by its name, the door's body.

Every door runs with request id RID, so the ids it invents are exact."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from relaygate.errors import (
    BudgetExceeded,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    NoAvailableKeys,
    PayloadTooLarge,
    RateLimitExceeded,
    RelaygateError,
    Unauthorized,
    Unavailable,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from relaygate.formats.base import Door

FIXTURES = Path(__file__).parent / "fixtures"
RID = "req_0192f3c4d5e6a7b8c9d0e1f2a3b4c5d6"
ERRORS: dict[str, RelaygateError] = {
    "InvalidRequest": InvalidRequest("'messages' must be an array.", param="messages"),
    "Unauthorized": Unauthorized(),
    "ModelNotAllowed": ModelNotAllowed("This key may not use the model 'x'.", param="model"),
    "ModelNotFound": ModelNotFound("nope/model"),
    "PayloadTooLarge": PayloadTooLarge(1024),
    "RateLimitExceeded": RateLimitExceeded("Rate limit reached.", retry_after_s=3),
    "BudgetExceeded": BudgetExceeded("Monthly budget of $1.00 reached for this key."),
    "UpstreamRejected": UpstreamRejected(
        422, "context too long", type_="invalid_request_error", code="context_length_exceeded"
    ),
    "UpstreamError": UpstreamError("The upstream failed."),
    "NoAvailableKeys": NoAvailableKeys(2.0),
    "Unavailable": Unavailable("The gateway is shutting down."),
    "UpstreamTimeout": UpstreamTimeout("The upstream did not answer in time."),
}
_EVENT = re.compile(rb"\r\n\r\n|\n\n")


def doors() -> list[str]:
    return sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) if FIXTURES.exists() else []


def door_class(name: str) -> type[Door]:
    cls: type[Door] = importlib.import_module(f"relaygate.formats.{name}").DOOR
    return cls


def cases(kind: str) -> list[Any]:
    out = []
    for name in doors():
        for path in sorted((FIXTURES / name).glob(f"{kind}*.json")):
            out.append(pytest.param(name, path, id=f"{name}/{path.stem}"))
    return out


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def expected(path: Path, kind: str) -> Any:
    return load(path.with_name(path.name.replace(path.name.split("-")[0].split(".")[0], kind, 1)))


def make(name: str, request: dict[str, Any]) -> Door:
    return door_class(name)(
        request["body"], request_id=RID, model=request.get("model"), stream=request.get("stream")
    )


def events(raw: bytes) -> list[dict[str, Any]]:
    """SSE bytes -> [{"event", "data"}], data parsed as JSON when it is JSON."""
    out = []
    for block in _EVENT.split(raw):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.splitlines():
            field, _, value = line.decode().partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        text = "\n".join(data)
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        out.append({"event": name, "data": parsed})
    return out


def test_every_door_has_fixtures() -> None:
    for name in doors():
        for kind in ("request", "answer", "stream"):
            assert list((FIXTURES / name).glob(f"{kind}*.json")), f"{name}: no {kind} fixtures"
        assert (FIXTURES / name / "errors.json").exists(), f"{name}: no errors.json"


@pytest.mark.parametrize(("name", "path"), cases("request"))
def test_request_to_chat(name: str, path: Path) -> None:
    want = expected(path, "expected_chat")
    door = make(name, load(path))
    if "error" in want and set(want) == {"error"}:
        with pytest.raises(InvalidRequest) as caught:
            door.chat_body()
        if "param" in want["error"]:
            assert caught.value.param == want["error"]["param"]
        if "message_contains" in want["error"]:
            assert want["error"]["message_contains"] in caught.value.message
        return
    assert door.chat_body() == want


@pytest.mark.parametrize(("name", "path"), cases("answer"))
def test_answer_from_chat(name: str, path: Path) -> None:
    case = load(path)
    door = make(name, case["request"])
    door.chat_body()  # what a door learns while translating, it may use when it renders
    assert orjson.loads(door.render(case["completion"])) == expected(path, "expected_answer")


@pytest.mark.parametrize(("name", "path"), cases("stream"))
def test_stream_from_chat(name: str, path: Path) -> None:
    case = load(path)
    door = make(name, case["request"])
    door.chat_body()
    streamer = door.streamer()
    out = b""
    for chunk in case["chunks"]:
        if set(chunk) == {"error"}:
            out += streamer.fail(chunk["error"])
            break
        out += streamer.feed(chunk)
    else:
        out += streamer.end()
    assert events(out) == expected(path, "expected_stream")


@pytest.mark.parametrize("name", doors())
def test_error_bodies(name: str) -> None:
    want = load(FIXTURES / name / "errors.json")
    assert set(want) == set(ERRORS), "errors.json names every error of ERRORS"
    cls = door_class(name)
    for key, error in ERRORS.items():
        assert orjson.loads(cls.error_body(error, error.message)) == want[key], key


@pytest.mark.parametrize(("name", "path"), cases("stream"))
def test_stream_through_the_proxy_path(name: str, path: Path) -> None:
    """The same chunks as the core sends them (SSE bytes, in one read and event by event), read
    by the proxy (http/proxy.py: DoorRelay, the answer-text chunks by their JSON literal): the
    same events as feeding the parsed chunks."""
    from relaygate.http.proxy import DoorRelay

    case = load(path)
    frames = []
    for chunk in case["chunks"]:
        frames.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if set(chunk) == {"error"}:
            break
    else:
        frames.append(b"data: [DONE]\n\n")
    for reads in ([b"".join(frames)], frames):
        door = make(name, case["request"])
        door.chat_body()
        relay = DoorRelay(door.streamer())
        out = b"".join(relay.feed(part) for part in reads) + relay.finish()
        assert events(out) == expected(path, "expected_stream")
