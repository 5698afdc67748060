"""The lead times and staleness limits a tenant is judged by, one copy for the whole exporter.

The alert rules read them from `intune_tenant_threshold_seconds` (falling back to the same
defaults), the status page from the tenant's state, the dashboards from the metric.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

from .timetext import SECONDS_PER_DAY, SECONDS_PER_HOUR


@dataclass(frozen=True)
class Thresholds:
    """Seconds: an expiry within `expiry_warning` warns, within `expiry_critical` pages; a
    sync older than `ade_sync_stale` / `vpp_sync_stale` is stale."""

    expiry_warning: float = 30 * SECONDS_PER_DAY
    expiry_critical: float = 7 * SECONDS_PER_DAY
    ade_sync_stale: float = 36 * SECONDS_PER_HOUR
    vpp_sync_stale: float = 72 * SECONDS_PER_HOUR

    def items(self) -> list[tuple[str, float]]:
        """(threshold name, seconds), in declaration order: the metric's label values."""
        return [(field.name, getattr(self, field.name)) for field in fields(self)]


DEFAULT_THRESHOLDS: Final = Thresholds()
THRESHOLD_NAMES: Final = tuple(name for name, _ in DEFAULT_THRESHOLDS.items())
