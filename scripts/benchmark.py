#!/usr/bin/env python3
"""Benchmark the exporter: /metrics latency, resident memory, and one poll cycle.

    python scripts/benchmark.py            # full run (about 6 minutes), updates docs/benchmarks.md
    python scripts/benchmark.py --quick    # smaller sizes, a smoke check; writes nothing

Everything runs on loopback against the simulator (`exporter.simulator.SimulatedCloud`), which
runs in a child process of its own so that it does not compete with the exporter for the event
loop. The data path is the real one: MSAL fetches tokens from the simulated Entra ID, the Graph
client pages through the simulated Graph, the collectors parse, the store keeps the snapshot.

1. /metrics latency and 2. resident memory: the real console script
   (`intune-apple-token-exporter --config.file=...`) runs as a separate process with a generated
   config. Once /-/ready answers 200 (its first full poll round is done) its VmRSS is read from
   /proc/<pid>/status; then sequential scrapes over HTTP measure latency; VmRSS is read again.
3. Poll cycle: an in-process `Exporter` polls every tenant once (`poll_all_once`) with 100 ms of
   injected Graph latency, set beside the ideal bound requests x latency / concurrency.

Each tenant holds 3 Apple credentials: 1 ADE token, 1 VPP token and the APNs certificate ("mixed",
all three collectors run: 3 Graph requests per poll). The "3 ADE" variant holds 3 ADE tokens and
only runs the ADE collector (`collect: [ade]`: 1 Graph request per poll).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Sequence
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
from exporter.config import parse_config  # noqa: E402
from exporter.demo.simulator import SimApp, SimTenant, SimulatedCloud  # noqa: E402
from exporter.demo.tenants import _ade, _apns, _vpp  # noqa: E402 - the demo's Graph-shaped records
from exporter.service import Exporter  # noqa: E402

CLIENT_ID: Final = "7d3c1b8e-2f4a-4b6c-9e1d-5a8f0c2b7e91"
SECRET: Final = "benchmark-secret-accepted-by-the-simulator"  # not a real secret
NAMESPACE: Final = uuid.UUID("9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f")
EXPORTER_COMMAND: Final = "intune-apple-token-exporter"
DOC: Final = ROOT / "docs" / "benchmarks.md"
START_MARK: Final = "<!-- results:start (written by scripts/benchmark.py) -->"
END_MARK: Final = "<!-- results:end -->"

ACCEPT_TEXT: Final = {"Accept": "text/plain", "Accept-Encoding": "identity"}
ACCEPT_GZIP: Final = {"Accept": "text/plain", "Accept-Encoding": "gzip"}
ACCEPT_OPENMETRICS: Final = {
    "Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8",
    "Accept-Encoding": "identity",
}


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    sizes: tuple[int, ...]
    scrapes: int
    variant_sizes: tuple[int, ...]  # sizes for the 3-ADE variant
    poll_tenants: int
    concurrencies: tuple[int, ...]
    latency: float = 0.1
    warmup: int = 3
    ready_timeout: float = 300.0


FULL: Final = Plan(
    sizes=(1, 100, 1000),
    scrapes=200,
    variant_sizes=(1000,),
    poll_tenants=1000,
    concurrencies=(16, 64),
)
QUICK: Final = Plan(
    sizes=(1, 10, 100),
    scrapes=30,
    variant_sizes=(100,),
    poll_tenants=100,
    concurrencies=(16,),
    ready_timeout=60.0,
)


# --- simulated tenants ------------------------------------------------------------------------


def tenant_name(shape: str, index: int) -> str:
    """Tenant names sort in config order: `mixed-0000`, `ade3-0042`, ..."""
    return f"{shape}-{index:04d}"


def tenant_id(name: str) -> str:
    """A stable GUID per tenant name."""
    return str(uuid.uuid5(NAMESPACE, name))


def sim_tenant(shape: str, index: int, now: float, app: SimApp) -> SimTenant:
    """A simulated tenant of one shape: "mixed" (1 ADE, 1 VPP, APNs) or "ade3" (3 ADE)."""
    name = tenant_name(shape, index)
    spread = index % 300  # varied expiries, as a real fleet has
    if shape == "mixed":
        tenant = SimTenant(
            tenant_id(name),
            ade_tokens=[_ade(name, f"{name} iOS", now, expires_in_days=30 + spread)],
            vpp_tokens=[_vpp(name, f"{name} Apps", now, expires_in_days=60 + spread)],
            apns_certificate=_apns(name, now, expires_in_days=90 + spread),
        )
    else:
        tenant = SimTenant(
            tenant_id(name),
            ade_tokens=[
                _ade(name, f"{name} {kind}", now, expires_in_days=30 + spread + n)
                for n, kind in enumerate(("iOS", "Macs", "iPads"))
            ],
        )
    tenant.apps[app.client_id] = app
    return tenant


def config_document(
    shape: str,
    count: int,
    base_url: str,
    ca_file: Path,
    *,
    max_concurrency: int = 16,
    poll_interval: str = "1h",
) -> dict[str, Any]:
    """The config.yaml an operator would write for `count` simulated tenants of `shape`."""
    document: dict[str, Any] = {
        # Long enough that only the first round runs while we measure.
        "poll_interval": poll_interval,
        "request_timeout": "30s",
        "max_concurrency": max_concurrency,
        "defaults": {
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "authority_host": base_url,
            "graph_endpoint": base_url,
            "ca_file": str(ca_file),
        },
        "tenants": [
            {"name": tenant_name(shape, i), "tenant_id": tenant_id(tenant_name(shape, i))}
            for i in range(count)
        ],
    }
    if shape == "ade3":
        document["collect"] = ["ade"]
    return document


# --- the simulator, in a child process ------------------------------------------------------


def _simulator_main(conn: Connection, shapes: dict[str, int]) -> None:
    asyncio.run(_simulator_serve(conn, shapes))


async def _simulator_serve(conn: Connection, shapes: dict[str, int]) -> None:
    cloud = SimulatedCloud()
    app = SimApp(CLIENT_ID, secret=SECRET)
    now = time.time()
    for shape, count in shapes.items():
        for index in range(count):
            cloud.add_tenant(sim_tenant(shape, index, now, app))
    await cloud.start()
    conn.send((cloud.base_url, cloud.ca_pem))
    loop = asyncio.get_running_loop()
    # One worker is enough: it only ever waits on the pipe.
    with ThreadPoolExecutor(max_workers=1) as pipe_reader:
        try:
            while True:
                command, argument = await loop.run_in_executor(pipe_reader, conn.recv)
                if command == "stop":
                    break
                if command == "latency":
                    cloud.latency = float(argument)
                elif command == "reset":
                    cloud.graph_requests.clear()
                    cloud.token_requests.clear()
                conn.send(_simulator_stats(cloud))
        finally:
            await cloud.stop()


def _simulator_stats(cloud: SimulatedCloud) -> dict[str, Any]:
    graph = cloud.graph_requests
    # `at` is when the answer was ready; with a fixed injected latency the request arrived
    # `latency` earlier, which gives how many Graph requests the simulator held at once.
    events = sorted(
        [(r.at - cloud.latency, 1) for r in graph] + [(r.at, -1) for r in graph],
        key=lambda e: (e[0], e[1]),
    )
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    return {
        "graph_requests": len(graph),
        "graph_not_ok": sum(1 for r in graph if r.status != 200),
        "token_requests": len(cloud.token_requests),
        "tokens_rejected": sum(1 for r in cloud.token_requests if not r.accepted),
        "peak_in_flight": peak,
        "cpu_seconds": time.process_time(),
    }


class Simulator:
    """Handle on the simulator child process."""

    def __init__(self, shapes: dict[str, int]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_simulator_main, args=(child, shapes), name="simulator", daemon=True
        )
        self._process.start()
        child.close()
        if not self._conn.poll(120):
            raise RuntimeError("the simulator did not start within 120 s")
        self.base_url, self.ca_pem = self._conn.recv()

    def call(self, command: str, argument: object = None) -> dict[str, Any]:
        """Send a command ("latency", "reset", "stats") and return the simulator's stats."""
        self._conn.send((command, argument))
        if not self._conn.poll(60):
            raise RuntimeError(f"the simulator did not answer {command!r}")
        stats: dict[str, Any] = self._conn.recv()
        return stats

    def stop(self) -> None:
        """Stop the child: politely, then by its pid."""
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(("stop", None))
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)


# --- measuring a running exporter process ---------------------------------------------------


@dataclass
class ScrapeResult:
    """Latency of sequential scrapes of one endpoint variant."""

    label: str
    latencies: list[float]
    wire_bytes: int
    body_bytes: int
    series: int

    @property
    def median_ms(self) -> float:
        """Median latency in milliseconds."""
        return statistics.median(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        """99th percentile (nearest rank) in milliseconds."""
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] * 1000


@dataclass
class SizeResult:
    """Everything measured against one exporter process."""

    shape: str
    tenants: int
    ready_seconds: float
    ready_cpu_seconds: float  # CPU the process used until ready (start-up + first round)
    rss_idle_kib: int
    rss_warm_kib: int = 0  # after the warm-up scrapes
    rss_after_kib: int = 0  # after every scrape
    hwm_kib: int = 0
    scrapes: list[ScrapeResult] = field(default_factory=list)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int, key: str) -> int:
    """A `VmRSS`-style field of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/{pid}/status")


async def wait_for(predicate: Any, within: float, what: str, interval: float = 0.1) -> Any:
    """Poll an async predicate until it returns a truthy value or `within` seconds pass."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise TimeoutError(f"{what} within {within:g} s")


def count_series(body: bytes) -> int:
    """Sample lines of a text exposition (comment and EOF lines excluded)."""
    return sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))


async def scrape_series(
    session: aiohttp.ClientSession,
    url: str,
    label: str,
    headers: dict[str, str],
    count: int,
    warmup: int,
) -> ScrapeResult:
    """`count` sequential GETs (after `warmup` unmeasured ones); time to the last body byte."""
    latencies: list[float] = []
    body = b""
    wire = 0
    for index in range(warmup + count):
        started = time.perf_counter()
        async with session.get(url, headers=headers) as response:
            raw = await response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"GET {url} answered {response.status}")
        if index >= warmup:
            latencies.append(elapsed)
        body, wire = raw, len(raw)
    if headers.get("Accept-Encoding") == "gzip":
        import gzip

        body = gzip.decompress(body)
    return ScrapeResult(label, latencies, wire, len(body), count_series(body))


async def measure_process(
    plan: Plan,
    sim: Simulator,
    ca_file: Path,
    workdir: Path,
    shape: str,
    tenants: int,
    variants: bool,
) -> SizeResult:
    """Start the console script for `tenants` tenants, wait for ready, read RSS, scrape."""
    config_file = workdir / f"config-{shape}-{tenants}.yaml"
    document = config_document(shape, tenants, sim.base_url, ca_file)
    config_file.write_text(yaml.safe_dump(document, sort_keys=False))
    log_file = workdir / f"exporter-{shape}-{tenants}.log"
    command = [
        EXPORTER_COMMAND,
        f"--config.file={config_file}",
        "--web.listen-address=127.0.0.1:0",
        "--log.format=json",
    ]
    sim.call("reset")
    with log_file.open("w") as log:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        started = time.monotonic()

        async def listening() -> str | None:
            if process.returncode is not None:
                raise RuntimeError(f"the exporter exited ({process.returncode}); see {log_file}")
            for line in log_file.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("msg") == "listening":
                        return str(entry["address"])
            return None

        address = await wait_for(listening, 60, "the exporter did not listen")
        base = f"http://{address}"
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:

            async def ready() -> bool:
                async with session.get(f"{base}/-/ready") as response:
                    await response.read()
                    return response.status == 200

            await wait_for(ready, plan.ready_timeout, "the exporter was not ready", 0.2)
            ready_seconds = time.monotonic() - started
            stats = sim.call("stats")
            if stats["graph_not_ok"] or stats["tokens_rejected"]:
                raise RuntimeError(f"the first poll round had failures: {stats}")
            result = SizeResult(
                shape,
                tenants,
                ready_seconds,
                proc_cpu_seconds(process.pid),
                proc_status_kib(process.pid, "VmRSS"),
            )
            url = f"{base}/metrics"
            await scrape_series(session, url, "warm-up", ACCEPT_TEXT, plan.warmup, 0)
            result.rss_warm_kib = proc_status_kib(process.pid, "VmRSS")
            result.scrapes.append(
                await scrape_series(session, url, "text", ACCEPT_TEXT, plan.scrapes, plan.warmup)
            )
            if variants:
                result.scrapes.append(
                    await scrape_series(
                        session, url, "text+gzip", ACCEPT_GZIP, plan.scrapes, plan.warmup
                    )
                )
                result.scrapes.append(
                    await scrape_series(
                        session, url, "openmetrics", ACCEPT_OPENMETRICS, plan.scrapes, plan.warmup
                    )
                )
            result.rss_after_kib = proc_status_kib(process.pid, "VmRSS")
            result.hwm_kib = proc_status_kib(process.pid, "VmHWM")
            return result
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


# --- one poll cycle, in process ---------------------------------------------------------------


@dataclass
class CycleResult:
    """One `poll_all_once` round."""

    tenants: int
    concurrency: int
    round: str  # "cold" (MSAL discovery + token per tenant) or "warm" (cached tokens)
    seconds: float
    graph_requests: int
    token_requests: int
    peak_in_flight: int
    latency: float
    exporter_cpu: float  # CPU of this process, every thread, during the round
    simulator_cpu: float
    tenants_up: int

    @property
    def request_bound(self) -> float:
        """The issue's ideal bound: Graph requests x latency / concurrency."""
        return self.graph_requests * self.latency / self.concurrency

    @property
    def tenant_bound(self) -> float:
        """The schedule's floor: tenants' collectors run concurrently, so one tenant waits
        one latency (each collection fits one page), and `concurrency` tenants run at once."""
        return math.ceil(self.tenants / self.concurrency) * self.latency


async def measure_cycle(
    sim: Simulator, ca_file: Path, tenants: int, concurrency: int, latency: float
) -> list[CycleResult]:
    """A fresh exporter polls every tenant once cold, then once warm."""
    document = config_document("mixed", tenants, sim.base_url, ca_file, max_concurrency=concurrency)
    exporter = Exporter(parse_config(document, "<benchmark>"))
    results = []
    sim.call("latency", latency)
    try:
        await exporter.open()
        for round_name in ("cold", "warm"):
            before = sim.call("reset")
            cpu_started = time.process_time()
            started = time.perf_counter()
            await exporter.poll_all_once()
            seconds = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            stats = sim.call("stats")
            if stats["graph_not_ok"] or stats["tokens_rejected"]:
                raise RuntimeError(f"the poll round had failures: {stats}")
            up = sum(1 for t in exporter.store.view().tenants if t.up)
            results.append(
                CycleResult(
                    tenants=tenants,
                    concurrency=concurrency,
                    round=round_name,
                    seconds=seconds,
                    graph_requests=stats["graph_requests"],
                    token_requests=stats["token_requests"],
                    peak_in_flight=stats["peak_in_flight"],
                    latency=latency,
                    exporter_cpu=cpu,
                    simulator_cpu=stats["cpu_seconds"] - before["cpu_seconds"],
                    tenants_up=up,
                )
            )
    finally:
        await exporter.close()
        sim.call("latency", 0.0)
    return results


# --- report -----------------------------------------------------------------------------------


def mib(kib: int) -> str:
    """KiB as MiB with one decimal."""
    return f"{kib / 1024:.1f}"


def shape_label(shape: str) -> str:
    """How a tenant shape reads in the tables."""
    return "1 ADE + 1 VPP + APNs" if shape == "mixed" else "3 ADE (collect: [ade])"


def render_tables(sizes: list[SizeResult], cycles: list[CycleResult], plan: Plan) -> str:
    """The results as Markdown tables."""
    lines = [
        f"### /metrics latency ({plan.scrapes} sequential scrapes each, after {plan.warmup} "
        "warm-up scrapes)",
        "",
        "| tenants | credentials per tenant | format | series | body (wire) | median | p99 |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for size in sizes:
        for scrape in size.scrapes:
            wire = f"{scrape.body_bytes / 1024:.0f} KiB"
            if scrape.wire_bytes != scrape.body_bytes:
                wire += f" ({scrape.wire_bytes / 1024:.0f} KiB)"
            lines.append(
                f"| {size.tenants:,} | {shape_label(size.shape)} | {scrape.label} | "
                f"{scrape.series:,} | {wire} | {scrape.median_ms:.1f} ms | "
                f"{scrape.p99_ms:.1f} ms |"
            )
    lines += [
        "",
        "### Resident memory of the exporter process",
        "",
        "| tenants | credentials per tenant | ready (first round done) after | CPU until ready | "
        f"VmRSS when ready | after {plan.warmup} scrapes | after every scrape | VmHWM (peak) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        lines.append(
            f"| {size.tenants:,} | {shape_label(size.shape)} | {size.ready_seconds:.1f} s | "
            f"{size.ready_cpu_seconds:.1f} s | {mib(size.rss_idle_kib)} MiB | "
            f"{mib(size.rss_warm_kib)} MiB | {mib(size.rss_after_kib)} MiB | "
            f"{mib(size.hwm_kib)} MiB |"
        )
    if cycles:
        latency_ms = cycles[0].latency * 1000
        lines += [
            "",
            f"### One poll cycle of {cycles[0].tenants:,} tenants, {latency_ms:.0f} ms injected "
            "Graph latency",
            "",
            "| max_concurrency | round | Graph requests | token requests | measured | "
            "requests x latency / concurrency | tenant floor | peak Graph in flight | "
            "exporter CPU | simulator CPU | tenants up |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for cycle in cycles:
            lines.append(
                f"| {cycle.concurrency} | {cycle.round} | {cycle.graph_requests:,} | "
                f"{cycle.token_requests:,} | {cycle.seconds:.2f} s | "
                f"{cycle.request_bound:.2f} s | {cycle.tenant_bound:.2f} s | "
                f"{cycle.peak_in_flight} | {cycle.exporter_cpu:.1f} s | "
                f"{cycle.simulator_cpu:.1f} s | {cycle.tenants_up:,} |"
            )
    return "\n".join(lines)


def machine_facts() -> list[str]:
    """What the numbers were measured on."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = [
        f"{package} {importlib.metadata.version(package)}"
        for package in ("aiohttp", "msal", "prometheus-client", "pydantic")
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
        f"- Machine: {os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}), {cpu}, "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; {', '.join(versions)}; exporter {__version__} "
        f"(commit {commit or 'unknown'})",
    ]


def write_doc(path: Path, body: str) -> None:
    """Replace the generated block of `path`, keeping the hand-written text around it."""
    block = f"{START_MARK}\n{body}\n{END_MARK}"
    if path.exists():
        text = path.read_text()
        if START_MARK in text and END_MARK in text:
            head, rest = text.split(START_MARK, 1)
            _, tail = rest.split(END_MARK, 1)
            path.write_text(head + block + tail)
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Benchmarks\n\n{block}\n")


# --- main -------------------------------------------------------------------------------------


async def run(plan: Plan, log: Any) -> tuple[list[SizeResult], list[CycleResult]]:
    """Run every measurement of `plan`; `log` prints progress."""
    shapes = {"mixed": max(*plan.sizes, plan.poll_tenants)}
    if plan.variant_sizes:
        shapes["ade3"] = max(plan.variant_sizes)
    log(f"starting the simulator with {sum(shapes.values()):,} tenants ...")
    sim = Simulator(shapes)
    sizes: list[SizeResult] = []
    cycles: list[CycleResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="intune-benchmark-") as tmp:
            workdir = Path(tmp)
            ca_file = workdir / "simulator-ca.pem"
            ca_file.write_text(sim.ca_pem)
            largest = max(plan.sizes)
            runs = [("mixed", n) for n in plan.sizes] + [("ade3", n) for n in plan.variant_sizes]
            for shape, tenants in runs:
                log(f"exporter process, {tenants:,} tenants ({shape}) ...")
                result = await measure_process(
                    plan,
                    sim,
                    ca_file,
                    workdir,
                    shape,
                    tenants,
                    variants=shape == "mixed" and tenants == largest,
                )
                sizes.append(result)
                text = result.scrapes[0]
                log(
                    f"  ready after {result.ready_seconds:.1f} s, "
                    f"RSS {mib(result.rss_idle_kib)} -> {mib(result.rss_after_kib)} MiB, "
                    f"/metrics median {text.median_ms:.1f} ms p99 {text.p99_ms:.1f} ms"
                )
            for concurrency in plan.concurrencies:
                log(
                    f"poll cycle: {plan.poll_tenants:,} tenants, max_concurrency {concurrency}, "
                    f"{plan.latency * 1000:.0f} ms latency ..."
                )
                for cycle in await measure_cycle(
                    sim, ca_file, plan.poll_tenants, concurrency, plan.latency
                ):
                    cycles.append(cycle)
                    log(
                        f"  {cycle.round}: {cycle.seconds:.2f} s for {cycle.graph_requests:,} "
                        f"Graph requests (bound {cycle.request_bound:.2f} s, "
                        f"tenant floor {cycle.tenant_bound:.2f} s)"
                    )
    finally:
        sim.stop()
    return sizes, cycles


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run, print the tables and (full runs) update the doc."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"Markdown file to update (default: {DOC.relative_to(ROOT)} for a full run, "
        "nothing for --quick)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    output = args.output if args.output is not None else (None if args.quick else DOC)

    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    sizes, cycles = asyncio.run(run(plan, log))
    elapsed = time.monotonic() - started
    command = "python scripts/benchmark.py" + (" --quick" if args.quick else "")
    body = "\n".join(
        [
            "## Results",
            "",
            *machine_facts(),
            f"- Command: `{command}` (whole run: {elapsed:.0f} s)",
            "",
            render_tables(sizes, cycles, plan),
        ]
    )
    print(body)
    if output is not None:
        write_doc(output, body)
        print(f"\nwrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
