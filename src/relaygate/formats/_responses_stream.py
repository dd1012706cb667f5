"""The Responses door's stream (SPEC §7a, protocols.md §11.4): chat completion chunks in,
Responses events out, each `event: <type>` + `data: <JSON>` with the type repeated and a
`sequence_number` from 0.

The order the SDK's stream helper and Codex need: `response.created` and `response.in_progress`
first (one response id throughout); an item's `response.output_item.added` before any event that
names it; for text, `response.content_part.added` before its `response.output_text.delta`s; every
added item finished (`.done` events and `response.output_item.done`) when the next item starts or
at the end; then `response.completed` with the whole output and usage (`response.incomplete` when
the chat answer stopped at its length or a content filter).

Items: text -> one `message` item (a refusal is its own `refusal` part, with `response.refusal.*`
events); a tool call -> a `function_call` item whose arguments stream as
`response.function_call_arguments.delta`; a call to a custom tool -> a `custom_tool_call` item:
its raw input sits inside the JSON arguments `{"input": ...}`, so the arguments are kept until the
call ends and the input is sent then (`response.custom_tool_call_input.delta` / `.done`).
`fail` sends `response.failed` (status failed, `error: {code, message}`, the output so far) and
nothing after it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from relaygate.formats import _responses_output as out
from relaygate.formats._responses_tools import ToolMap, ToolRef
from relaygate.formats.base import DoorStream, nonempty

NewId = Callable[[str, int | None], str]
_PART_EVENTS = {"text": "response.output_text", "refusal": "response.refusal"}
_PART_FIELDS = {"text": "text", "refusal": "refusal"}
# each event's bytes up to its sequence number, as orjson writes `{"type": ..., ...}`
_HEADS = {
    kind: b'event: %b\ndata: {"type":"%b","sequence_number":' % (kind.encode(), kind.encode())
    for kind in (
        "response." + name
        for name in (
            *("created", "in_progress", "completed", "incomplete", "failed"),
            *("output_item.added", "output_item.done", "content_part.added"),
            *("content_part.done", "output_text.delta", "output_text.done"),
            *("refusal.delta", "refusal.done", "function_call_arguments.delta"),
            *("function_call_arguments.done", "custom_tool_call_input.delta"),
            "custom_tool_call_input.done",
        )
    )
}
_DELTA = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"sequence_number":',
    b',"logprobs":[]}\n\n',
)


@dataclass(slots=True)
class _Message:
    index: int
    item: dict[str, Any]
    kind: str | None = None  # the open part's kind: "text" or "refusal"
    at: bytes = b""  # the open part's `"item_id":...,"output_index":...,"content_index":...`
    pending: list[str] = field(default_factory=list)  # text not yet added to the part
    delta_template: bytes | None = None  # the open part's delta event (%d: number, %b: text)

    def settle(self) -> None:
        """Add the text sent in runs (text_run) to the open part, at once."""
        if self.pending:
            self.item["content"][-1]["text"] += "".join(self.pending)
            self.pending.clear()


@dataclass(slots=True)
class _Call:
    index: int
    item: dict[str, Any]
    ref: ToolRef
    arguments: str = ""


class ResponsesStream(DoorStream):
    def __init__(
        self, body: Mapping[str, Any], *, names: ToolMap, new_id: NewId, model: object
    ) -> None:
        self._body = body
        self._names = names
        self._new_id = new_id
        self._model = model
        self._seq = 0
        self._response: dict[str, Any] | None = None
        self._output: list[dict[str, Any]] = []
        self._open: _Message | _Call | None = None
        self._calls: dict[int, _Call] = {}
        self._finish: object = None
        self._usage: object = None

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        sent = b"" if self._response is not None else self._start(chunk)
        usage = chunk.get("usage")
        if usage is not None:
            self._usage = usage
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                refusal, text = delta.get("refusal"), delta.get("content")
                if isinstance(refusal, str) and refusal:
                    sent += self._text("refusal", refusal)
                if isinstance(text, str) and text:
                    sent += self._text("text", text)
                for fragment in delta.get("tool_calls") or []:
                    if isinstance(fragment, dict):
                        sent += self._tool(fragment)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
        return sent

    def text_run(self, literals: list[bytes], texts: list[str]) -> bytes | None:
        """Texts into the open output_text part (else None: `feed` opens it), one delta event
        each (numbered in turn) made with one formatting of a repeated template; the part's
        text is added to when it is read."""
        message = self._open
        if not isinstance(message, _Message) or message.kind != "text":
            return None
        literals, texts = nonempty(literals, texts)
        if not literals:
            return b""
        template = message.delta_template
        if template is None:
            at = message.at.replace(b"%", b"%%")
            template = _DELTA[0] + b"%d," + at + b',"delta":%b' + _DELTA[1]
            message.delta_template = template
        message.pending += texts
        n, seq = len(literals), self._seq
        self._seq = seq + n
        if n == 1:
            return template % (seq, literals[0])
        args: list[object] = [None] * (2 * n)
        args[0::2] = range(seq, seq + n)
        args[1::2] = literals
        return (template * n) % tuple(args)

    def end(self) -> bytes:
        sent = b"" if self._response is not None else self._start(None)
        reason = out.incomplete_reason(self._finish)
        sent += self._close("completed" if reason is None else "incomplete")
        response = self._live()
        out.finish(response, self._finish)
        response["output"] = self._output
        response["usage"] = out.usage(self._usage)
        kind = "response.completed" if reason is None else "response.incomplete"
        return sent + self._raw(kind, b'"response":' + orjson.dumps(response))

    def fail(self, error: Mapping[str, Any]) -> bytes:
        sent = self._start(None)
        if isinstance(self._open, _Message):
            self._open.settle()
        response = self._live()
        response["status"] = "failed"
        response["error"] = {
            "code": error.get("code") or error.get("type") or "server_error",
            "message": str(error.get("message") or "The upstream failed."),
        }
        response["output"] = self._output
        response["usage"] = None if self._usage is None else out.usage(self._usage)
        return sent + self._event("response.failed", response=response)

    # -- the pieces

    def _event(self, kind: str, **fields: Any) -> bytes:
        """`{"type": kind, "sequence_number": <next>, **fields}` (one field at least) as its
        event."""
        return self._raw(kind, orjson.dumps(fields)[1:-1])

    def _raw(self, kind: str, fields: bytes) -> bytes:
        """The event of `kind` with the next number and `fields`, as orjson writes them without
        their braces."""
        seq = self._seq
        self._seq = seq + 1
        return _HEADS[kind] + b"%d," % seq + fields + b"}\n\n"

    def _live(self) -> dict[str, Any]:
        assert self._response is not None
        return self._response

    def _start(self, chunk: Mapping[str, Any] | None) -> bytes:
        if self._response is not None:
            return b""
        created = chunk.get("created") if chunk is not None else None
        model = chunk.get("model") if chunk is not None else None
        self._response = out.response(
            self._body,
            id_=self._new_id("resp", None),
            created_at=created if isinstance(created, int) else int(time.time()),
            model=model or self._model,
            status="in_progress",
        )
        body = b'"response":' + orjson.dumps(self._response) + b"}\n\n"  # the same in both
        seq = self._seq
        self._seq = seq + 2
        return (
            _HEADS["response.created"]
            + b"%d," % seq
            + body
            + _HEADS["response.in_progress"]
            + b"%d," % (seq + 1)
            + body
        )

    def _text(self, kind: str, piece: str) -> bytes:
        sent = b""
        message = self._open
        if not isinstance(message, _Message):
            sent += self._close("completed")
            n = len(self._output)
            item = out.message_item(self._new_id("msg", n), [], "in_progress")
            message = _Message(n, item)
            self._output.append(item)
            self._open = message
            sent += self._raw(
                "response.output_item.added", b'"output_index":%d,"item":' % n + orjson.dumps(item)
            )
        message.settle()
        if message.kind != kind:
            sent += self._close_part(message)
            part = out.part(kind, "")
            content = message.item["content"]
            content.append(part)
            message.kind = kind
            message.at = (
                b'"item_id":' + orjson.dumps(message.item["id"])
                + b',"output_index":%d,"content_index":%d' % (message.index, len(content) - 1)
            )  # fmt: skip
            message.delta_template = None
            body = message.at + b',"part":' + orjson.dumps(part)
            sent += self._raw("response.content_part.added", body)
        message.item["content"][-1][_PART_FIELDS[kind]] += piece
        delta = message.at + b',"delta":' + orjson.dumps(piece)
        if kind == "text":
            return sent + self._raw("response.output_text.delta", delta + b',"logprobs":[]')
        return sent + self._raw("response.refusal.delta", delta)

    def _close_part(self, message: _Message) -> bytes:
        message.settle()
        if message.kind is None:
            return b""
        kind, message.kind = message.kind, None
        part = message.item["content"][-1]
        field = _PART_FIELDS[kind]
        done = message.at + b',"%b":' % field.encode() + orjson.dumps(part[field])
        if kind == "text":
            done += b',"logprobs":[]'
        return self._raw(f"{_PART_EVENTS[kind]}.done", done) + self._raw(
            "response.content_part.done", message.at + b',"part":' + orjson.dumps(part)
        )

    def _tool(self, fragment: dict[str, Any]) -> bytes:
        sent = b""
        index = fragment.get("index", 0)
        function = out.obj(fragment.get("function"))
        call = self._calls.get(index)
        call_id = fragment.get("id")
        if call is not None and call_id and call_id != call.item["call_id"]:
            call = None  # a new call reusing an index (some compatible upstreams do)
        if call is None:
            sent += self._close("completed")
            n = len(self._output)
            ref = self._names.resolve(str(function.get("name") or ""))
            if not isinstance(call_id, str) or not call_id:
                call_id = self._new_id("call", n)
            item = out.call_item(
                ref,
                id_=self._new_id(out.item_id_prefix(ref), n),
                call_id=call_id,
                arguments="",
                status="in_progress",
            )
            call = _Call(n, item, ref)
            self._calls[index] = call
            self._output.append(item)
            self._open = call
            sent += self._event("response.output_item.added", output_index=n, item=item)
        piece = function.get("arguments")
        if isinstance(piece, str) and piece:
            call.arguments += piece
            if not call.ref.custom:
                call.item["arguments"] += piece
                sent += self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.item["id"],
                    output_index=call.index,
                    delta=piece,
                )
        return sent

    def _close(self, status: str) -> bytes:
        """Finish the open item: its `.done` events and `response.output_item.done`."""
        current, self._open = self._open, None
        if current is None:
            return b""
        if isinstance(current, _Message):
            sent = self._close_part(current)
            current.item["status"] = status
        else:
            sent = self._close_call(current, status)
        item = b'"output_index":%d,"item":' % current.index + orjson.dumps(current.item)
        return sent + self._raw("response.output_item.done", item)

    def _close_call(self, call: _Call, status: str) -> bytes:
        at = {"item_id": call.item["id"], "output_index": call.index}
        sent = b""
        if call.ref.custom:
            raw = out.custom_input(call.arguments)
            call.item["input"] = raw
            if raw:
                sent += self._event("response.custom_tool_call_input.delta", **at, delta=raw)
            return sent + self._event("response.custom_tool_call_input.done", **at, input=raw)
        if not call.item["arguments"]:  # a call without arguments still sends a JSON object
            call.item["arguments"] = "{}"
            sent += self._event("response.function_call_arguments.delta", **at, delta="{}")
        call.item["status"] = status
        return sent + self._event(
            "response.function_call_arguments.done", **at, arguments=call.item["arguments"]
        )
