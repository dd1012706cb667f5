"""A fake Telegram Bot API (`POST /bot<token>/sendMessage`) and a fake webhook receiver, each on a
real loopback socket, recording what they were sent."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes._server import AiohttpServer


@dataclass
class Received:
    path: str
    json: dict[str, Any]
    at: float


class _Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self.fail_next = 0  # answer this many requests with fail_status
        self.fail_status = 500
        self._server = AiohttpServer(self._app)

    @property
    def base(self) -> str:
        return self._server.base

    def start(self) -> _Recorder:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received()
            if len(got) >= n:
                return got
            time.sleep(0.02)
        return self.received()

    def _record(self, path: str, body: dict[str, Any]) -> bool:
        """Record one call; False when it should be answered with a failure."""
        with self._lock:
            self._received.append(Received(path, body, time.time()))
            if self.fail_next > 0:
                self.fail_next -= 1
                return False
            return True

    def _app(self) -> web.Application:
        raise NotImplementedError


class FakeTelegram(_Recorder):
    """Answers like the Bot API: `{"ok": true, "result": {...}}`, or 401 for a wrong token."""

    def __init__(self, token: str) -> None:
        self.token = token
        super().__init__()

    def messages(self) -> list[dict[str, Any]]:
        return [r.json for r in self.received()]

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/bot{token}/sendMessage", self._send)
        return app

    async def _send(self, request: web.Request) -> web.Response:
        body = await request.json()
        ok = self._record(request.path, body)
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        if not ok:
            return web.json_response(
                {"ok": False, "error_code": self.fail_status, "description": "Internal"},
                status=self.fail_status,
            )
        if not body.get("chat_id") or not isinstance(body.get("text"), str):
            return web.json_response(
                {"ok": False, "error_code": 400, "description": "Bad Request: text is empty"},
                status=400,
            )
        message = {
            "message_id": len(self.received()),
            "date": int(time.time()),
            "chat": {"id": body["chat_id"], "type": "private"},
            "text": body["text"],
        }
        return web.json_response({"ok": True, "result": message})


class FakeWebhook(_Recorder):
    """Takes any JSON POSTed to /hook/<anything>."""

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook/{name}", self._hook)
        return app

    async def _hook(self, request: web.Request) -> web.Response:
        ok = self._record(request.path, await request.json())
        return web.json_response({"received": ok}, status=200 if ok else self.fail_status)
