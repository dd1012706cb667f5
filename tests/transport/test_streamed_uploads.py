"""A streamed upload (a StreamedBody: an audio file spooled to disk) through each HTTP/1.1
transport: sent with its Content-Length as it is read, and sent whole again when a kept-alive
connection the upstream closed meets it (its chunks start over)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from relaygate.transport.library import LibraryTransport
from relaygate.transport.options import TransportOptions
from relaygate.transport.own import OwnTransport
from tests.fakes.raw_http import RawRequest, RawUpstream, answer

pytestmark = pytest.mark.usefixtures("no_env_proxy")
PIECES = [b"RIFF", b"x" * 70_000, b"end"]


class Upload:
    length = sum(len(p) for p in PIECES)

    async def chunks(self) -> AsyncIterator[bytes]:
        for piece in PIECES:
            await asyncio.sleep(0)
            yield piece


@pytest.mark.parametrize("kind", ["own", "library"])
async def test_a_streamed_upload_is_sent_whole_and_again_on_a_stale_connection(
    upstreams,
    kind: str,  # type: ignore[no-untyped-def]
) -> None:
    async def closes_when_reused(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if request.index > 1:
            return False
        writer.write(answer(body=b"ok"))
        return True

    upstream: RawUpstream = await upstreams(handler=closes_when_reused)
    transport = OwnTransport() if kind == "own" else LibraryTransport(TransportOptions())
    for _ in range(2):
        resp = await transport.request("POST", upstream.url(), {}, Upload())
        assert await resp.read(100) == b"ok"
        resp.close()
    await transport.aclose()
    whole = b"".join(PIECES)
    served = [r for r in upstream.requests if r.index == 1]
    assert [r.body for r in served] == [whole, whole]
    assert all(r.headers["content-length"] == str(len(whole)) for r in served)
    assert "transfer-encoding" not in served[0].headers
