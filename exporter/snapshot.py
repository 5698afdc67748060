"""The snapshot store: the latest known state of every tenant, written by pollers, read by scrapes.

Tenant states are immutable and replaced whole, so a reader gets one consistent view without
waiting for Graph. A failed collector keeps its last good records (they keep ageing at scrape
time), so expiry alerts do not go blind during a Graph outage. Listeners (the exposition) hear
of every change of a tenant, so that they can do their work once per change, not per scrape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from .errors import PollError, Reason
from .records import Fetched, Records
from .thresholds import DEFAULT_THRESHOLDS, Thresholds

# Pre-created at 0 so that `increase()` in alert rules sees the very first error.
PRECREATED_REASONS: tuple[Reason, ...] = ("auth", "forbidden")


@dataclass(frozen=True, slots=True)
class CollectorState:
    """One collector of one tenant."""

    records: Records | None = None  # last good records; None until the first success
    up: bool = False
    last_success_at: float | None = None
    last_error: PollError | None = None
    notes: tuple[str, ...] = ()  # what was odd about the last success


@dataclass(frozen=True, slots=True)
class TenantState:
    """One tenant as of its latest poll."""

    name: str
    tenant_id: str
    cloud: str
    collectors: Mapping[str, CollectorState]
    # How often each collector runs (poll_interval, or its own collector interval).
    intervals: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    # What this tenant is judged by (config `thresholds`), exposed for the alert rules.
    thresholds: Thresholds = DEFAULT_THRESHOLDS
    polled: bool = False  # its first poll has finished, successfully or not
    # Serving records kept on disk by an earlier process (--storage.path) until its first poll.
    restored: bool = False
    source: str = "config"  # where the tenant came from: `tenants:` ("config") or "gdap"
    last_success_at: float | None = None  # last poll in which every collector succeeded
    last_poll_duration: float | None = None
    # notAfter of the exporter's own certificate for this tenant, as of its latest poll.
    credential_expires_at: float | None = None

    @property
    def up(self) -> bool:
        """Every collector succeeded in the last poll."""
        return self.polled and all(state.up for state in self.collectors.values())


@dataclass(frozen=True, slots=True)
class TenantCounters:
    """A tenant's counters at one moment (they only grow while the tenant exists)."""

    polls: int
    poll_errors: Mapping[tuple[str, Reason], int]  # (collector, reason) -> count
    graph_requests: Mapping[str, int]  # HTTP status code -> count


@dataclass
class _Counts:
    polls: int = 0
    poll_errors: Counter[tuple[str, Reason]] = field(default_factory=Counter)
    graph_requests: Counter[str] = field(default_factory=Counter)

    def frozen(self) -> TenantCounters:
        return TenantCounters(
            self.polls,
            MappingProxyType(dict(self.poll_errors)),
            MappingProxyType(dict(self.graph_requests)),
        )


@dataclass(frozen=True)
class StoreView:
    """A consistent copy of the store for one reader (the status page)."""

    tenants: tuple[TenantState, ...]


# Told `(name, state)` after a tenant was added or polled, `(name, None)` after it was removed.
Listener = Callable[[str, TenantState | None], None]


class SnapshotStore:
    """Latest tenant states plus each tenant's counters."""

    def __init__(self) -> None:
        self._tenants: dict[str, TenantState] = {}
        self._counts: dict[str, _Counts] = {}
        self._listeners: list[Listener] = []
        self._unpolled = 0
        # Ready stays ready: a tenant added later (a reload, a new GDAP customer) shows as not
        # yet polled in its own health metrics, not as a process that stopped being ready.
        self._was_ready = False
        self._held = False  # not ready before GDAP discovery first answered (see `hold`)

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` on every change of a tenant, and now for every tenant already here."""
        self._listeners.append(listener)
        for name, state in self._tenants.items():
            listener(name, state)

    def _changed(self, name: str, state: TenantState | None) -> None:
        for listener in self._listeners:
            listener(name, state)

    def add_tenant(
        self,
        name: str,
        tenant_id: str,
        cloud: str,
        collectors: Sequence[str],
        *,
        intervals: Mapping[str, float] | None = None,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        source: str = "config",
    ) -> None:
        """Register a tenant, so that it is visible (down, not polled) from the start."""
        state = TenantState(
            name=name,
            tenant_id=tenant_id,
            cloud=cloud,
            collectors=MappingProxyType({c: CollectorState() for c in collectors}),
            intervals=MappingProxyType(dict(intervals or {})),
            thresholds=thresholds,
            source=source,
        )
        previous = self._tenants.get(name)
        if previous is not None and not previous.polled:
            self._unpolled -= 1
        self._tenants[name] = state
        self._unpolled += 1
        counts = self._counts.setdefault(name, _Counts())
        for collector in collectors:
            for reason in PRECREATED_REASONS:
                counts.poll_errors[(collector, reason)] += 0
        self._changed(name, state)

    def restore(
        self,
        name: str,
        kept: Mapping[str, tuple[Records, float]],
        last_success_at: float | None,
    ) -> int:
        """Serve records an earlier process kept (collector -> (records, last success)) until
        the tenant's first poll: its collectors stay down, the tenant stays not polled, so
        `/-/ready` and `intune_tenant_collector_up` keep their meaning. Returns the records."""
        previous = self._tenants.get(name)
        if previous is None or previous.polled:
            return 0
        collectors = dict(previous.collectors)
        restored = 0
        for collector, (records, success_at) in kept.items():
            if collector in collectors:  # one no longer enabled is dropped
                collectors[collector] = CollectorState(records=records, last_success_at=success_at)
                restored += len(records)
        if collectors == dict(previous.collectors):
            return 0
        state = replace(
            previous,
            collectors=MappingProxyType(collectors),
            last_success_at=last_success_at,
            restored=True,
        )
        self._tenants[name] = state
        self._changed(name, state)
        return restored

    def reconfigure(
        self,
        name: str,
        collectors: Sequence[str],
        *,
        intervals: Mapping[str, float] | None = None,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        cloud: str | None = None,
        source: str | None = None,
    ) -> None:
        """A reloaded tenant's collectors, intervals, thresholds or cloud; the last good records
        of the collectors it keeps stay until the next poll replaces them."""
        previous = self._tenants.get(name)
        if previous is None:
            return
        kept = {c: previous.collectors.get(c, CollectorState()) for c in collectors}
        state = replace(
            previous,
            cloud=previous.cloud if cloud is None else cloud,
            source=previous.source if source is None else source,
            collectors=MappingProxyType(kept),
            intervals=MappingProxyType(dict(intervals or {})),
            thresholds=thresholds,
        )
        counts = self._counts[name]
        for collector in collectors:
            for reason in PRECREATED_REASONS:
                counts.poll_errors[(collector, reason)] += 0
        for key in [k for k in counts.poll_errors if k[0] not in kept]:
            del counts.poll_errors[key]  # a collector turned off takes its counters with it
        self._tenants[name] = state
        self._changed(name, state)

    def remove_tenant(self, name: str) -> None:
        """Forget a tenant: its state and its counters (they go with it, as a process's do)."""
        state = self._tenants.pop(name, None)
        if state is None:
            return
        if not state.polled:
            self._unpolled -= 1
        self._counts.pop(name, None)
        self._changed(name, None)

    def record_poll(
        self,
        tenant: str,
        results: Mapping[str, Fetched | Records | PollError],
        started_at: float,
        duration: float,
    ) -> TenantState | None:
        """Store the outcome of one poll of `tenant` (records or error per collector).

        Returns the new state, or None when the tenant was removed while it was polled.
        """
        previous = self._tenants.get(tenant)
        if previous is None:
            return None
        counts = self._counts[tenant]
        now = started_at + duration
        collectors = dict(previous.collectors)
        for name, result in results.items():
            if name not in collectors:
                continue  # no longer collected for this tenant
            before = collectors[name]
            if isinstance(result, PollError):
                collectors[name] = replace(before, up=False, last_error=result)
                counts.poll_errors[(name, result.reason)] += 1
            else:
                fetched = result if isinstance(result, Fetched) else Fetched(result)
                collectors[name] = CollectorState(
                    records=fetched.records,
                    up=True,
                    last_success_at=now,
                    notes=fetched.notes,
                )
        state = replace(
            previous,
            collectors=MappingProxyType(collectors),
            polled=True,
            restored=False,
            last_poll_duration=duration,
        )
        if state.up:
            state = replace(state, last_success_at=now)
        if not previous.polled:
            self._unpolled -= 1
        self._tenants[tenant] = state
        counts.polls += 1
        self._changed(tenant, state)
        return state

    def record_credential_expiry(self, tenant: str, expires_at: float | None) -> None:
        """When the credential `tenant` authenticates with expires (None: not known), as its
        token provider last read it; re-rendered only when it changed."""
        state = self._tenants.get(tenant)
        if state is None or state.credential_expires_at == expires_at:
            return
        state = replace(state, credential_expires_at=expires_at)
        self._tenants[tenant] = state
        self._changed(tenant, state)

    def count_graph_request(self, tenant: str, status: int) -> None:
        """Count one Graph HTTP response (shown with the tenant's next change)."""
        counts = self._counts.get(tenant)
        if counts is not None:
            counts.graph_requests[str(status)] += 1

    def tenant(self, name: str) -> TenantState:
        """The current state of one tenant."""
        return self._tenants[name]

    def has(self, name: str) -> bool:
        """Whether the tenant is (still) in the store."""
        return name in self._tenants

    def counters(self, name: str) -> TenantCounters:
        """A copy of one tenant's counters."""
        return self._counts[name].frozen()

    @property
    def ready(self) -> bool:
        """Every tenant has finished its first poll (once true, it stays true)."""
        if self._unpolled == 0 and not self._held:
            self._was_ready = True
        return self._was_ready

    def hold(self) -> None:
        """Not ready until `release`, whatever the tenants: more are coming (GDAP discovery at
        start), and ready must mean that those found then were polled too."""
        self._held = True

    def release(self) -> None:
        self._held = False

    @property
    def progress(self) -> tuple[int, int]:
        """(tenants whose first poll has finished, tenants)."""
        return len(self._tenants) - self._unpolled, len(self._tenants)

    def view(self) -> StoreView:
        """A consistent copy for one reader."""
        return StoreView(tenants=tuple(self._tenants.values()))
