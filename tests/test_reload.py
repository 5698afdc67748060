"""Config reload: as a difference, validated first, over HTTP and by SIGHUP."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from exporter.reload import Reloader
from exporter.server import build_app, start_site
from exporter.service import Exporter

from .conftest import FAST_RETRY, SECRET, World, exposition, samples_by_name, tenant_guid
from .graph_data import ade_item


def document(world: World, **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "request_timeout": 5,
        "collect": ["ade"],
        "defaults": {
            "authority_host": world.cloud.base_url,
            "graph_endpoint": world.cloud.base_url,
            "ca_file": str(world.ca_file),
        },
        "tenants": [dict(t) for t in world.tenants],
    }
    doc.update(top)
    return doc


def write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc))


async def polled(exporter: Exporter, name: str, collector: str | None = None) -> None:
    """Wait (on the store's own notifications, not a timer) until `name` has been polled (and,
    given `collector`, that collector has succeeded: a tenant polled before a reload counts as
    polled already)."""
    done = asyncio.Event()

    def changed(tenant: str, state: object) -> None:
        if not exporter.store.has(name) or not exporter.store.tenant(name).polled:
            return
        states = exporter.store.tenant(name).collectors
        if collector is None or (collector in states and states[collector].up):
            done.set()

    exporter.store.subscribe(changed)
    await asyncio.wait_for(done.wait(), 30)


def requests_of(world: World, name: str) -> tuple[int, int]:
    tenant_id = tenant_guid(name)
    graph = len(world.cloud.requests_for(tenant_id))
    tokens = sum(1 for r in world.cloud.token_requests if r.tenant_id == tenant_id)
    return graph, tokens


def tenant_names(exporter: Exporter) -> set[str]:
    samples = samples_by_name(exposition(exporter))
    return {labels["tenant"] for labels, _ in samples["intune_tenant_info"]}


@pytest.fixture
async def running(world: World, tmp_path: Path) -> AsyncIterator[tuple[Exporter, Path, str]]:
    """contoso, fabrikam and tailspin polled once, then polling on their 10m slots; the config
    file; the base URL of the exporter's HTTP side with the lifecycle API on."""
    for name in ("contoso", "fabrikam", "tailspin"):
        world.add(name, ade_tokens=[ade_item(f"{name} iPads")])
    path = tmp_path / "config.yaml"
    write(path, document(world))
    from exporter.config import load_config

    exporter = Exporter(load_config(path), retry=FAST_RETRY)
    world.exporters.append(exporter)
    reloader = Reloader(str(path), exporter)
    app = build_app(
        exporter.store,
        exporter.lines,
        exporter_samples=exporter.exporter_samples,
        reload=reloader.reload,
        lifecycle=True,
    )
    runner, port = await start_site(app, "127.0.0.1", 0)
    await exporter.start()
    for name in ("contoso", "fabrikam", "tailspin"):
        await polled(exporter, name)
    try:
        yield exporter, path, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_reload_applies_the_difference_and_costs_unchanged_tenants_nothing(
    world: World, running: tuple[Exporter, Path, str]
) -> None:
    exporter, path, base = running
    world.add("northwind", ade_tokens=[ade_item("northwind iPads")])
    doc = document(world)
    doc["tenants"] = [t for t in doc["tenants"] if t["name"] != "tailspin"]  # removed
    (fabrikam,) = [t for t in doc["tenants"] if t["name"] == "fabrikam"]
    fabrikam["collect"] = ["ade", "apns"]  # changed: new clients, polled at once
    (contoso,) = [t for t in doc["tenants"] if t["name"] == "contoso"]
    contoso["thresholds"] = {"expiry_warning": "60d"}  # changed, but not its clients
    write(path, doc)
    contoso_before, fabrikam_before = requests_of(world, "contoso"), requests_of(world, "fabrikam")
    fabrikam_kept = exporter.store.tenant("fabrikam").collectors["ade"].records

    async with aiohttp.ClientSession() as http, http.post(f"{base}/-/reload") as response:
        assert response.status == 200
        assert await response.text() == "config reloaded\n"

    # Fabrikam keeps its last good ADE values until its new clients' poll lands.
    assert exporter.store.tenant("fabrikam").collectors["ade"].records == fabrikam_kept
    await polled(exporter, "northwind")
    await polled(exporter, "fabrikam", "apns")  # its new clients' first poll
    assert tenant_names(exporter) == {"contoso", "fabrikam", "northwind"}
    samples = samples_by_name(exposition(exporter))
    assert not [s for s in samples["intune_tenant_polls_total"] if s[0]["tenant"] == "tailspin"]
    assert {
        labels["collector"]
        for labels, _ in samples["intune_tenant_collector_up"]
        if labels["tenant"] == "fabrikam"
    } == {"ade", "apns"}
    thresholds = {
        labels["threshold"]: value
        for labels, value in samples["intune_tenant_threshold_seconds"]
        if labels["tenant"] == "contoso"
    }
    assert thresholds["expiry_warning"] == 60 * 86400
    # contoso's clients, token cache and slot were kept: no request at all because of it.
    assert requests_of(world, "contoso") == contoso_before
    assert requests_of(world, "fabrikam")[0] > fabrikam_before[0]
    reload_ok = samples["intune_exporter_config_last_reload_successful"]
    assert reload_ok == [({}, 1.0)]
    assert exporter.store.ready  # a new tenant does not turn the exporter unready


async def test_an_invalid_config_is_refused_and_the_old_one_keeps_serving(
    world: World, running: tuple[Exporter, Path, str]
) -> None:
    exporter, path, base = running
    doc = document(world)
    doc["tenants"][0]["tenant_id"] = "not-a-guid"
    doc["tenants"][1]["client_secret"] = "another-Secret-9x"
    write(path, doc)
    loaded_at = exporter.reload_status[1]
    async with aiohttp.ClientSession() as http, http.post(f"{base}/-/reload") as response:
        assert response.status == 500
        text = await response.text()
    assert f"{path}: tenants[contoso].tenant_id: 'not-a-guid' is not a GUID" in text
    assert "another-Secret-9x" not in text and SECRET not in text
    assert tenant_names(exporter) == {"contoso", "fabrikam", "tailspin"}
    samples = samples_by_name(exposition(exporter))
    assert samples["intune_exporter_config_last_reload_successful"] == [({}, 0.0)]
    assert samples["intune_exporter_config_last_reload_success_timestamp_seconds"] == [
        ({}, loaded_at)
    ]


async def test_reload_over_http_needs_the_lifecycle_flag_and_post(world: World) -> None:
    world.add("contoso", ade_tokens=[])
    exporter = await world.exporter(collect=["ade"])
    app = build_app(
        exporter.store, exporter.lines, reload=lambda: asyncio.sleep(0), lifecycle=False
    )
    runner, port = await start_site(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/-/reload") as response:
                assert response.status == 403
                assert await response.text() == "Lifecycle API is not enabled.\n"
            async with http.get(f"http://127.0.0.1:{port}/-/reload") as response:
                assert response.status == 405
    finally:
        await runner.cleanup()


async def test_a_secret_from_the_environment_is_read_again_at_reload(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.add("contoso", ade_tokens=[ade_item("contoso iPads")])
    doc = document(world)
    doc["tenants"][0]["client_secret"] = "${CONTOSO_SECRET}"
    path = tmp_path / "config.yaml"
    write(path, doc)
    monkeypatch.setenv("CONTOSO_SECRET", "wrong-secret-Qq1")
    from exporter.config import load_config

    exporter = Exporter(load_config(path), retry=FAST_RETRY)
    world.exporters.append(exporter)
    await exporter.poll_all_once()
    assert not exporter.store.tenant("contoso").up  # Entra refuses the wrong secret
    monkeypatch.setenv("CONTOSO_SECRET", SECRET)
    assert await Reloader(str(path), exporter).reload() is None
    await exporter.poll_all_once()
    assert exporter.store.tenant("contoso").up


async def test_auto_reload_applies_a_changed_file(
    world: World, running: tuple[Exporter, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher reloads when the content changed, not on every tick (its sleep is faked)."""
    exporter, path, _ = running
    reloader = Reloader(str(path), exporter)
    ticks = 0
    real_sleep = asyncio.sleep

    async def tick(seconds: float) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 2:
            doc = document(world)
            doc["tenants"] = doc["tenants"][:1]
            write(path, doc)
        if ticks == 4:
            raise asyncio.CancelledError
        await real_sleep(0)

    reloads = 0
    original = reloader.reload

    async def counting() -> str | None:
        nonlocal reloads
        reloads += 1
        return await original()

    monkeypatch.setattr(reloader, "reload", counting)
    monkeypatch.setattr("exporter.reload.asyncio.sleep", tick)
    with pytest.raises(asyncio.CancelledError):
        await reloader.watch(60)
    assert reloads == 1
    assert tenant_names(exporter) == {"contoso"}


def kubelet_swap(mount: Path, doc: dict[str, Any], version: int) -> None:
    """Update a ConfigMap volume as the kubelet's atomic writer does: the new files in a fresh
    `..<timestamp>` directory, then the `..data` symlink swapped to it in one rename; the key
    itself is a symlink to `..data/config.yaml` and never changes."""
    fresh = mount / f"..2026_12_03_12_00_0{version}.000000001"
    fresh.mkdir()
    write(fresh / "config.yaml", doc)
    (mount / "..data_tmp").symlink_to(fresh.name)
    (mount / "..data_tmp").replace(mount / "..data")
    if not (mount / "config.yaml").is_symlink():
        (mount / "config.yaml").symlink_to("..data/config.yaml")


async def test_auto_reload_sees_a_configmap_directory_mount_change(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/kubernetes/overlays/auto-reload mounts the ConfigMap as a directory (no subPath):
    the watcher follows the kubelet's symlink swap."""
    world.add("contoso", ade_tokens=[ade_item("contoso iPads")])
    world.add("fabrikam", ade_tokens=[ade_item("fabrikam iPads")])
    mount = tmp_path / "config"
    mount.mkdir()
    kubelet_swap(mount, document(world), 1)
    from exporter.config import load_config

    exporter = Exporter(load_config(mount / "config.yaml"), retry=FAST_RETRY)
    world.exporters.append(exporter)
    await exporter.start()
    reloader = Reloader(str(mount / "config.yaml"), exporter)
    real_sleep, ticks = asyncio.sleep, 0

    async def tick(seconds: float) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 2:
            doc = document(world)
            doc["tenants"] = doc["tenants"][1:]
            kubelet_swap(mount, doc, 2)
        if ticks == 3:
            raise asyncio.CancelledError
        await real_sleep(0)

    monkeypatch.setattr("exporter.reload.asyncio.sleep", tick)
    with pytest.raises(asyncio.CancelledError):
        await reloader.watch(30)
    assert tenant_names(exporter) == {"fabrikam"}


async def test_sighup_reloads_the_real_process(world: World, tmp_path: Path) -> None:
    """The console script reloads on SIGHUP: a tenant added to the file appears in /metrics.
    The waits run in a thread: the simulated cloud answers on this test's event loop."""
    from .e2e_support import _LISTENING_RE, Process, http_get, wait_for

    world.add("contoso", ade_tokens=[ade_item("contoso iPads")])
    path = tmp_path / "config.yaml"
    write(path, document(world))
    argv = [sys.executable, "-m", "exporter", f"--config.file={path}"]
    process = Process("exporter", [*argv, "--web.listen-address=127.0.0.1:0"], tmp_path / "log")
    try:
        match = await asyncio.to_thread(
            wait_for, "listening", lambda: _LISTENING_RE.search(process.log()), 30, [process]
        )
        assert match is not None
        metrics = f"http://127.0.0.1:{match.group(1)}/metrics"
        world.add("fabrikam", ade_tokens=[ade_item("fabrikam iPads")])
        write(path, document(world))
        os.kill(process.popen.pid, signal.SIGHUP)
        await asyncio.to_thread(
            wait_for,
            "fabrikam polled, in /metrics, after SIGHUP",
            lambda: 'intune_tenant_up{tenant="fabrikam"} 1.0' in http_get(metrics)[1],
            30,
            [process],
        )
        assert "config reloaded" in process.log()
    finally:
        process.stop()
