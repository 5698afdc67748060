"""The description of one exported metric: the public contract dashboards and rules rely on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How a time-derived family's value follows from the timestamp its samples carry, measured
# against the scrape's own clock: days until it (negative once past), or seconds since it.
Derived = Literal["days_until", "seconds_since"]


@dataclass(frozen=True)
class MetricSpec:
    """Name (as exposed; counters end in `_total`), type, help text and label names.

    A `derived` family's samples carry a timestamp; the exposition turns it into the value at
    scrape time, so days to expiry and ages keep moving between polls.
    """

    name: str
    type: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...]
    derived: Derived | None = None
