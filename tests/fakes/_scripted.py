"""What every fake upstream shares: a queue of scripted replies per upstream key (used in order,
the last one repeats), a record of every request, and the server thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiohttp import web

from tests.fakes._server import AiohttpServer

R = TypeVar("R")


@dataclass
class Recorded:
    key: str | None
    path: str
    headers: dict[str, str]
    json: dict[str, Any]
    at: float
    query: dict[str, str] = field(default_factory=dict)


class Scripted(Generic[R]):
    """Scripting and recording; subclasses add routes (`_app`) and speak the wire format."""

    def __init__(self, default: R) -> None:
        self._scripts: dict[str | None, deque[R]] = {}
        self.default = default
        self.requests: list[Recorded] = []
        # the model list (GET .../models, /api/tags): what it lists, the key of every listing,
        # and the keys it refuses there
        self.listed_models: list[str] = []
        self.listings: list[str | None] = []
        self.bad_keys: set[str] = set()
        self._lock = threading.Lock()
        self._server = AiohttpServer(self._app)

    @property
    def base(self) -> str:
        return self._server.base

    def start(self) -> Any:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def script(self, key: str | None, *replies: R) -> None:
        with self._lock:
            self._scripts[key] = deque(replies)

    def calls(self, key: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if key is None or r.key == key]

    def _next(self, key: str | None) -> R:
        with self._lock:
            queue = self._scripts.get(key)
            if not queue:
                return self.default
            return queue.popleft() if len(queue) > 1 else queue[0]

    def _record(self, request: web.Request, key: str | None, body: Any) -> None:
        with self._lock:
            self.requests.append(
                Recorded(
                    key,
                    request.path,
                    dict(request.headers),
                    body if isinstance(body, dict) else {},
                    time.time(),
                    dict(request.query),
                )
            )

    def _app(self) -> web.Application:
        raise NotImplementedError
