"""Chunks of answer text alone, cut from the core's SSE bytes by their shape (http/_door_relay.py).

An OpenAI-compatible upstream writes every such chunk of a stream alike: the same bytes before
the text's JSON literal (`data: `, id, created, model, ...) and after it, but for an
`"obfuscation"` field that OpenAI sets to random text in each chunk and no door reads. A
`Shape` is learnt from one chunk that was parsed: those bytes, and where the two literals are
(proved by parsing the chunk again with other strings in their places: any JSON strings there
make the same chunk but for its text and its obfuscation). Chunks of the shape are then cut
from the bytes with a few bytes operations, a run of them at once, and their literals checked
at once to be JSON strings as orjson writes them (so a door can copy them into its own JSON and
write the same bytes as orjson would)."""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson

from relaygate.formats.base import text_alone

CONTENT = b'"delta":{"content":'
_INDENT = orjson.OPT_INDENT_2
_WINDOW = 8192  # the most bytes one cut looks at: a run that goes on is cut again
_OBFUSCATION = b',"obfuscation":'
# strings to prove a literal's place with (the second when the literal is the first)
_PROOFS = (("\x00", b'"\\u0000"'), ("\x01", b'"\\u0001"'))


@dataclass(slots=True)
class Shape:
    """A chunk of answer text alone is `head` + its text literal + `tail`, or, with `mid`,
    `head` + text literal + `mid` + obfuscation literal + `tail` (`}` and the blank line)."""

    head: bytes
    tail: bytes
    mid: bytes | None = None


def learn(block: bytes, at: int, chunk: Any) -> Shape | None:
    """The shape of a chunk parsed from `block` (`at`: where `"delta":{"content":` is in it)
    when the chunk is answer text alone for choice 0 (no usage, no finish, nothing else in the
    delta) on one `data:` line, with its literals as orjson writes them."""
    text = text_alone(chunk)
    if text is None or not block.startswith(b"data: ") or b"\n" in block:
        return None
    literal = orjson.dumps(text)
    at += len(CONTENT)
    if not block.startswith(literal, at):
        return None
    head, tail = block[:at], block[at + len(literal) :]
    mid, value = None, chunk.get("obfuscation")
    if type(value) is str:
        written = orjson.dumps(value)
        if tail.endswith(_OBFUSCATION + written + b"}"):
            mid = tail[: -len(written) - 1]
    text_proof, text_literal = _PROOFS[text == "\x00"]
    try:
        if mid is None:
            again = orjson.loads(head[6:] + text_literal + tail)
        else:
            value_proof, value_literal = _PROOFS[value == "\x00"]
            again = orjson.loads(head[6:] + text_literal + mid + value_literal + b"}")
            if again["obfuscation"] != value_proof:
                return None
        if again["choices"][0]["delta"]["content"] != text_proof:
            return None
    except (orjson.JSONDecodeError, LookupError, TypeError):
        return None
    return Shape(head, tail + b"\n\n") if mid is None else Shape(head, b"}\n\n", mid)


def one(literal: bytes) -> str | None:
    """What the bytes read as when they are one JSON string as orjson writes it."""
    try:
        text = orjson.loads(literal)
    except orjson.JSONDecodeError:
        return None
    return text if type(text) is str and orjson.dumps(text) == literal else None


def _string(literal: bytes) -> bool:
    """Whether the bytes are one JSON string (an obfuscation value: read by no door, so it may
    be written any way JSON allows)."""
    try:
        return type(orjson.loads(literal)) is str
    except orjson.JSONDecodeError:
        return False


def _strings_too(values: list[bytes]) -> int:
    """How many of the obfuscation values, from the first, are each one JSON string."""
    n = len(strings(values)) if values else 0
    while n < len(values) and _string(values[n]):
        n += 1
    return n


def strings(literals: list[bytes]) -> list[str]:
    """What the literals read as, from the first, as long as each is one JSON string as orjson
    writes it. All at once: orjson's indented dump of what they read as must give them back,
    with the same line breaks between them (a string as orjson writes it has none inside)."""
    if len(literals) == 1:
        text = one(literals[0])
        return [] if text is None else [text]
    whole = b"[\n  " + b",\n  ".join(literals) + b"\n]"
    try:
        texts = orjson.loads(whole)
    except orjson.JSONDecodeError:
        texts = None
    if (
        type(texts) is list
        and len(texts) == len(literals)
        and whole.count(b'\n  "') == len(texts)  # each a string
        and orjson.dumps(texts, option=_INDENT) == whole
    ):
        return texts
    texts = []
    for literal in literals:  # one is not: which
        text = one(literal)
        if text is None:
            break
        texts.append(text)
    return texts


def single(shape: Shape, data: bytes) -> tuple[bytes, str] | None:
    """The literal and text of `data` (it starts with the shape's head) when it is one chunk of
    the shape and nothing else."""
    head, tail, mid = shape.head, shape.tail, shape.mid
    if not data.endswith(tail) or data.find(b"\n", len(head)) != len(data) - 2:  # one line
        return None
    end = len(data) - len(tail)
    if mid is None:
        literal = data[len(head) : end]
    else:
        at = data.rfind(mid, len(head), end)
        if at == -1 or not _string(data[at + len(mid) : end]):
            return None
        literal = data[len(head) : at]
    text = one(literal)
    return None if text is None else (literal, text)


def cut(shape: Shape, data: bytes, at: int, end: int) -> tuple[list[bytes], list[str], int]:
    """The chunks of the shape in `data` from `at` (up to `end` at most), whole ones: their
    literals, texts and where the next event starts (none: not even the first is one; a
    literal that is not a JSON string as orjson writes it ends them)."""
    head, tail, mid = shape.head, shape.tail, shape.mid
    if mid is not None:  # each chunk with its own obfuscation value: one by one
        literals, values, stops = [], [], []
        while data.startswith(head, at):
            value = data.find(mid, at + len(head), end) + len(mid)
            stop = data.find(tail, value, end)
            if value < len(mid) or stop == -1:
                break
            literals.append(data[at + len(head) : value - len(mid)])
            values.append(data[value:stop])
            at = stop + len(tail)
            stops.append(at)
        texts = strings(literals) if literals else []
        k = min(len(texts), _strings_too(values))
        return literals[:k], texts[:k], stops[k - 1] if k else -1
    # all at once, in a window of the bytes: whether they were all chunks of the shape
    window = data[at : min(end, at + _WINDOW)]
    pieces = window.split(tail)
    pieces.pop()  # after the last tail: not a whole chunk
    literals = list(map(itemgetter(slice(len(head), None)), pieces))
    run = head + (tail + head).join(literals) + tail
    if not window.startswith(run):
        k = 0  # where they stop: a piece that is not head + literal
        for piece in pieces:
            if not piece.startswith(head):
                break
            k += 1
        del literals[k:]
    texts = strings(literals) if literals else []
    if len(texts) == len(pieces):  # all of them: the common case
        return literals, texts, at + len(run)
    k = len(texts)
    return literals[:k], texts, at + sum(map(len, pieces[:k])) + k * len(tail)
