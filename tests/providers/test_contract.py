"""One contract for every provider module, over recorded fixtures in fixtures/<provider>/.

Every module in relaygate.providers is found automatically (registry.builtin_names()); each one
except the in-process echo provider must come with fixtures, and each fixture runs through the
same tests:

- `request[-case].json` (an OpenAI request) and `expected_upstream_request[-case].json`
  (`method`, `url`, `headers`, `body`; or `error` when the request must be refused with a 400;
  optional `key`, default FIXTURE_KEY, null for none) test `build_request`.
- `response[-case].json` (a native answer) and `expected_openai_response[-case].json` (the OpenAI
  body; or `inband_error` with the Failure kind) test `parse_response`. `id` and `created` are
  compared only when the expected file has them; invented tool-call ids read `call_<generated>`.
- `stream[-case].txt` (native stream bytes) and `expected_chunks[-case].json` (`chunks`: the OpenAI
  chunk objects then "[DONE]", as emitted with include_usage on; `finished`, `error`, `usage`:
  the counts the relay reports, estimated when the stream did not finish)
  test `stream_relay`: fed whole, byte by byte, in 7-byte pieces and with CRLF line ends, with
  include_usage on and off (off: the usage chunk and the `usage: null` keys go away).
- `errors/*.json` (`status`, `headers`, `body`, `expected`) test `classify_error`. Header values
  and body strings may hold `{now+N}` (RFC 3339, N seconds ahead) or `{epoch_ms+N}`.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from relaygate.config.model import ProviderConfig
from relaygate.errors import InvalidRequest
from relaygate.providers import registry
from relaygate.providers._sse import SSEBuffer, parse_event
from relaygate.providers.base import InBandFailure, Provider

FIXTURES = Path(__file__).parent / "fixtures"
NO_FIXTURES = {"echo"}  # answers in-process: there is no upstream wire format to record
FIXTURE_KEY = "sk-test-fixture-key"
KINDS = ("request", "response", "stream", "errors")
GENERATED_CALL_ID = re.compile(r"call_[0-9a-f]{24}")


def providers() -> list[str]:
    return [n for n in registry.builtin_names() if n not in NO_FIXTURES]


def make(name: str) -> Provider:
    return registry.create(name, ProviderConfig(type=name, keys=[FIXTURE_KEY]))


def cases(kind: str) -> list[Any]:
    """(provider, case path) pairs for one kind of fixture, as pytest params."""
    out = []
    for name in providers():
        folder = FIXTURES / name
        if kind == "errors":
            files = sorted((folder / "errors").glob("*.json"))
        else:
            pattern = {"request": "request*.json", "response": "response*.json"}
            files = sorted(folder.glob(pattern.get(kind, "stream*.txt")))
        out += [pytest.param(name, f, id=f"{name}/{f.stem}") for f in files]
    return out


def partner(path: Path, prefix: str, expected: str) -> Any:
    """The expected_* file that goes with a fixture (`request-x.json` -> `expected_..-x.json`)."""
    suffix = path.stem[len(prefix) :]
    target = path.with_name(f"{expected}{suffix}.json")
    assert target.exists(), f"{path.name} has no {target.name}"
    return json.loads(target.read_text())


def substitute(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: substitute(v) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v) for v in value]
    if not isinstance(value, str):
        return value

    def now_plus(match: re.Match[str]) -> str:
        at = datetime.now(UTC) + timedelta(seconds=int(match.group(1)))
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")

    value = re.sub(r"\{now\+(\d+)\}", now_plus, value)
    return re.sub(
        r"\{epoch_ms\+(\d+)\}", lambda m: str(int((time.time() + int(m[1])) * 1000)), value
    )


def normalise_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: normalise_ids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_ids(v) for v in value]
    if isinstance(value, str):
        return GENERATED_CALL_ID.sub("call_<generated>", value)
    return value


# --- every provider has its fixtures ------------------------------------------------------------
def test_providers_are_discovered():
    names = registry.builtin_names()
    assert {"anthropic", "gemini", "ollama", "openai", "echo"} <= set(names)


@pytest.mark.parametrize("name", providers())
def test_every_provider_module_has_fixtures_of_every_kind(name):
    folder = FIXTURES / name
    assert folder.is_dir(), f"provider module {name!r} has no fixtures in {folder}"
    for kind in KINDS:
        found = [c for c in cases(kind) if c.values[0] == name]
        assert found, f"provider {name!r} has no {kind} fixture in {folder}"


def test_every_fixture_folder_names_a_provider_module():
    folders = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert folders <= set(providers()), folders - set(providers())


def test_each_provider_declares_meta():
    for name in providers():
        provider = make(name)
        assert provider.meta.kind == name
        assert provider.base_url.startswith(("http://", "https://"))


# --- build_request ------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "path"), cases("request"))
def test_build_request(name, path):
    body = json.loads(path.read_text())
    expected = partner(path, "request", "expected_upstream_request")
    provider = make(name)
    key = expected.get("key", FIXTURE_KEY)
    stream = bool(body.get("stream"))
    if "error" in expected:
        with pytest.raises(InvalidRequest) as caught:
            provider.build_request(body, model=body["model"], key=key, stream=stream)
        assert caught.value.status == 400
        assert expected["error"]["message_contains"] in caught.value.message
        return
    request = provider.build_request(body, model=body["model"], key=key, stream=stream)
    assert request.method == expected["method"]
    assert request.url == expected["url"]
    assert {k.lower(): v for k, v in request.headers.items()} == expected["headers"]
    assert request.body is not None
    assert json.loads(request.body) == expected["body"]


def test_build_request_does_not_change_the_client_body():
    for name in providers():
        path = FIXTURES / name / "request.json"
        body = json.loads(path.read_text())
        before = json.dumps(body, sort_keys=True)
        make(name).build_request(body, model=body["model"], key=FIXTURE_KEY, stream=True)
        assert json.dumps(body, sort_keys=True) == before, name


# --- parse_response -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "path"), cases("response"))
def test_parse_response(name, path):
    raw = path.read_bytes()
    expected = partner(path, "response", "expected_openai_response")
    provider = make(name)
    if "inband_error" in expected:
        with pytest.raises(InBandFailure) as caught:
            provider.parse_response(raw, model="requested-model")
        assert caught.value.failure.kind == expected["inband_error"]["kind"]
        return
    body, usage = provider.parse_response(raw, model="requested-model")
    actual = normalise_ids(orjson.loads(body))
    for key in ("id", "created"):
        if key not in expected:
            actual.pop(key, None)
    assert actual == expected
    want = expected.get("usage")
    if want is None:
        assert usage is None
    else:
        assert usage is not None
        cached = (want.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        got = (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        assert got == (want["prompt_tokens"], want["completion_tokens"], cached)
        assert not usage.estimated


# --- stream_relay -------------------------------------------------------------------------------
def _pieces(data: bytes, mode: str) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    if mode == "crlf":
        return [data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")]
    return [data[i : i + 7] for i in range(0, len(data), 7)]


def _run(provider: Provider, data: bytes, mode: str, include_usage: bool, model: str):
    relay = provider.stream_relay(model=model, include_usage=include_usage)
    out = b""
    for piece in _pieces(data, mode):
        out += relay.feed(piece)
        if relay.finished or relay.error is not None:
            # the gateway stops reading here; more input must not produce output
            assert relay.feed(b"data: {}\n\n") == b""
            break
    else:
        out += relay.end()
    events = []
    for block in SSEBuffer().feed(out + b"\n\n"):
        _, payload = parse_event(block)
        if payload is not None:
            events.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return relay, events


def _without_usage(chunks: list[Any]) -> list[Any]:
    out = []
    for chunk in chunks:
        if isinstance(chunk, dict):
            if chunk.get("choices") == []:
                continue
            chunk = {k: v for k, v in chunk.items() if not (k == "usage" and v is None)}
        out.append(chunk)
    return out


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
@pytest.mark.parametrize("mode", ["whole", "bytes", "pieces", "crlf"])
@pytest.mark.parametrize(("name", "path"), cases("stream"))
def test_stream_relay(name, path, mode, include_usage):
    expected = partner(path, "stream", "expected_chunks")
    provider = make(name)
    model = expected.get("request_model", "requested-model")
    relay, events = _run(provider, path.read_bytes(), mode, include_usage, model)
    objects = [e for e in events if isinstance(e, dict)]
    if objects:  # one id, created and model for the whole stream
        assert len({(o.get("id"), o.get("created"), o.get("model")) for o in objects}) == 1
    actual = [
        normalise_ids({k: v for k, v in e.items() if k not in ("id", "created")})
        if isinstance(e, dict)
        else e
        for e in events
    ]
    want = expected["chunks"]
    if not include_usage:
        actual, want = _without_usage(actual), _without_usage(want)
    assert actual == want
    assert relay.finished is expected["finished"]
    if expected.get("error"):
        assert relay.error is not None and relay.error.kind == expected["error"]["kind"]
    else:
        assert relay.error is None
    if expected.get("usage"):
        assert relay.usage is not None
        got = (relay.usage.prompt_tokens, relay.usage.completion_tokens, relay.usage.cached_tokens)
        want_usage = expected["usage"]
        assert got == (
            want_usage["prompt_tokens"],
            want_usage["completion_tokens"],
            want_usage.get("cached_tokens", 0),
        )
        assert relay.usage.estimated is not relay.finished  # a cut stream's usage is a guess
    if relay.finished:
        assert events[-1] == "[DONE]"
    else:
        assert "[DONE]" not in events


# --- classify_error -----------------------------------------------------------------------------
def _next_la_midnight(now: float) -> float:
    zone = ZoneInfo("America/Los_Angeles")
    local = datetime.fromtimestamp(now, zone)
    return datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), zone).timestamp()


@pytest.mark.parametrize(("name", "path"), cases("errors"))
def test_classify_error(name, path):
    case = substitute(json.loads(path.read_text()))
    body = case["body"]
    raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
    now = time.time()
    failure = make(name).classify_error(case["status"], case.get("headers", {}), raw)
    want = case["expected"]
    assert failure.kind == want["kind"], failure
    assert failure.status == want.get("status", case["status"])
    assert failure.message
    for field in ("code", "type"):
        if field in want:
            assert getattr(failure, field) == want[field]
    if "retry_after_s" in want:
        if want["retry_after_s"] is None:
            assert failure.retry_after_s is None
        else:
            assert failure.retry_after_s == pytest.approx(want["retry_after_s"], abs=1.5)
    if "reset_at" in want:
        reset = want["reset_at"]
        if reset is None:
            assert failure.reset_at is None
        elif reset == "next_midnight_los_angeles":
            assert failure.reset_at == pytest.approx(_next_la_midnight(now), abs=2)
        else:
            at = datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp()
            assert failure.reset_at == pytest.approx(at, abs=1)
    if "reset_in_s" in want:
        assert failure.reset_at is not None
        assert failure.reset_at - now == pytest.approx(want["reset_in_s"], abs=2)
