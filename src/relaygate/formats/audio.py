"""The audio transcription door (SPEC §7a Audio): `POST /v1/audio/transcriptions`, OpenAI's
multipart form. An operation other than chat: only targets whose provider declares a codec for
it serve it (providers/_transcribe.py), and the answer goes back as the upstream sent it (body and
content type, whatever the `response_format`), so the door renders nothing itself. Its body is
`{"model", "upload"}` (types.Upload: the form's fields and the spooled file), read by
http/uploads.py. Also owns reading an audio file's length from its header (WAV), what a
transcription is billed by when the answer does not say, and the most seconds a file can hold,
what a budget reserves for it."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from typing import Any

from relaygate.errors import InvalidRequest
from relaygate.formats.base import Door, DoorStream

HEADER_BYTES = 4096  # where a WAV file's fmt and data chunks are looked for
# the fewest bytes a second of audio takes in any format the upstreams decode (AMR-NB's lowest
# mode is 4.75 kbit/s, Opus's 6): a file's size over this bounds its length from above
MIN_BYTES_PER_SECOND = 500
_UNCOMPRESSED = (1, 3, 0xFFFE)  # WAVE_FORMAT_PCM, _IEEE_FLOAT, _EXTENSIBLE


class Transcription(Door):
    name = "audio_transcriptions"
    route = "audio"
    native_only = True

    def chat_body(self) -> dict[str, Any]:
        raise InvalidRequest("A transcription has no chat form.")  # native_only: never asked

    def render(self, completion: Mapping[str, Any]) -> bytes:
        raise InvalidRequest("A transcription is answered as the upstream answered.")

    def streamer(self) -> DoorStream:
        raise InvalidRequest("A transcription is not streamed.")


def form_model(fields: list[tuple[str, str]]) -> str:
    """The form's model (a 400 naming it when missing: the core checks its shape)."""
    model = dict(fields).get("model", "").strip()
    if not model:
        raise InvalidRequest("The form field 'model' is required.", param="model")
    return model


def _chunks(head: bytes) -> Iterator[tuple[bytes, int, int]]:
    """A RIFF/WAVE file's chunks in its first bytes: (kind, where the chunk starts, its size);
    none for another format."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    at = 12
    while at + 8 <= len(head):
        size = struct.unpack_from("<I", head, at + 4)[0]
        yield head[at : at + 4], at, size
        at += 8 + size + (size & 1)


def wav_seconds(head: bytes) -> float | None:
    """The length in seconds of a RIFF/WAVE file from its first bytes: the data chunk's size
    over the fmt chunk's byte rate. None for another format or a header it cannot read (a data
    size of 0 or 0xFFFFFFFF, as a streamed recorder writes it, included)."""
    byte_rate = 0
    for kind, at, size in _chunks(head):
        if kind == b"fmt " and at + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, at + 16)[0]
        elif kind == b"data":
            if not byte_rate or size in (0, 0xFFFFFFFF):
                return None
            return float(size) / byte_rate
    return None


def most_seconds(head: bytes, size: int) -> float:
    """The most seconds of audio a file of `size` bytes can hold, whatever its header says of
    its length: what a budget reserves for it before the upstream bills the real length. An
    uncompressed WAV holds at most its size over its sample rate times its frame size (the
    fields a decoder reads the samples by, not the byte rate or the data size, which may lie);
    any other file at most its size over MIN_BYTES_PER_SECOND."""
    rate = _frame_rate(head)
    return size / (rate if rate else MIN_BYTES_PER_SECOND)


def _frame_rate(head: bytes) -> int | None:
    """Bytes a second of an uncompressed WAV's samples (sample rate x block align), else None."""
    for kind, at, _ in _chunks(head):
        if kind == b"fmt ":
            if at + 22 > len(head):
                return None
            tag, _, rate, _, align = struct.unpack_from("<HHIIH", head, at + 8)
            return rate * align if tag in _UNCOMPRESSED and rate and align else None
    return None


DOOR = Transcription
