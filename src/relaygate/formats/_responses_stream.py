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
from relaygate.formats.base import DoorStream

NewId = Callable[[str, int | None], str]
_PART_EVENTS = {"text": "response.output_text", "refusal": "response.refusal"}
_PART_FIELDS = {"text": "text", "refusal": "refusal"}
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
    literals: list[bytes] = field(default_factory=list)  # text not yet added to the part
    delta_head: bytes | None = None  # the open text part's delta event from item_id to delta

    def settle(self) -> None:
        """Add the text sent as JSON literals (text_literal) to the open part, decoded once."""
        if self.literals:
            pieces = orjson.loads(b"[" + b",".join(self.literals) + b"]")
            self.item["content"][-1]["text"] += "".join(pieces)
            self.literals.clear()


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
        sent = self._start(chunk)
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for kind in ("refusal", "text"):
                    piece = delta.get("content" if kind == "text" else kind)
                    if isinstance(piece, str) and piece:
                        sent += self._text(kind, piece)
                for fragment in delta.get("tool_calls") or []:
                    if isinstance(fragment, dict):
                        sent += self._tool(fragment)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
        return sent

    def text_literal(self, literal: bytes) -> bytes | None:
        """Text into the open output_text part, the chunk's JSON literal copied into the delta
        event and kept to add to the part once, when it is read (else None: `feed` opens it)."""
        message = self._open
        if not isinstance(message, _Message) or message.kind != "text":
            return None
        if literal == b'""':
            return b""
        if message.delta_head is None:
            at = self._at(message)
            message.delta_head = (
                b',"item_id":' + orjson.dumps(at["item_id"])
                + b',"output_index":%d,"content_index":%d,"delta":'
                % (at["output_index"], at["content_index"])
            )  # fmt: skip
        message.literals.append(literal)
        seq, self._seq = self._seq, self._seq + 1
        return _DELTA[0] + str(seq).encode() + message.delta_head + literal + _DELTA[1]

    def end(self) -> bytes:
        sent = self._start(None)
        reason = out.incomplete_reason(self._finish)
        sent += self._close("completed" if reason is None else "incomplete")
        response = self._live()
        out.finish(response, self._finish)
        response["output"] = self._output
        response["usage"] = out.usage(self._usage)
        kind = "response.completed" if reason is None else "response.incomplete"
        return sent + self._event(kind, response=response)

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
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

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
        return self._event("response.created", response=self._response) + self._event(
            "response.in_progress", response=self._response
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
            sent += self._event("response.output_item.added", output_index=n, item=item)
        message.settle()
        if message.kind != kind:
            sent += self._close_part(message)
            message.delta_head = None
            part = out.part(kind, "")
            message.item["content"].append(part)
            message.kind = kind
            sent += self._event("response.content_part.added", **self._at(message), part=part)
        message.item["content"][-1][_PART_FIELDS[kind]] += piece
        extra: dict[str, Any] = {"logprobs": []} if kind == "text" else {}
        return sent + self._event(
            f"{_PART_EVENTS[kind]}.delta", **self._at(message), delta=piece, **extra
        )

    def _at(self, message: _Message) -> dict[str, Any]:
        return {
            "item_id": message.item["id"],
            "output_index": message.index,
            "content_index": len(message.item["content"]) - 1,
        }

    def _close_part(self, message: _Message) -> bytes:
        message.settle()
        if message.kind is None:
            return b""
        kind, message.kind = message.kind, None
        part = message.item["content"][-1]
        field = _PART_FIELDS[kind]
        extra: dict[str, Any] = {"logprobs": []} if kind == "text" else {}
        at = self._at(message)
        return self._event(
            f"{_PART_EVENTS[kind]}.done", **at, **{field: part[field]}, **extra
        ) + self._event("response.content_part.done", **at, part=part)

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
        return sent + self._event(
            "response.output_item.done", output_index=current.index, item=current.item
        )

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
