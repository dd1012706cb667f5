"""The weekly rotating client key (SPEC §5): `sk-` + the first 16 hex digits of
HMAC-SHA256(key=ADMIN_SECRET, msg="<ISO year>-W<ISO week, 2 digits>"), valid only in its week."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any


def week_label(now: datetime) -> str:
    year, week, _ = now.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def weekly_key(secret: str, now: datetime) -> str:
    digest = hmac.new(secret.encode(), week_label(now).encode(), hashlib.sha256).hexdigest()
    return "sk-" + digest[:16]


def next_monday(now: datetime) -> datetime:
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=7 - day.weekday())


def current_key_info(secret: str, now: datetime) -> dict[str, Any]:
    expiry = next_monday(now)
    return {
        "api_key": weekly_key(secret, now),
        "expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_remaining": (expiry - now.astimezone(UTC)).days,
    }


def is_current(presented: str, secret: str, now: datetime) -> bool:
    return hmac.compare_digest(presented.encode(), weekly_key(secret, now).encode())
