"""The audio transcription door (SPEC §7a Audio): `POST /v1/audio/transcriptions`, OpenAI's
multipart form. An operation other than chat: only targets whose provider declares a codec for
it serve it (providers/_transcribe.py), and the answer goes back as the upstream sent it (body and
content type, whatever the `response_format`), so the door renders nothing itself. Its body is
`{"model", "upload"}` (types.Upload: the form's fields and the spooled file), read by
http/uploads.py. Also owns reading an audio file's length from its header (WAV), what a
transcription is billed by when the answer does not say."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from relaygate.errors import InvalidRequest
from relaygate.formats.base import Door, DoorStream

HEADER_BYTES = 4096  # where a WAV file's fmt and data chunks are looked for


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


def wav_seconds(head: bytes) -> float | None:
    """The length in seconds of a RIFF/WAVE file from its first bytes: the data chunk's size
    over the fmt chunk's byte rate. None for another format or a header it cannot read (a data
    size of 0 or 0xFFFFFFFF, as a streamed recorder writes it, included)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    at, byte_rate = 12, 0
    while at + 8 <= len(head):
        kind, size = head[at : at + 4], struct.unpack_from("<I", head, at + 4)[0]
        if kind == b"fmt " and at + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, at + 16)[0]
        elif kind == b"data":
            if not byte_rate or size in (0, 0xFFFFFFFF):
                return None
            return float(size) / byte_rate
        at += 8 + size + (size & 1)
    return None


DOOR = Transcription
