"""The audio pieces on their own: a WAV file's length from its header (formats/audio.py), the
re-encoded form's declared length against the bytes it streams (providers/_transcribe.py), what
an answer says of its cost, and prices per audio second (limits/pricing.py, config/model.py)."""

from __future__ import annotations

import asyncio
import io

import pydantic
import pytest

from relaygate.config.model import PriceConfig
from relaygate.formats.audio import MIN_BYTES_PER_SECOND, most_seconds, wav_seconds
from relaygate.limits.pricing import Pricing
from relaygate.providers._transcribe import MultipartBody, answer
from relaygate.types import Upload, Usage
from tests.fakes.audio_upstream import sine_wav


def test_wav_seconds_reads_the_header() -> None:
    assert wav_seconds(sine_wav(3.0)[:4096]) == 3.0
    assert wav_seconds(sine_wav(0.5, rate=8000)[:64]) == 0.5
    assert wav_seconds(b"ID3\x04" + b"\0" * 100) is None  # an mp3
    assert wav_seconds(sine_wav(1.0)[:20]) is None  # cut inside the fmt chunk
    streamed = bytearray(sine_wav(1.0)[:44])
    streamed[40:44] = b"\xff\xff\xff\xff"  # a recorder that did not know the length
    assert wav_seconds(bytes(streamed)) is None


def test_the_most_seconds_a_file_can_hold_whatever_its_header_says() -> None:
    wav = sine_wav(3.0)  # 16 kHz, 16-bit mono: 32,000 bytes a second
    assert most_seconds(wav[:4096], len(wav)) == len(wav) / 32000  # the whole file as samples
    lying = bytearray(wav[:44])
    lying[28:32] = (10**9).to_bytes(4, "little")  # the byte rate: decoders do not read it
    lying[40:44] = (64).to_bytes(4, "little")  # a data chunk of 64 bytes: neither
    assert most_seconds(bytes(lying), len(wav)) == len(wav) / 32000
    slow = sine_wav(0.5, rate=8000)
    assert most_seconds(slow, 10**6) == 10**6 / 16000
    compressed = bytearray(wav[:44])
    compressed[20:22] = (0x55).to_bytes(2, "little")  # an MP3 inside a WAV: any length per byte
    assert most_seconds(bytes(compressed), 10**6) == 10**6 / MIN_BYTES_PER_SECOND
    assert most_seconds(b"ID3\x04" + b"\0" * 100, 25 * 2**20) == 25 * 2**20 / 500  # an mp3
    assert most_seconds(wav[:30], 10**6) == 10**6 / 500  # the fmt chunk cut short


def test_the_form_streams_exactly_the_length_it_declares() -> None:
    data = sine_wav(0.3)
    fields = [("model", "client-name"), ("language", "en"), ("timestamp_granularities[]", "word")]
    upload = Upload(fields, "file", 'we"ird\r\nname.wav', "audio/wav", io.BytesIO(data), len(data))
    form = MultipartBody(upload, "whisper-1")

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in form.chunks()])

    sent = asyncio.run(collect())
    assert len(sent) == form.length
    assert asyncio.run(collect()) == sent  # a retry sends it again from the start
    assert b'name="model"\r\n\r\nwhisper-1\r\n' in sent and b"client-name" not in sent
    assert b'filename="we%22ird%0D%0Aname.wav"' in sent
    assert data in sent


def test_what_an_answer_says_of_its_cost() -> None:
    assert answer(b'{"text":"hi","usage":{"type":"duration","seconds":7}}', "m")[1] == Usage(
        audio_seconds=7.0
    )
    tokens = b'{"text":"hi","usage":{"type":"tokens","input_tokens":30,"output_tokens":4}}'
    assert answer(tokens, "m")[1] == Usage(30, 4)
    assert answer(b'{"text":"hi","duration":7.4}', "m")[1].audio_seconds == 7.4
    assert answer(b"plain text\n", "m") == (b"plain text\n", Usage())
    assert answer(b'{"duration": "x"', "m")[1] == Usage()


def test_prices_per_second() -> None:
    pricing = Pricing({"a/whisper-1": PriceConfig(per_second=0.5)})
    assert pricing.rates("a", "whisper-1").cost(Usage(audio_seconds=3.0)) == 1.5
    published = pricing.rates("b", "whisper-1", "https://api.openai.com/v1")
    assert published.cost(Usage(audio_seconds=60.0)) == pytest.approx(0.006)
    assert pricing.rates("b", "gpt-4o-mini").per_second == 0.0
    with pytest.raises(pydantic.ValidationError):
        PriceConfig()
