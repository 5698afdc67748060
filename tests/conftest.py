"""Shared fixtures: the simulated Entra ID + Graph over TLS, and exporters wired to it."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exporter.config import ExporterConfig, parse_config
from exporter.demo.simulator import SimApp, SimTenant, SimulatedCloud
from exporter.graph import RetryPolicy
from exporter.msal_http import MsalHttpClient
from exporter.service import Exporter
from exporter.status_page import page_pieces
from exporter.tls import client_ssl_context

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "test-client-secret-Zq8~"  # distinctive, so tests can search logs for it

# Retries in tests wait milliseconds, not Microsoft's 3 s, unless a test asks for more.
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=2.0, max_total_wait=5.0)


def tenant_guid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.tenant.test"))


@pytest.fixture
async def cloud() -> AsyncIterator[SimulatedCloud]:
    sim = SimulatedCloud()
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
def ca_file(cloud: SimulatedCloud, tmp_path: Path) -> Path:
    path = tmp_path / "sim-ca.pem"
    path.write_text(cloud.ca_pem)
    return path


@pytest.fixture
async def msal_http(ca_file: Path) -> AsyncIterator[MsalHttpClient]:
    """MSAL's HTTP client as the exporter builds it: on an aiohttp session, trusting the
    simulator's CA, with a 60 s request timeout."""
    async with aiohttp.ClientSession() as session:
        yield MsalHttpClient(session, client_ssl_context(ca_file), 60)


class World:
    """A simulated cloud plus the config a user would write for it."""

    def __init__(self, cloud: SimulatedCloud, ca_file: Path) -> None:
        self.cloud = cloud
        self.ca_file = ca_file
        self.tenants: list[dict[str, Any]] = []
        self.exporters: list[Exporter] = []

    def add(
        self,
        name: str,
        *,
        app: SimApp | None = None,
        credential: dict[str, Any] | None = None,
        **data: Any,
    ) -> SimTenant:
        """Register a simulated tenant and its config entry (client secret by default)."""
        sim = SimTenant(tenant_guid(name), **data)
        sim.apps[CLIENT_ID] = app or SimApp(CLIENT_ID, secret=SECRET)
        self.cloud.add_tenant(sim)
        entry: dict[str, Any] = {"name": name, "tenant_id": sim.tenant_id, "client_id": CLIENT_ID}
        entry.update(credential or {"client_secret": SECRET})
        self.tenants.append(entry)
        return sim

    def config(self, **top: Any) -> ExporterConfig:
        raw: dict[str, Any] = {
            "request_timeout": 5,
            "defaults": {
                "authority_host": self.cloud.base_url,
                "graph_endpoint": self.cloud.base_url,
                "ca_file": str(self.ca_file),
            },
            "tenants": self.tenants,
        }
        raw.update(top)
        return parse_config(raw, "test.yaml")

    async def exporter(
        self,
        retry: RetryPolicy = FAST_RETRY,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        **top: Any,
    ) -> Exporter:
        extra = {} if sleep is None else {"sleep": sleep}
        exporter = Exporter(self.config(**top), retry=retry, **extra)
        await exporter.open()
        self.exporters.append(exporter)
        return exporter


@pytest.fixture
async def world(cloud: SimulatedCloud, ca_file: Path) -> AsyncIterator[World]:
    w = World(cloud, ca_file)
    yield w
    for exporter in w.exporters:
        await exporter.close()


def exposition(exporter: Exporter, now: float | None = None, *, openmetrics: bool = False) -> str:
    """The exporter's /metrics body as a scrape at `now` would render it."""
    from exporter.exposition import render

    parts = exporter.lines.parts(exporter.exporter_samples)
    clock = time.time() if now is None else now
    return render(exporter.lines.layout, parts, clock, openmetrics=openmetrics).decode()


def samples_by_name(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse Prometheus text exposition into {metric name: [(labels, value), ...]}."""
    from prometheus_client.parser import text_string_to_metric_families

    result: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return result


def one(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The value of the single sample of `name` whose labels include `labels`."""
    found = [
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


Factory = Callable[..., Any]


def status_page(*args: Any, **kwargs: Any) -> str:
    """The whole status page as one string (the exporter writes it piece by piece)."""
    return "".join(page_pieces(*args, **kwargs))
