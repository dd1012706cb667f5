"""Logging through one redaction helper: every record passes the Redactor before it is written."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable

import orjson

REDACTED = "[redacted]"


# Secrets nobody told us about, by their shape: a URL's user:password@ and a bearer token.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/@:]+:[^\s/@]*@")
_BEARER = re.compile(r"(?i)(?<=bearer )[A-Za-z0-9._~+/=-]{8,}")  # RFC 6750's token68


class Redactor:
    """Replaces every known secret (upstream keys, client keys, the admin secret) in a text, and
    anything shaped like URL credentials or a bearer token. The one redaction helper: logging,
    error texts from upstreams and stored rows all pass through it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        merged = set(self._secrets) | {s for s in secrets if s and len(s) >= 4}
        self._secrets = sorted(merged, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "://" in text:
            text = _URL_CREDENTIALS.sub(REDACTED + "@", text)
        if "earer " in text:
            text = _BEARER.sub(REDACTED, text)
        return text


class _RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor(record.getMessage())
        record.args = None
        # tracebacks never reach a log line: keep only the exception's type
        if record.exc_info and record.exc_info[0] is not None:
            record.msg += f" [{record.exc_info[0].__name__}]"
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(
            {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
            }
        ).decode()


def setup_logging(level: str = "info", *, json: bool = False, redactor: Redactor) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter(redactor))
    handler.setFormatter(
        _JsonFormatter()
        if json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    for name in ("relaygate", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(level.upper())
