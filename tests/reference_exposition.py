"""The exposition as it was before pre-rendering: prometheus-client families built per scrape.

Kept as the reference the pre-rendered exposition must equal, series for series and value for
value (tests/test_exposition.py), and as the "what a Python exporter does by default" baseline
of scripts/benchmark.py. It reads the same snapshot store and the same kinds, but renders with
prometheus-client alone and computes the time-derived values itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.metric_spec import MetricSpec
from exporter.metrics import metric_specs, tenant_samples
from exporter.records import Sample
from exporter.snapshot import SnapshotStore


def _family(spec: MetricSpec) -> GaugeMetricFamily | CounterMetricFamily:
    if spec.type == "counter":
        return CounterMetricFamily(
            spec.name.removesuffix("_total"), spec.help, labels=list(spec.labels)
        )
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


class ReferenceCollector(Collector):
    """A prometheus-client collector over the snapshot store; one view per scrape."""

    def __init__(
        self,
        store: SnapshotStore,
        extra: Callable[[], Iterable[Sample]],
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._extra = extra
        self._clock = clock
        self._specs = metric_specs()

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        families = {spec.name: _family(spec) for spec in self._specs}
        derived = {spec.name: spec.derived for spec in self._specs}

        def samples() -> Iterator[Sample]:
            for state in self._store.view().tenants:
                yield from tenant_samples(state, self._store.counters(state.name))
            yield from self._extra()

        for name, labels, value in samples():
            if derived[name] == "days_until":
                value = (value - now) / 86400.0
            elif derived[name] == "seconds_since":
                value = now - value
            families[name].add_metric(labels, value)
        return iter(families.values())


def reference_exposition(
    store: SnapshotStore,
    extra: Callable[[], Iterable[Sample]],
    clock: Callable[[], float],
    *,
    openmetrics: bool = False,
) -> bytes:
    """What `generate_latest` renders for the same samples."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReferenceCollector(store, extra, clock))
    return openmetrics_latest(registry) if openmetrics else generate_latest(registry)
