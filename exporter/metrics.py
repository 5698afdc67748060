"""What the exporter exposes: every metric's spec, each tenant's samples, and the lines kept
rendered for every tenant (re-rendered when the snapshot store says the tenant changed)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from . import __version__
from .discovery import DiscoveryState
from .exposition import Exposition, Layout, Lines, render_lines
from .kinds import KINDS, CredentialKind
from .metric_spec import MetricSpec
from .records import Sample
from .sharding import Shard
from .snapshot import PRECREATED_REASONS, SnapshotStore, TenantCounters, TenantState
from .storage import StorageStats

HEALTH_METRICS: Final = (
    MetricSpec(
        "intune_tenant_info",
        "gauge",
        "A tenant the exporter polls; always 1. source: config (listed in tenants:) or gdap.",
        ("tenant", "tenant_id", "cloud", "source"),
    ),
    MetricSpec(
        "intune_tenant_up",
        "gauge",
        "1 when every collector of the tenant's last poll succeeded, else 0 (0 before the first).",
        ("tenant",),
    ),
    MetricSpec(
        "intune_tenant_collector_up",
        "gauge",
        "1 when the collector succeeded in the tenant's last poll, else 0.",
        ("tenant", "collector"),
    ),
    MetricSpec(
        "intune_tenant_collector_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the collector's last successful poll; absent before the first.",
        ("tenant", "collector"),
    ),
    MetricSpec(
        "intune_tenant_collector_interval_seconds",
        "gauge",
        "How often the collector runs for the tenant: poll_interval, or its own interval.",
        ("tenant", "collector"),
    ),
    MetricSpec(
        "intune_tenant_threshold_seconds",
        "gauge",
        "The tenant's thresholds from the config (expiry_warning, expiry_critical, "
        "ade_sync_stale, vpp_sync_stale), in seconds: the alert rules compare against them.",
        ("tenant", "threshold"),
    ),
    MetricSpec(
        "intune_tenant_incomplete_records",
        "gauge",
        "Records the collector got without the field the exporter exists for (a credential "
        "without an expiry date: its expiry is unknown and no expiry alert covers it; for "
        "ade_devices, a device without an id, or waiting without a profile since an unknown "
        "time).",
        ("tenant", "collector"),
    ),
    MetricSpec(
        "intune_tenant_last_successful_poll_timestamp_seconds",
        "gauge",
        "Unix time of the tenant's last fully successful poll; absent before the first.",
        ("tenant",),
    ),
    MetricSpec(
        "intune_tenant_poll_duration_seconds",
        "gauge",
        "Duration of the tenant's last poll in seconds.",
        ("tenant",),
    ),
    MetricSpec(
        "intune_tenant_polls_total",
        "counter",
        "Polls of the tenant, successful or not.",
        ("tenant",),
    ),
    MetricSpec(
        "intune_tenant_poll_errors_total",
        "counter",
        "Failed collector polls by reason (auth, forbidden, not_found, throttled, timeout, "
        "network, http, invalid_response).",
        ("tenant", "collector", "reason"),
    ),
    MetricSpec(
        "intune_graph_requests_total",
        "counter",
        "Microsoft Graph HTTP responses by status code.",
        ("tenant", "code"),
    ),
)

EXPORTER_METRICS: Final = (
    MetricSpec(
        "intune_exporter_poll_interval_seconds",
        "gauge",
        "The configured poll interval in seconds.",
        (),
    ),
    MetricSpec(
        "intune_exporter_build_info",
        "gauge",
        "Version of the exporter; always 1.",
        ("version",),
    ),
    MetricSpec(
        "intune_exporter_shard_info",
        "gauge",
        "The shard this process is (--shard of --total-shards); always 1.",
        ("shard", "total_shards"),
    ),
    MetricSpec(
        "intune_exporter_total_shards",
        "gauge",
        "The number of shards the tenants are spread over (--total-shards).",
        (),
    ),
    MetricSpec(
        "intune_exporter_tenants",
        "gauge",
        "Tenants this process owns (all of them without sharding).",
        (),
    ),
    MetricSpec(
        "intune_exporter_credential_expiry_timestamp_seconds",
        "gauge",
        "When the exporter's own certificate credential for the tenant expires (notAfter of the "
        "leaf in client_certificate_file, Unix time); absent for a secret or a federated token.",
        ("tenant",),
    ),
    MetricSpec(
        "intune_exporter_config_last_reload_successful",
        "gauge",
        "Whether the last configuration reload attempt was successful (1) or refused (0).",
        (),
    ),
    MetricSpec(
        "intune_exporter_config_last_reload_success_timestamp_seconds",
        "gauge",
        "When the configuration in force was loaded (at start or by the last good reload).",
        (),
    ),
    # Only with discovery.gdap.
    MetricSpec(
        "intune_discovery_up",
        "gauge",
        "1 when the last GDAP discovery of customer tenants succeeded, else 0.",
        (),
    ),
    MetricSpec(
        "intune_discovery_last_success_timestamp_seconds",
        "gauge",
        "When GDAP discovery last succeeded, as Unix time; absent before the first success.",
        (),
    ),
    MetricSpec(
        "intune_discovery_tenants",
        "gauge",
        "Customer tenants the last successful GDAP discovery found, after include and exclude.",
        (),
    ),
    MetricSpec(
        "intune_discovery_errors_total",
        "counter",
        "Failed GDAP discoveries, by reason (the reasons of intune_tenant_poll_errors_total).",
        ("reason",),
    ),
    MetricSpec(
        "intune_discovery_refresh_interval_seconds",
        "gauge",
        "discovery.gdap.refresh_interval (IntuneExporterDiscoveryFailing uses it).",
        (),
    ),
    # Only with --storage.path.
    MetricSpec(
        "intune_exporter_storage_last_write_timestamp_seconds",
        "gauge",
        "When the kept state was last written to --storage.path, as Unix time.",
        (),
    ),
    MetricSpec(
        "intune_exporter_storage_write_errors_total",
        "counter",
        "Writes of the kept state that failed (each is retried at the next write interval).",
        (),
    ),
    MetricSpec(
        "intune_exporter_storage_restored_records",
        "gauge",
        "Records served from the kept state at start, before this process polled them.",
        (),
    ),
)


def metric_specs(kinds: Iterable[CredentialKind] | None = None) -> list[MetricSpec]:
    """Every metric the exporter can expose (of all registered kinds unless given)."""
    chosen = KINDS.values() if kinds is None else kinds
    return [
        *(spec for kind in chosen for spec in kind.metrics),
        *HEALTH_METRICS,
        *EXPORTER_METRICS,
    ]


def tenant_samples(
    state: TenantState,
    counters: TenantCounters,
    kinds: Mapping[str, CredentialKind] = KINDS,
) -> Iterator[Sample]:
    """Every sample of one tenant: its credentials, its health, its counters."""
    name = state.name
    for collector_name, collector in state.collectors.items():
        kind = kinds.get(collector_name)
        if kind is not None and collector.records is not None:
            yield from kind.samples(name, collector.records)
    yield "intune_tenant_info", (name, state.tenant_id, state.cloud, state.source), 1.0
    yield "intune_tenant_up", (name,), 1.0 if state.up else 0.0
    if state.last_success_at is not None:
        yield "intune_tenant_last_successful_poll_timestamp_seconds", (name,), state.last_success_at
    if state.last_poll_duration is not None:
        yield "intune_tenant_poll_duration_seconds", (name,), state.last_poll_duration
    if state.credential_expires_at is not None:
        # An exporter metric, but one series per tenant: rendered with the tenant's lines when
        # its poll lands, not per scrape for every tenant.
        yield (
            "intune_exporter_credential_expiry_timestamp_seconds",
            (name,),
            state.credential_expires_at,
        )
    for collector_name, collector in state.collectors.items():
        labels = (name, collector_name)
        yield "intune_tenant_collector_up", labels, 1.0 if collector.up else 0.0
        if collector.last_success_at is not None:
            yield (
                "intune_tenant_collector_last_success_timestamp_seconds",
                labels,
                collector.last_success_at,
            )
        interval = state.intervals.get(collector_name)
        if interval is not None:
            yield "intune_tenant_collector_interval_seconds", labels, interval
        kind = kinds.get(collector_name)
        if kind is not None and collector.records is not None:
            yield (
                "intune_tenant_incomplete_records",
                labels,
                float(kind.incomplete(collector.records)),
            )
    for threshold, seconds in state.thresholds.items():
        yield "intune_tenant_threshold_seconds", (name, threshold), seconds
    yield "intune_tenant_polls_total", (name,), float(counters.polls)
    for (collector_name, reason), count in counters.poll_errors.items():
        yield "intune_tenant_poll_errors_total", (name, collector_name, reason), float(count)
    for code, count in counters.graph_requests.items():
        yield "intune_graph_requests_total", (name, code), float(count)


def exporter_samples(
    poll_interval: float,
    shard: Shard,
    tenants: int,
    storage: StorageStats | None = None,
    reload_status: tuple[bool, float] | None = None,
    discovery: tuple[DiscoveryState, float] | None = None,
) -> Iterator[Sample]:
    """The exporter's own samples (not per tenant); the storage ones with --storage.path, the
    discovery ones (state, refresh interval) with discovery.gdap."""
    if discovery is not None:
        state, refresh = discovery
        yield "intune_discovery_up", (), 1.0 if state.up else 0.0
        if state.last_success_at is not None:
            yield "intune_discovery_last_success_timestamp_seconds", (), state.last_success_at
        yield "intune_discovery_tenants", (), float(state.tenants)
        for reason in sorted({*PRECREATED_REASONS, *state.errors}):
            yield "intune_discovery_errors_total", (reason,), float(state.errors[reason])
        yield "intune_discovery_refresh_interval_seconds", (), refresh
    if reload_status is not None:
        successful, loaded_at = reload_status
        yield "intune_exporter_config_last_reload_successful", (), 1.0 if successful else 0.0
        yield "intune_exporter_config_last_reload_success_timestamp_seconds", (), loaded_at
    yield "intune_exporter_poll_interval_seconds", (), poll_interval
    yield "intune_exporter_build_info", (__version__,), 1.0
    yield "intune_exporter_shard_info", (str(shard.index), str(shard.total)), 1.0
    yield "intune_exporter_total_shards", (), float(shard.total)
    yield "intune_exporter_tenants", (), float(tenants)
    if storage is not None:
        if storage.last_write_at is not None:
            yield "intune_exporter_storage_last_write_timestamp_seconds", (), storage.last_write_at
        yield "intune_exporter_storage_write_errors_total", (), float(storage.write_errors)
        yield "intune_exporter_storage_restored_records", (), float(storage.restored_records)


class TenantLines:
    """Every tenant's rendered lines, kept current by listening to the snapshot store."""

    def __init__(
        self,
        store: SnapshotStore,
        layout: Layout | None = None,
        kinds: Mapping[str, CredentialKind] = KINDS,
    ) -> None:
        self.exposition = Exposition(layout or Layout.of(metric_specs(kinds.values())))
        self.layout = self.exposition.layout
        self._store = store
        self._kinds = kinds
        store.subscribe(self._changed)

    def _changed(self, name: str, state: TenantState | None) -> None:
        if state is None:
            self.exposition.remove(name)
            return
        samples = tenant_samples(state, self._store.counters(name), self._kinds)
        self.exposition.put(name, render_lines(self.layout, samples))

    def parts(self, extra: Callable[[], Iterable[Sample]] | None = None) -> tuple[Lines, ...]:
        """The lines of every tenant, plus `extra` rendered now (for uncached renders)."""
        parts = self.exposition.snapshot().parts
        if extra is None:
            return parts
        return (*parts, render_lines(self.layout, extra()))
