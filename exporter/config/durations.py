"""Durations as the config writes them: Prometheus style ("90s", "10m", "1h30m", "7d")."""

from __future__ import annotations

import math
import re
from typing import Annotated, Final

from pydantic import BeforeValidator

_DURATION_RE: Final = re.compile(
    r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?(?:(?P<ms>\d+)ms)?$"
)
_NUMBER_RE: Final = re.compile(r"^\d+(?:\.\d+)?$")
_UNIT_SECONDS: Final = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: object) -> float:
    """Parse a Prometheus-style duration ("90s", "10m", "1h30m", "500ms") or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("is not a duration")
    if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        value = float(value)  # "120" from ${VAR} is a number of seconds, as 120 would be
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value.strip())) and value.strip():
        seconds = sum(
            float(amount) * _UNIT_SECONDS[unit]
            for unit, amount in match.groupdict().items()
            if amount is not None
        )
    else:
        raise ValueError(
            f"{value!r} is not a duration; write it like 30s, 10m, 1h30m, 7d or a number of seconds"
        )
    if not math.isfinite(seconds):
        raise ValueError("must be a finite duration")
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
