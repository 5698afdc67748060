"""Time arithmetic and wording, one copy for the exposition, the status page and the kinds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

SECONDS_PER_DAY: Final = 86400.0
SECONDS_PER_HOUR: Final = 3600.0


def days_until(timestamp: float, now: float) -> float:
    """Fractional days from `now` to `timestamp`; negative once past."""
    return (timestamp - now) / SECONDS_PER_DAY


def date_text(timestamp: float | None) -> str:
    """``YYYY-MM-DD`` in UTC, or "never"."""
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def datetime_text(timestamp: float | None) -> str:
    """``YYYY-MM-DD HH:MM UTC``, or "never"."""
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def span_text(seconds: float) -> str:
    """A duration for people: minutes below an hour, hours below two days, else days."""
    if seconds < SECONDS_PER_HOUR:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * SECONDS_PER_DAY:
        return f"{seconds / SECONDS_PER_HOUR:.1f} h"
    return f"{seconds / SECONDS_PER_DAY:.1f} d"


def age_text(timestamp: float | None, now: float) -> str:
    """ "3.0 d ago", or "never"."""
    return "never" if timestamp is None else f"{span_text(max(0.0, now - timestamp))} ago"
