"""Prometheus side: every metric's spec, and a collector rendering one snapshot per scrape.

Time-derived values (days to expiry, sync ages) are computed here, at scrape time, from the
timestamps the pollers stored, so they keep moving between polls and during Graph outages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from . import __version__
from .kinds import KINDS, CredentialKind
from .metric_spec import MetricSpec
from .snapshot import StoreView

HEALTH_METRICS: Final = (
    MetricSpec(
        "intune_tenant_info",
        "gauge",
        "A configured tenant; always 1.",
        ("tenant", "tenant_id", "cloud"),
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
)


def metric_specs(collectors: Iterable[CredentialKind] | None = None) -> list[MetricSpec]:
    """Every metric the exporter can expose (all registered collectors unless given)."""
    chosen = KINDS.values() if collectors is None else collectors
    return [spec for collector in chosen for spec in collector.metrics] + list(HEALTH_METRICS)


def _family(spec: MetricSpec) -> GaugeMetricFamily | CounterMetricFamily:
    if spec.type == "counter":
        return CounterMetricFamily(
            spec.name.removesuffix("_total"), spec.help, labels=list(spec.labels)
        )
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


class IntuneCollector(Collector):
    """A prometheus-client collector over the snapshot store; one consistent view per scrape."""

    def __init__(
        self,
        view: Callable[[], StoreView],
        poll_interval: float,
        collectors: Mapping[str, CredentialKind] = KINDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._view = view
        self._poll_interval = poll_interval
        self._collectors = collectors
        self._clock = clock
        self._specs = metric_specs(collectors.values())

    def describe(self) -> Iterable[Metric]:
        # Describing without data keeps registration from running a whole collect().
        return [_family(spec) for spec in self._specs]

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        now = self._clock()
        families = {spec.name: _family(spec) for spec in self._specs}

        def add(name: str, labels: tuple[str, ...], value: float) -> None:
            families[name].add_metric(labels, value)

        for tenant in view.tenants:
            name = tenant.name
            add("intune_tenant_info", (name, tenant.tenant_id, tenant.cloud), 1.0)
            add("intune_tenant_up", (name,), 1.0 if tenant.up else 0.0)
            if tenant.last_success_at is not None:
                add(
                    "intune_tenant_last_successful_poll_timestamp_seconds",
                    (name,),
                    tenant.last_success_at,
                )
            if tenant.last_poll_duration is not None:
                add("intune_tenant_poll_duration_seconds", (name,), tenant.last_poll_duration)
            for collector_name, state in tenant.collectors.items():
                labels = (name, collector_name)
                add("intune_tenant_collector_up", labels, 1.0 if state.up else 0.0)
                if state.last_success_at is not None:
                    add(
                        "intune_tenant_collector_last_success_timestamp_seconds",
                        labels,
                        state.last_success_at,
                    )
                collector = self._collectors.get(collector_name)
                if collector is not None and state.records is not None:
                    for metric, sample_labels, value in collector.samples(name, state.records, now):
                        add(metric, sample_labels, value)
        for (tenant_name, collector_name, reason), count in view.poll_errors.items():
            add("intune_tenant_poll_errors_total", (tenant_name, collector_name, reason), count)
        for (tenant_name, code), count in view.graph_requests.items():
            add("intune_graph_requests_total", (tenant_name, code), count)
        for tenant_name, count in view.polls.items():
            add("intune_tenant_polls_total", (tenant_name,), count)
        add("intune_exporter_poll_interval_seconds", (), self._poll_interval)
        add("intune_exporter_build_info", (__version__,), 1.0)
        return iter(families.values())


def build_registry(collector: IntuneCollector) -> CollectorRegistry:
    """A registry of our own holding only the Intune collector (no process/platform metrics)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    return registry
