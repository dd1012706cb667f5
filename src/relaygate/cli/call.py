"""`relaygate call`: stream one answer from a running gateway to the terminal (stdlib HTTP)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any


def run_call(
    server: str,
    key: str | None,
    prompt: str,
    *,
    model: str | None,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
) -> int:
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {"messages": messages, "stream": True}
    if model:
        body["model"] = model
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    url = server.rstrip("/") + "/v1/chat/completions"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310
            return _print_stream(response)
    except urllib.error.HTTPError as exc:
        print(f"error {exc.code}: {_message(exc.read())}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"cannot reach {server}: {exc.reason}", file=sys.stderr)
        return 1


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace")[:300]


def _print_stream(response: Any) -> int:
    for raw in response:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        chunk = json.loads(payload)
        if "error" in chunk:
            print(f"\nerror: {chunk['error'].get('message')}", file=sys.stderr)
            return 1
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
