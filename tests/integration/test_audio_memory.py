"""An upload is streamed, not held (SPEC §7a Audio): `relaygate serve` as a real subprocess takes a
25 MiB WAV upload (a little under the limit) and passes it to a fake Whisper upstream, and its
peak resident memory (/proc/<pid>/status VmHWM, the peak reset just before) stays under 60 MB
above its idle size. Holding the upload whole twice, as a read-then-forward would, is 50 MiB
before anything else: this fails then."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import wave
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import CLIENT_KEY
from tests.fakes._server import free_port
from tests.fakes.audio_upstream import FakeWhisper, sine_wav
from tests.integration._proc import clean_env, start_server, stop

MB = 1000 * 1000
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def big_wav(path: Path, size: int) -> None:
    """A 16 kHz mono WAV of `size` bytes in all (silence after a short tone)."""
    tone = sine_wav(0.5)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(tone[44:])
        rest = size - 44 - (len(tone) - 44)
        block = b"\0" * MIB
        while rest > 0:
            w.writeframes(block[: min(rest, MIB)])
            rest -= MIB


def test_a_25_mib_upload_stays_under_60_mb_above_idle(tmp_path: Path) -> None:
    upstream = FakeWhisper("openai").start()
    cfg = tmp_path / "relaygate.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "providers": {
                    "openai": {"type": "openai", "base_url": upstream.base_url, "keys": ["sk-m-1"]}
                },
                "clients": [{"name": "mem", "key": CLIENT_KEY}],
            }
        )
    )
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'mem.db'}", LOG_LEVEL="warning")
    port = free_port()
    proc = start_server(tmp_path, port, "--config", str(cfg), env=env)
    url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    small, big = tmp_path / "small.wav", tmp_path / "big.wav"
    small.write_bytes(sine_wav(1.0))
    big_wav(big, 25 * MIB - 64 * 1024)
    try:
        with small.open("rb") as f:  # warm up: every module of the path loaded
            warm = httpx.post(
                url,
                headers=headers,
                data={"model": "whisper-1"},
                files={"file": ("small.wav", f, "audio/wav")},
                timeout=30,
            )
        assert warm.status_code == 200, warm.text
        idle_kb = status_kb(proc.pid, "VmRSS")
        # reset the peak to now (Linux 4.0+), so only the upload's peak counts
        with contextlib.suppress(OSError):
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        with big.open("rb") as f:
            got = httpx.post(
                url,
                headers=headers,
                data={"model": "whisper-1"},
                files={"file": ("big.wav", f, "audio/wav")},
                timeout=120,
            )
        assert got.status_code == 200, got.text
        peak_kb = status_kb(proc.pid, "VmHWM")
    finally:
        stop(proc)
        upstream.stop()
    sent = upstream.received[-1]
    assert sent.size == big.stat().st_size
    assert sent.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    above = (peak_kb - idle_kb) * 1024
    assert above < 60 * MB, f"peak {peak_kb} KiB, idle {idle_kb} KiB: {above / MB:.1f} MB above"
