"""The description of one exported metric: the public contract dashboards and rules rely on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MetricSpec:
    """Name (as exposed; counters end in `_total`), type, help text and label names."""

    name: str
    type: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...]
