"""A transport for unit tests: answers from a script instead of a socket, and remembers every
request it was handed (method, URL, headers, body, options). Tests of code above the seam use
it where a real socket would only repeat what the library transport's own tests prove."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from relaygate.transport.base import NO_OPTIONS, Body, RequestOptions, streamed_body
from relaygate.transport.errors import BodyTooLarge


@dataclass(slots=True)
class MockReply:
    """One scripted answer, or `error` raised instead of answering."""

    status: int = 200
    body: bytes | Sequence[bytes] = b"{}"  # a sequence: handed out chunk by chunk
    headers: Mapping[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class SentRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    options: RequestOptions


class MockResponse:
    def __init__(self, reply: MockReply) -> None:
        self.status = reply.status
        self._headers = dict(reply.headers)
        body = reply.body
        self._chunks = [body] if isinstance(body, bytes) else list(body)
        self.closed = False

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    async def read(self, limit: int) -> bytes:
        data = b"".join(self._chunks)
        if len(data) > limit:
            raise BodyTooLarge(f"the upstream's answer is larger than {limit} bytes")
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    def close(self) -> None:
        self.closed = True


Responder = Callable[[SentRequest], MockReply]


class MockTransport:
    """Replies in order from `replies`, then from `responder` (default: an empty 200)."""

    def __init__(
        self, replies: Sequence[MockReply] = (), responder: Responder | None = None
    ) -> None:
        self.replies: deque[MockReply] = deque(replies)
        self.responder = responder
        self.sent: list[SentRequest] = []
        self.responses: list[MockResponse] = []
        self.closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        options: RequestOptions = NO_OPTIONS,
    ) -> MockResponse:
        if self.closed:
            raise RuntimeError("the transport is closed")
        streamed = streamed_body(body, {})
        if streamed is not None:
            body = b"".join([chunk async for chunk in streamed.chunks()])
        elif body is not None and not isinstance(body, bytes):
            body = b"".join([chunk async for chunk in cast(AsyncIterable[bytes], body)])
        sent = SentRequest(method, url, dict(headers), body, options)
        self.sent.append(sent)
        if self.replies:
            reply = self.replies.popleft()
        elif self.responder is not None:
            reply = self.responder(sent)
        else:
            reply = MockReply()
        if reply.error is not None:
            raise reply.error
        response = MockResponse(reply)
        self.responses.append(response)
        return response

    async def aclose(self) -> None:
        self.closed = True
