#!/usr/bin/env python3
"""Benchmark the exporter at 1,000 and 10,000 tenants, each figure beside its baseline.

    python scripts/benchmark.py            # 1,000 and 10,000 tenants; updates docs/benchmarks.md
    python scripts/benchmark.py --quick    # 100 and 1,000 tenants, fewer scrapes; prints only

Each tenant holds 3 ADE tokens, 1 VPP token and the APNs certificate, and every credential
collector runs (`collect: [ade, vpp, apns]`). Processes, all on loopback:

- the simulated Entra ID and Graph (`exporter.demo.simulator`), 100 ms of latency injected
  before every Graph answer;
- the exporter, as users run it (`intune-apple-token-exporter --config.file=...`) with
  `max_concurrency: 16`;
- the baselines: one process serving the exporter's own /metrics bytes pre-rendered from a
  bare aiohttp handler (the limit: what serving costs with no work at all), and the same
  samples parsed into prometheus-client metric families and served through its aiohttp
  handler, `generate_latest` per scrape (what a Python exporter does by default);
- a prober that times `GET /-/healthy` while scrapes run back to back;
- this process, the client that times the scrapes.

Measured in one run, side by side, because these machines are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from exporter import __version__  # noqa: E402
from exporter.demo.simulator import SimApp, SimTenant, SimulatedCloud  # noqa: E402
from exporter.demo.tenants import _ade, _apns, _vpp  # noqa: E402 - the demo's Graph shapes

CLIENT_ID: Final = "7d3c1b8e-2f4a-4b6c-9e1d-5a8f0c2b7e91"
SECRET: Final = "benchmark-secret-accepted-by-the-simulator"  # not a real secret
NAMESPACE: Final = uuid.UUID("9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f")
EXPORTER_COMMAND: Final = "intune-apple-token-exporter"
DOC: Final = ROOT / "docs" / "benchmarks.md"
START_MARK: Final = "<!-- results:start (written by scripts/benchmark.py) -->"
END_MARK: Final = "<!-- results:end -->"
LATENCY: Final = 0.1
# A second cold start gives Entra ID's requests (OIDC discovery, token) latency too, as the
# real one has: it tells whether tokens keep up with the Graph slots.
ENTRA_LATENCY: Final = 0.1
CONCURRENCY: Final = 16

PLAIN: Final = {"Accept-Encoding": "identity"}
# What Prometheus 2.x sends (scrape_protocols' default order), and gzip.
PROMETHEUS: Final = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    sizes: tuple[int, ...]
    scrapes: int  # per variant of our /metrics and of the pre-rendered bytes
    generate_latest_scrapes: dict[int, int]  # per size: it is slow at 10,000
    health_seconds: float
    ready_timeout: float
    page_loads: int = 5  # of each status page view


FULL: Final = Plan((1000, 10000), 50, {1000: 20, 10000: 5}, 20.0, 600.0)
QUICK: Final = Plan((100, 1000), 15, {100: 10, 1000: 5}, 8.0, 180.0)


# --- simulated tenants ------------------------------------------------------------------------


def tenant_name(index: int) -> str:
    return f"tenant-{index:05d}"


def tenant_id(name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, name))


def sim_tenant(index: int, now: float, app: SimApp) -> SimTenant:
    """3 ADE tokens, 1 VPP token and the APNs certificate, with varied expiries."""
    name = tenant_name(index)
    spread = index % 300
    tenant = SimTenant(
        tenant_id(name),
        ade_tokens=[
            _ade(name, f"{name} {kind}", now, expires_in_days=30 + spread + n)
            for n, kind in enumerate(("iOS", "Macs", "iPads"))
        ],
        vpp_tokens=[_vpp(name, f"{name} Apps", now, expires_in_days=60 + spread)],
        apns_certificate=_apns(name, now, expires_in_days=90 + spread),
    )
    tenant.apps[app.client_id] = app
    return tenant


def config_document(count: int, base_url: str, ca_file: Path) -> dict[str, Any]:
    """The config.yaml an operator would write for `count` tenants."""
    return {
        "poll_interval": "1h",  # only the first round runs while we measure
        "request_timeout": "60s",
        "max_concurrency": CONCURRENCY,
        "collect": ["ade", "vpp", "apns"],
        "defaults": {
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "authority_host": base_url,
            "graph_endpoint": base_url,
            "ca_file": str(ca_file),
        },
        "tenants": [
            {"name": tenant_name(i), "tenant_id": tenant_id(tenant_name(i))} for i in range(count)
        ],
    }


# --- child processes --------------------------------------------------------------------------


def _simulator_main(conn: Connection, count: int, entra_latency: float = 0.0) -> None:
    asyncio.run(_simulator_serve(conn, count, entra_latency))


async def _simulator_serve(conn: Connection, count: int, entra_latency: float) -> None:
    cloud = SimulatedCloud(latency=LATENCY, entra_latency=entra_latency)
    app = SimApp(CLIENT_ID, secret=SECRET)
    now = time.time()
    for index in range(count):
        cloud.add_tenant(sim_tenant(index, now, app))
    await cloud.start()
    conn.send((cloud.base_url, cloud.ca_pem))
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as pipe_reader:
        while (await loop.run_in_executor(pipe_reader, conn.recv)) != "stop":
            graph = cloud.graph_requests
            conn.send(
                {
                    "graph_requests": len(graph),
                    "graph_not_ok": sum(1 for r in graph if r.status != 200),
                    "token_requests": len(cloud.token_requests),
                    "cpu_seconds": time.process_time(),
                }
            )
    await cloud.stop()


def _baseline_main(conn: Connection, bodies: dict[str, bytes]) -> None:
    asyncio.run(_baseline_serve(conn, bodies))


async def _baseline_serve(conn: Connection, bodies: dict[str, bytes]) -> None:
    from aiohttp import web
    from prometheus_client.aiohttp import make_aiohttp_handler
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import Collector, CollectorRegistry

    families = list(text_string_to_metric_families(bodies["text"].decode()))

    class Parsed(Collector):
        def collect(self) -> Any:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Parsed())

    async def prerendered(request: web.Request) -> web.Response:
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(
                body=bodies["openmetrics.gz"],
                headers={
                    "Content-Type": "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    "Content-Encoding": "gzip",
                },
            )
        return web.Response(
            body=bodies["text"], headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    app = web.Application()
    app.router.add_get("/prerendered", prerendered)
    app.router.add_get("/generate_latest", make_aiohttp_handler(registry))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    conn.send(runner.addresses[0][1])
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as pipe_reader:
        await loop.run_in_executor(pipe_reader, conn.recv)
    await runner.cleanup()


def _prober_main(conn: Connection, port: int, seconds: float) -> None:
    """GET /-/healthy in a loop for `seconds`; send back every latency."""
    latencies = []
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        client.request("GET", "/-/healthy")
        response = client.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        time.sleep(0.01)
    conn.send(latencies)


class Child:
    """A child process that answers on a pipe."""

    def __init__(self, target: Any, *args: Any, name: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.process.start()
        child.close()

    def receive(self, within: float = 600.0) -> Any:
        if not self.conn.poll(within):
            raise RuntimeError(f"{self.process.name} did not answer within {within:g} s")
        return self.conn.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send("stop")
        self.process.join(15)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)


# --- measuring --------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def proc_kib(pid: int, key: str) -> int:
    """A `VmRSS`-style field of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/{pid}/status")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (every thread), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Series:
    """Latencies of one kind of scrape."""

    label: str
    latencies: list[float] = field(default_factory=list)
    wire_bytes: int = 0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 0.99) * 1000


@dataclass
class ColdStart:
    """From starting the exporter to every tenant polled once."""

    ready_seconds: float = 0.0
    first_round_seconds: float = 0.0
    tenants_up: int = 0
    cpu_until_ready: float = 0.0
    rss_ready_kib: int = 0


@dataclass
class SizeResult:
    """Everything measured at one size."""

    tenants: int
    series: int = 0
    body_bytes: int = 0
    cold: ColdStart = field(default_factory=ColdStart)
    # The same with Entra ID's latency too (ENTRA_LATENCY), in a run of its own.
    cold_entra: ColdStart = field(default_factory=ColdStart)
    rss_after_100_kib: int = 0  # after 100 scrapes or a few more, the figure
    scrapes_at_rss_100: int = 0  # how many exactly (the median phase may pass 100)
    rss_after_kib: int = 0  # after every scrape of the run (scrapes_made)
    hwm_kib: int = 0
    scrapes_made: int = 0
    scrapes: dict[str, Series] = field(default_factory=dict)
    health: list[float] = field(default_factory=list)
    health_scrapes: int = 0
    # The status page: label -> (HTML bytes, latencies), beside /metrics plain.
    pages: dict[str, Series] = field(default_factory=dict)

    @property
    def bound(self) -> float:
        return math.ceil(self.tenants / CONCURRENCY) * LATENCY


async def timed_get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[float, bytes]:
    started = time.perf_counter()
    async with session.get(url, headers=headers) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {response.status}")
    return time.perf_counter() - started, body


async def wait_for(predicate: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what} within {within:g} s")


def log_field(log_file: Path, message: str) -> dict[str, Any] | None:
    """The first JSON log line with `msg` == message."""
    for line in log_file.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("msg") == message:
                return dict(entry)
    return None


@contextlib.asynccontextmanager
async def exporter_until_ready(
    plan: Plan, tenants: int, sim: Child, workdir: Path, name: str, log: Any
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, ColdStart]]:
    """Start the exporter against `sim` and wait until it is ready; stopped on leaving."""
    cold = ColdStart()
    base_url, ca_pem = sim.receive()
    ca_file = workdir / f"simulator-ca-{name}.pem"
    ca_file.write_text(ca_pem)
    config_file = workdir / f"config-{name}.yaml"
    config_file.write_text(yaml.safe_dump(config_document(tenants, base_url, ca_file)))
    log_file = workdir / f"exporter-{name}.log"
    with log_file.open("w") as out:
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            EXPORTER_COMMAND,
            f"--config.file={config_file}",
            "--web.listen-address=127.0.0.1:0",
            "--log.format=json",
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def listening() -> str | None:
            if process.returncode is not None:
                raise RuntimeError(f"the exporter exited; see {log_file}")
            entry = log_field(log_file, "listening")
            return str(entry["address"]) if entry else None

        address = await wait_for(listening, 120, "the exporter did not listen")
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                async with session.get(f"http://{address}/-/ready") as response:
                    await response.read()
                    return response.status == 200

            await wait_for(ready, plan.ready_timeout, "the exporter was not ready")
        cold.ready_seconds = time.monotonic() - started
        cold.cpu_until_ready = proc_cpu_seconds(process.pid)
        cold.rss_ready_kib = proc_kib(process.pid, "VmRSS")
        entry = log_field(log_file, "ready: every tenant has finished its first poll") or {}
        cold.first_round_seconds = float(entry.get("first_round_seconds", 0.0))
        cold.tenants_up = int(entry.get("tenants_up", 0))
        sim.conn.send("stats")
        stats = sim.receive()
        if stats["graph_not_ok"] or cold.tenants_up != tenants:
            raise RuntimeError(f"the first round had failures: {stats}, {entry}")
        bound = math.ceil(tenants / CONCURRENCY) * LATENCY
        log(
            f"  {name}: ready after {cold.ready_seconds:.1f} s (first round "
            f"{cold.first_round_seconds:.1f} s, bound {bound:.1f} s), "
            f"RSS {cold.rss_ready_kib / 1024:.0f} MiB"
        )
        yield process, address, cold
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def cold_start_with_entra_latency(
    plan: Plan, tenants: int, workdir: Path, log: Any
) -> ColdStart:
    """Only the cold start, against a simulator whose Entra ID answers after ENTRA_LATENCY."""
    sim = Child(_simulator_main, tenants, ENTRA_LATENCY, name="simulator")
    try:
        name = f"{tenants}-entra-latency"
        async with exporter_until_ready(plan, tenants, sim, workdir, name, log) as (_, _, cold):
            return cold
    finally:
        sim.stop()


async def measure(plan: Plan, tenants: int, workdir: Path, log: Any) -> SizeResult:
    """One size: start the simulator and the exporter, then measure against the baselines."""
    result = SizeResult(tenants)
    sim = Child(_simulator_main, tenants, name="simulator")
    baseline: Child | None = None
    try:
        async with exporter_until_ready(plan, tenants, sim, workdir, str(tenants), log) as (
            process,
            address,
            result.cold,
        ):
            base = f"http://{address}"
            timeout = aiohttp.ClientTimeout(total=600)
            async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
                metrics = f"{base}/metrics"
                _, text = await timed_get(session, metrics, PLAIN)
                _, om_gz = await timed_get(session, metrics, PROMETHEUS)
                result.body_bytes = len(text)
                result.series = sum(1 for line in text.split(b"\n") if line and line[:1] != b"#")
                baseline = Child(
                    _baseline_main, {"text": text, "openmetrics.gz": om_gz}, name="baselines"
                )
                baseline_port = baseline.receive()
                pre = f"http://127.0.0.1:{baseline_port}/prerendered"
                variants = {
                    "ours, plain": (metrics, PLAIN),
                    "pre-rendered, plain": (pre, PLAIN),
                    "ours, Prometheus headers": (metrics, PROMETHEUS),
                    "pre-rendered, Prometheus headers": (pre, PROMETHEUS),
                }
                result.scrapes = {label: Series(label) for label in variants}
                for _ in range(3):  # warm-up
                    for url, headers in variants.values():
                        await timed_get(session, url, headers)
                for _ in range(plan.scrapes):  # interleaved, so noise hits every variant alike
                    for label, (url, headers) in variants.items():
                        seconds, body = await timed_get(session, url, headers)
                        result.scrapes[label].latencies.append(seconds)
                        result.scrapes[label].wire_bytes = len(body)
                result.scrapes_made = 2 * (plan.scrapes + 3) + 2
                while result.scrapes_made < 100:  # top up, alternating both kinds
                    headers = PLAIN if result.scrapes_made % 2 else PROMETHEUS
                    await timed_get(session, metrics, headers)
                    result.scrapes_made += 1
                result.rss_after_100_kib = proc_kib(process.pid, "VmRSS")
                result.scrapes_at_rss_100 = result.scrapes_made
                generate = Series("generate_latest, plain")
                gen_url = f"http://127.0.0.1:{baseline_port}/generate_latest"
                for _ in range(plan.generate_latest_scrapes[tenants]):
                    seconds, body = await timed_get(session, gen_url, PLAIN)
                    generate.latencies.append(seconds)
                    generate.wire_bytes = len(body)
                result.scrapes[generate.label] = generate
                log(
                    f"  /metrics median {result.scrapes['ours, plain'].median_ms:.0f} ms, "
                    f"pre-rendered {result.scrapes['pre-rendered, plain'].median_ms:.0f} ms, "
                    f"generate_latest {generate.median_ms:.0f} ms"
                )

                # The status page as a person opens it: whole, one tenant, problems only.
                views = {
                    "/": f"{base}/",
                    "/?q=<one tenant>": f"{base}/?q={tenant_name(tenants // 2)}",
                    "/?problems=1": f"{base}/?problems=1",
                }
                result.pages = {label: Series(label) for label in views}
                for _ in range(plan.page_loads):
                    for label, url in views.items():
                        seconds, body = await timed_get(session, url, PLAIN)
                        result.pages[label].latencies.append(seconds)
                        result.pages[label].wire_bytes = len(body)
                log(
                    "  status page: "
                    + ", ".join(
                        f"{label} {page.wire_bytes / 1e6:.2f} MB in {page.median_ms:.0f} ms"
                        for label, page in result.pages.items()
                    )
                )

                # Health while scrapes run back to back (alternating both kinds of header).
                prober = Child(
                    _prober_main, int(address.rsplit(":", 1)[1]), plan.health_seconds, name="prober"
                )
                scrapes = 0
                while prober.process.is_alive() and not prober.conn.poll():
                    await timed_get(session, metrics, PLAIN if scrapes % 2 else PROMETHEUS)
                    scrapes += 1
                result.health = prober.receive()
                prober.process.join(10)
                result.health_scrapes = scrapes
                result.scrapes_made += scrapes
                result.rss_after_kib = proc_kib(process.pid, "VmRSS")
                result.hwm_kib = proc_kib(process.pid, "VmHWM")
                log(
                    f"  /-/healthy p99 {percentile(result.health, 0.99) * 1000:.1f} ms during "
                    f"{scrapes} scrapes; RSS after {result.scrapes_made} scrapes "
                    f"{result.rss_after_kib / 1024:.0f} MiB"
                )
                return result
    finally:
        if baseline is not None:
            baseline.stop()
        sim.stop()


# --- report -----------------------------------------------------------------------------------


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def render_tables(results: list[SizeResult], plan: Plan) -> str:
    lines = [
        "### /metrics, beside the same bytes pre-rendered and `generate_latest`",
        "",
        f"Sequential scrapes, interleaved ({plan.scrapes} of each of the first four, after 3 "
        'warm-ups); time to the last body byte. "Prometheus headers": OpenMetrics preferred, '
        "gzip.",
        "",
        "| tenants | series | body | scrape | wire | median | p99 | ratio to the limit |",
        "|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in results:
        pre = {
            "plain": r.scrapes["pre-rendered, plain"].median_ms,
            "Prometheus headers": r.scrapes["pre-rendered, Prometheus headers"].median_ms,
        }
        for label, s in r.scrapes.items():
            kind = "plain" if label.endswith("plain") else "Prometheus headers"
            if label.startswith("ours"):
                ratio = f"{s.median_ms / pre[kind]:.2f}x the pre-rendered bytes"
            elif label.startswith("generate_latest"):
                ours = r.scrapes["ours, plain"].median_ms
                ratio = f"ours is {s.median_ms / ours:.1f}x faster"
            else:
                ratio = "the limit"
            lines.append(
                f"| {r.tenants:,} | {r.series:,} | {r.body_bytes / 1e6:.1f} MB | {label} | "
                f"{s.wire_bytes / 1e6:.2f} MB | {s.median_ms:.1f} ms | {s.p99_ms:.1f} ms | "
                f"{ratio} |"
            )
    lines += [
        "",
        f"### The status page ({plan.page_loads} loads of each view, time to the last byte)",
        "",
        "| tenants | view | HTML | median | p99 | ratio to /metrics plain |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        plain = r.scrapes["ours, plain"].median_ms
        for label, page in r.pages.items():
            lines.append(
                f"| {r.tenants:,} | `{label}` | {page.wire_bytes / 1e6:.2f} MB | "
                f"{page.median_ms:.1f} ms | {page.p99_ms:.1f} ms | {page.median_ms / plain:.2f}x |"
            )
    lines += [
        "",
        f"### /-/healthy while scrapes run back to back ({plan.health_seconds:g} s, a probe "
        "every 10 ms from its own process)",
        "",
        "| tenants | probes | scrapes meanwhile | median | p99 | max |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.tenants:,} | {len(r.health):,} | {r.health_scrapes} | "
            f"{statistics.median(r.health) * 1000:.1f} ms | "
            f"{percentile(r.health, 0.99) * 1000:.1f} ms | {max(r.health) * 1000:.1f} ms |"
        )
    lines += [
        "",
        "### The first round and memory",
        "",
        f"Bound: ⌈tenants ÷ {CONCURRENCY}⌉ x {LATENCY * 1000:.0f} ms. First round: from the "
        "start of polling to the last tenant's first poll (the exporter's own log line); "
        "ready: from starting the process to `/-/ready` answering 200. Entra ID answers at "
        f'once, except in the rows marked "Entra ID +{ENTRA_LATENCY * 1000:.0f} ms": a cold '
        "start of its own against a simulator whose Entra ID answers each request (OIDC "
        "discovery, token) after that latency, as the real one does.",
        "",
        "| tenants | Entra ID | bound | first round | ratio | ready | ratio | CPU until ready | "
        "RSS when ready | RSS after 100 scrapes (count) | RSS after all scrapes (count) | "
        "peak RSS |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        after_all = f"{mib(r.rss_after_kib)} ({r.scrapes_made:,})"
        for entra, cold, after in (
            (
                "at once",
                r.cold,
                f"{mib(r.rss_after_100_kib)} ({r.scrapes_at_rss_100}) | {after_all} | "
                f"{mib(r.hwm_kib)}",
            ),
            (f"+{ENTRA_LATENCY * 1000:.0f} ms", r.cold_entra, "| | "),
        ):
            lines.append(
                f"| {r.tenants:,} | {entra} | {r.bound:.1f} s | {cold.first_round_seconds:.1f} s | "
                f"{cold.first_round_seconds / r.bound:.2f}x | {cold.ready_seconds:.1f} s | "
                f"{cold.ready_seconds / r.bound:.2f}x | {cold.cpu_until_ready:.1f} s | "
                f"{mib(cold.rss_ready_kib)} | {after} |"
            )
    return "\n".join(lines)


def machine_facts() -> list[str]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = [
        f"{package} {importlib.metadata.version(package)}"
        for package in ("aiohttp", "msal", "prometheus-client")
    ]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "exporter"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if commit and dirty:
        commit += " plus uncommitted changes in exporter/"
    return [
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {os.cpu_count()} CPUs, {cpu}, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; {', '.join(versions)}; exporter {__version__} "
        f"(commit {commit or 'unknown'})",
    ]


def write_doc(path: Path, body: str) -> None:
    """Replace the generated block of `path`, keeping the hand-written text around it."""
    block = f"{START_MARK}\n{body}\n{END_MARK}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if START_MARK in text and END_MARK in text:
        head, rest = text.split(START_MARK, 1)
        _, tail = rest.split(END_MARK, 1)
        path.write_text(head + block + tail)
    else:
        path.write_text(text.rstrip() + f"\n\n{block}\n")


async def run(plan: Plan, log: Any) -> list[SizeResult]:
    results = []
    with tempfile.TemporaryDirectory(prefix="intune-benchmark-") as tmp:
        for tenants in plan.sizes:
            log(f"{tenants:,} tenants ...")
            result = await measure(plan, tenants, Path(tmp), log)
            result.cold_entra = await cold_start_with_entra_latency(plan, tenants, Path(tmp), log)
            results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 tenants")
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to update")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    output = args.output if args.output is not None else (None if args.quick else DOC)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    results = asyncio.run(run(plan, log))
    command = "python scripts/benchmark.py" + (" --quick" if args.quick else "")
    body = "\n".join(
        [
            "## Results",
            "",
            *machine_facts(),
            f"- Command: `{command}` (whole run: {time.monotonic() - started:.0f} s)",
            "",
            render_tables(results, plan),
        ]
    )
    print(body)
    if output is not None:
        write_doc(output, body)
        print(f"\nwrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
