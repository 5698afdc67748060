"""The snapshot store: the latest known state of every tenant, written by pollers, read by scrapes.

Tenant states are immutable and replaced whole, so a scrape reads one consistent view without
waiting for Graph. A failed collector keeps its last good records (they keep ageing at scrape
time), so expiry alerts do not go blind during a Graph outage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from .errors import PollError, Reason
from .records import Records

# Pre-created at 0 so that `increase()` in alert rules sees the very first error.
PRECREATED_REASONS: tuple[Reason, ...] = ("auth", "forbidden")


@dataclass(frozen=True)
class CollectorState:
    """One collector of one tenant."""

    records: Records | None = None  # last good records; None until the first success
    up: bool = False
    last_success_at: float | None = None
    last_error: PollError | None = None


@dataclass(frozen=True)
class TenantState:
    """One tenant as of its latest poll."""

    name: str
    tenant_id: str
    cloud: str
    collectors: Mapping[str, CollectorState]
    polled: bool = False  # its first poll has finished, successfully or not
    last_success_at: float | None = None  # last poll in which every collector succeeded
    last_poll_duration: float | None = None

    @property
    def up(self) -> bool:
        """Every collector succeeded in the last poll."""
        return self.polled and all(state.up for state in self.collectors.values())


@dataclass(frozen=True)
class StoreView:
    """A consistent copy of the store for one scrape or one status page."""

    tenants: tuple[TenantState, ...]
    poll_errors: Mapping[tuple[str, str, str], int]
    graph_requests: Mapping[tuple[str, str], int]
    polls: Mapping[str, int]


@dataclass
class SnapshotStore:
    """Latest tenant states plus the exporter's own counters."""

    _tenants: dict[str, TenantState] = field(default_factory=dict)
    _poll_errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    _graph_requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    _polls: Counter[str] = field(default_factory=Counter)

    def add_tenant(self, name: str, tenant_id: str, cloud: str, collectors: Sequence[str]) -> None:
        """Register a configured tenant, so that it is visible (down, not polled) from start-up."""
        self._tenants[name] = TenantState(
            name=name,
            tenant_id=tenant_id,
            cloud=cloud,
            collectors=MappingProxyType({c: CollectorState() for c in collectors}),
        )
        self._polls[name] += 0
        for collector in collectors:
            for reason in PRECREATED_REASONS:
                self._poll_errors[(name, collector, reason)] += 0

    def record_poll(
        self,
        tenant: str,
        results: Mapping[str, Records | PollError],
        started_at: float,
        duration: float,
    ) -> TenantState:
        """Store the outcome of one poll of `tenant` (records or error per collector)."""
        previous = self._tenants[tenant]
        now = started_at + duration
        collectors = dict(previous.collectors)
        for name, result in results.items():
            before = collectors.get(name, CollectorState())
            if isinstance(result, PollError):
                collectors[name] = replace(before, up=False, last_error=result)
                self._poll_errors[(tenant, name, result.reason)] += 1
            else:
                collectors[name] = CollectorState(
                    records=result, up=True, last_success_at=now, last_error=None
                )
        state = replace(
            previous,
            collectors=MappingProxyType(collectors),
            polled=True,
            last_poll_duration=duration,
        )
        if state.up:
            state = replace(state, last_success_at=now)
        self._tenants[tenant] = state
        self._polls[tenant] += 1
        return state

    def count_graph_request(self, tenant: str, status: int) -> None:
        """Count one Graph HTTP response."""
        self._graph_requests[(tenant, str(status))] += 1

    def tenant(self, name: str) -> TenantState:
        """The current state of one tenant."""
        return self._tenants[name]

    @property
    def ready(self) -> bool:
        """Every configured tenant has finished its first poll."""
        return all(state.polled for state in self._tenants.values())

    def view(self) -> StoreView:
        """A consistent copy for one reader."""
        return StoreView(
            tenants=tuple(self._tenants.values()),
            poll_errors=dict(self._poll_errors),
            graph_requests=dict(self._graph_requests),
            polls=dict(self._polls),
        )
