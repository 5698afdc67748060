"""What every credential kind provides.

A kind is one module: it fetches and parses its Graph resource into immutable records, describes
its metrics, turns records into samples, and describes its rows for the status page. The poller,
the exposition and the status page only talk to this interface, so a new kind of credential is
one new module plus one registry line. (Its config name is still the `collect:` value and the
`collector` label: those are public.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..metric_spec import MetricSpec
from ..records import JsonObject, Records, Sample
from .reader import GraphReader


@dataclass(frozen=True)
class StatusRow:
    """One credential on the status page."""

    kind: str  # the kind's title ("ADE token")
    name: str
    apple_id: str
    expires_at: float | None
    last_sync_at: float | None
    problem: str | None
    renew_url: str
    troubleshooting_url: str | None = None
    detail: str | None = None  # shown as a tooltip on the name
    # The threshold (exporter.thresholds) a sync older than is a problem; None: not judged.
    stale_after: str | None = None
    # False for a row that is not a credential with an expiry (a token's devices): no expiry
    # is judged, and none is missed.
    expires: bool = True
    renew_label: str = "renew"  # the words of the link to `renew_url`


class CredentialKind(Protocol):
    """One kind of Apple credential (ADE tokens, VPP tokens, the APNs certificate), or what a
    credential serves (the devices of ADE tokens)."""

    @property
    def name(self) -> str:
        """Short name: the `collector` label and the `collect:` config value."""
        ...

    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        """Every metric this collector exposes."""
        ...

    @property
    def title(self) -> str:
        """What one credential is called on the status page ("ADE token")."""
        ...

    @property
    def select_fallback(self) -> bool:
        """Whether reading without `$select` is safe (the resource holds no secret), should
        Graph refuse a property of the `$select`."""
        ...

    @property
    def empty_note(self) -> str | None:
        """What the status page says when a successful poll found nothing (None: say nothing)."""
        ...

    @property
    def record_type(self) -> type[Any]:
        """The dataclass of one record (the kept state on disk holds its fields)."""
        ...

    @property
    def unkept(self) -> Mapping[str, Any]:
        """Fields never written to disk (`--storage.path`), with the value a record read back
        from disk gets until the next poll."""
        ...

    async def fetch(self, graph: GraphReader) -> Records:
        """Read the resource from Graph; raises `PollError` on failure."""
        ...

    def samples(self, tenant: str, records: Records) -> Iterator[Sample]:
        """Samples for one tenant's records (a derived family's value is its timestamp)."""
        ...

    def status_rows(self, records: Records, now: float) -> list[StatusRow]:
        """Rows for the HTML status page rendered at `now`."""
        ...

    def incomplete(self, records: Records) -> int:
        """Records without the field the exporter exists for (a credential's expiry)."""
        ...


def unique_by_id(records: Iterable[Any]) -> Records:
    """One record per `id`: an item Graph repeats across a page boundary is not a new series."""
    return tuple({record.id: record for record in records}.values())


async def fetch_collection(
    graph: GraphReader,
    path: str,
    select: Sequence[str],
    parse: Callable[[JsonObject], Any | None],
) -> Records:
    """Every parsable item of a Graph collection, once per id."""
    items = await graph.get_collection(path, select)
    return unique_by_id(record for item in items if (record := parse(item)) is not None)


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
