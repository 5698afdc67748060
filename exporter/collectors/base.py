"""What every Apple-credential collector provides.

A collector is one module: it fetches and parses its Graph resource into immutable records,
describes its metrics, turns records into samples at scrape time, and describes its rows for the
status page. The poller, the snapshot store, the Prometheus collector and the status page only
talk to this interface, so a new kind of credential is one new module plus one registry line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ..graph import GraphClient
from ..metric_spec import MetricSpec

# (metric name, label values in the spec's order, value)
Sample = tuple[str, tuple[str, ...], float]
# The parsed result of one successful fetch; each collector knows its own record type.
Records = tuple[Any, ...]

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class StatusRow:
    """One credential on the status page."""

    kind: str
    name: str
    apple_id: str
    expires_at: float | None
    last_sync_at: float | None
    problem: str | None
    renew_url: str
    troubleshooting_url: str | None = None
    detail: str | None = None  # shown as a tooltip on the name
    stale_sync_after: float | None = None  # seconds without a successful sync that is a problem


class CredentialCollector(Protocol):
    """One kind of Apple credential (ADE tokens, VPP tokens, the APNs certificate)."""

    @property
    def name(self) -> str:
        """Short name: the `collector` label and the `collect:` config value."""
        ...

    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        """Every metric this collector exposes."""
        ...

    @property
    def kind(self) -> str:
        """What one credential is called on the status page ("ADE token")."""
        ...

    @property
    def empty_note(self) -> str | None:
        """What the status page says when a successful poll found nothing (None: say nothing)."""
        ...

    async def fetch(self, graph: GraphClient) -> Records:
        """Read the resource from Graph; raises `PollError` on failure."""
        ...

    def samples(self, tenant: str, records: Records, now: float) -> Iterator[Sample]:
        """Samples for one tenant's records; time-derived values use `now`."""
        ...

    def status_rows(self, records: Records) -> list[StatusRow]:
        """Rows for the HTML status page."""
        ...


def unique_by_id(records: Iterable[Any]) -> Records:
    """One record per `id`: an item Graph repeats across a page boundary is not a new series."""
    return tuple({record.id: record for record in records}.values())


def iso_date(timestamp: float | None) -> str:
    """``YYYY-MM-DD`` in UTC, or "never"."""
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def text(item: dict[str, Any], key: str) -> str:
    """A string field, or "" when missing, null or not a string (the parser is tolerant)."""
    value = item.get(key)
    return value if isinstance(value, str) else ""


def integer(item: dict[str, Any], key: str) -> int | None:
    """An integer field, or None when missing, null or not a number."""
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def days_until(timestamp: float, now: float) -> float:
    """Fractional days from `now` to `timestamp`; negative once past."""
    return (timestamp - now) / SECONDS_PER_DAY
