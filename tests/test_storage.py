"""Kept state (`--storage.path`): restarts during a Graph outage, changed configs, bad files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exporter.kinds import KINDS
from exporter.service import Exporter
from exporter.storage import FILE_NAME, StateFile, check_directory

from .conftest import FAST_RETRY, SECRET, World, exposition, samples_by_name, tenant_guid
from .graph_data import DAY, NOW, VPP_SECRET_PREFIX, ade_item, apns_item, vpp_item

ADE_EXPIRY = NOW + 40 * DAY
SERIAL = "6A1B2C3D4E5F6071"  # apns_item's certificateSerialNumber


def closed_port() -> int:
    """A loopback port nobody listens on: Graph and Entra ID 'down'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def add_contoso(world: World) -> None:
    world.add(
        "contoso",
        ade_tokens=[ade_item("Kept iPads", expires_in_days=40), ade_item("Gone Macs")],
        vpp_tokens=[vpp_item("Kept Apps")],
        apns_certificate=apns_item(),
    )


async def started(world: World, directory: Path, *, down: bool = False, **top: Any) -> Exporter:
    """An exporter with --storage.path=directory; with `down`, Entra ID and Graph unreachable."""
    config = world.config(**top)
    if down:
        dead = f"https://127.0.0.1:{closed_port()}"
        config = world.config(
            **top,
            defaults={
                "authority_host": dead,
                "graph_endpoint": dead,
                "ca_file": str(world.ca_file),
            },
        )
    exporter = Exporter(config, retry=FAST_RETRY, state_file=StateFile(directory))
    await exporter.open()
    world.exporters.append(exporter)
    return exporter


def scrape(
    exporter: Exporter, at: float | None = None
) -> dict[str, list[tuple[dict[str, str], float]]]:
    return samples_by_name(exposition(exporter, at))


def values(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **want: str
) -> list[float]:
    return [
        value
        for labels, value in samples.get(name, [])
        if all(labels.get(k) == v for k, v in want.items())
    ]


async def polled_and_kept(world: World, directory: Path) -> Exporter:
    first = await started(world, directory)
    await first.poll_all_once()
    assert first.keeper is not None
    assert await first.keeper.write_if_changed()
    return first


async def test_a_restart_while_graph_is_down_serves_the_kept_records(
    world: World, tmp_path: Path
) -> None:
    add_contoso(world)
    first = await polled_and_kept(world, tmp_path)
    kept_success = first.store.tenant("contoso").collectors["ade"].last_success_at
    assert kept_success is not None
    await first.close()

    second = await started(world, tmp_path, down=True)
    # Before any poll: the token series are there, with the kept success timestamps.
    at = NOW + 5 * DAY
    samples = scrape(second, at)
    days = values(samples, "intune_ade_token_days_to_expiry", token_name="Kept iPads")
    assert days == [pytest.approx((ADE_EXPIRY - at) / DAY, abs=1e-6)]  # keeps counting down
    assert values(
        samples, "intune_tenant_collector_last_success_timestamp_seconds", collector="ade"
    ) == [kept_success]
    assert values(samples, "intune_tenant_last_successful_poll_timestamp_seconds") == [
        first.store.tenant("contoso").last_success_at
    ]
    assert values(samples, "intune_tenant_collector_up", collector="ade") == [0.0]
    assert values(samples, "intune_tenant_up") == [0.0]
    assert values(samples, "intune_vpp_token_info", token_name="Kept Apps") == [1.0]
    # The APNs certificate is back without its serial number (never on disk).
    (apns,) = samples["intune_apns_certificate_info"]
    assert apns[0]["serial_number"] == "" and apns[0]["apple_id"] == "push@contoso.example"
    # Two ADE tokens, one VPP token, the certificate, and the two tokens' device counts.
    assert values(samples, "intune_exporter_storage_restored_records") == [6.0]
    assert not second.store.ready  # /-/ready still means "every tenant polled once"
    assert second.store.tenant("contoso").restored

    # The first poll fails (Graph down): the kept values stay, the tenant counts as polled.
    await second.poll_all_once()
    samples = scrape(second, at)
    assert len(values(samples, "intune_ade_token_info")) == 2
    assert values(samples, "intune_tenant_collector_up", collector="ade") == [0.0]
    assert second.store.ready
    assert not second.store.tenant("contoso").restored


async def test_a_restart_with_graph_up_replaces_the_kept_records(
    world: World, tmp_path: Path
) -> None:
    add_contoso(world)
    first = await polled_and_kept(world, tmp_path)
    await first.close()
    sim = world.cloud.tenants[tenant_guid("contoso")]
    sim.ade_tokens = [t for t in sim.ade_tokens if t["tokenName"] != "Gone Macs"]

    second = await started(world, tmp_path)
    assert len(values(scrape(second), "intune_ade_token_info")) == 2  # kept, before the poll
    await second.poll_all_once()
    samples = scrape(second)
    assert [labels["token_name"] for labels, _ in samples["intune_ade_token_info"]] == [
        "Kept iPads"
    ]
    (apns,) = samples["intune_apns_certificate_info"]
    assert apns[0]["serial_number"] == SERIAL
    assert values(samples, "intune_tenant_collector_up", collector="ade") == [1.0]


@pytest.mark.parametrize(
    "change",
    ["tenant removed", "tenant id changed", "cloud changed", "collector disabled"],
)
async def test_kept_state_that_no_longer_matches_the_config_is_dropped(
    world: World, tmp_path: Path, change: str
) -> None:
    add_contoso(world)
    world.add("fabrikam", ade_tokens=[ade_item("Fabrikam iPads")])
    first = await polled_and_kept(world, tmp_path)
    await first.close()

    top: dict[str, Any] = {}
    contoso = world.tenants[0]
    if change == "tenant removed":
        world.tenants.remove(contoso)
    elif change == "tenant id changed":
        contoso["tenant_id"] = tenant_guid("contoso-new")
    elif change == "cloud changed":
        contoso["cloud"] = "usgov"
    else:
        top["collect"] = ["vpp", "apns"]
    second = await started(world, tmp_path, down=True, **top)
    samples = scrape(second)
    contoso_ade = values(samples, "intune_ade_token_info", tenant="contoso")
    fabrikam_ade = values(samples, "intune_ade_token_info", tenant="fabrikam")
    assert contoso_ade == []
    if change == "collector disabled":
        assert fabrikam_ade == []  # ade is off for every tenant
        assert values(samples, "intune_vpp_token_info", tenant="contoso") == [1.0]
    else:
        assert fabrikam_ade == [1.0]  # the other tenant's kept state is untouched
    # And the next write keeps only what is served now.
    assert second.keeper is not None
    await second.poll_all_once()
    assert await second.keeper.write_if_changed()
    kept = json.loads((tmp_path / FILE_NAME).read_text())["tenants"]
    if change == "tenant removed":
        assert "contoso" not in kept
    elif change == "collector disabled":
        assert "ade" not in kept["contoso"]["collectors"]
        assert "ade" not in kept["fabrikam"]["collectors"]


async def test_the_file_holds_no_secret_and_no_serial_number(world: World, tmp_path: Path) -> None:
    add_contoso(world)
    first = await polled_and_kept(world, tmp_path)
    path = tmp_path / FILE_NAME
    text = path.read_text()
    for secret in (SECRET, VPP_SECRET_PREFIX, SERIAL, "BEGIN CERTIFICATE", "eyJ"):
        assert secret not in text, secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(text)
    assert (doc["format"], doc["version"]) == ("intune-apple-token-exporter-state", 1)
    kept = doc["tenants"]["contoso"]
    assert kept["tenant_id"] == tenant_guid("contoso") and kept["cloud"] == "global"
    assert sorted(kept["collectors"]) == ["ade", "ade_devices", "apns", "vpp"]
    assert {r["name"] for r in kept["collectors"]["ade"]["records"]} == {"Kept iPads", "Gone Macs"}
    await first.close()
    # No temporary file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([FILE_NAME, "sim-ca.pem"])


async def test_many_polls_between_two_intervals_make_one_write(
    world: World, tmp_path: Path
) -> None:
    add_contoso(world)
    exporter = await started(world, tmp_path)
    keeper = exporter.keeper
    assert keeper is not None
    assert not await keeper.write_if_changed()  # nothing polled yet: nothing to write
    for _ in range(5):
        await exporter.poll_all_once()
    assert await keeper.write_if_changed()
    assert not await keeper.write_if_changed()  # no poll since
    assert keeper.stats.writes == 1
    await exporter.poll_all_once()
    await exporter.close()  # the clean shutdown writes what changed since
    assert keeper.stats.writes == 2


async def test_the_write_interval_paces_the_writer(world: World, tmp_path: Path) -> None:
    """The writer sleeps `interval` between writes (its sleep is injected: no real waiting)."""
    add_contoso(world)
    exporter = await started(world, tmp_path)
    keeper = exporter.keeper
    assert keeper is not None
    slept: list[float] = []
    rounds = 0

    async def sleep(seconds: float) -> None:
        nonlocal rounds
        slept.append(seconds)
        rounds += 1
        if rounds == 1:
            await exporter.poll_all_once()  # a change during the first interval
        if rounds == 3:
            raise asyncio.CancelledError

    keeper.sleep = sleep
    keeper.interval = 45.0
    with pytest.raises(asyncio.CancelledError):
        await keeper.run()
    assert slept == [45.0, 45.0, 45.0]
    assert keeper.stats.writes == 1  # written after the first interval, nothing new after it


BAD_FILES = {
    "corrupt": "{not json",
    "truncated": '{"format": "intune-apple-token-exporter-state", "version": 1, "tenants": {"co',
    "empty": "",
    "unknown version": json.dumps(
        {"format": "intune-apple-token-exporter-state", "version": 99, "tenants": {}}
    ),
    "not ours": json.dumps({"groups": []}),
    "bad record": json.dumps(
        {
            "format": "intune-apple-token-exporter-state",
            "version": 1,
            "tenants": {
                "contoso": {
                    "tenant_id": tenant_guid("contoso"),
                    "cloud": "global",
                    "last_success_at": NOW,
                    "collectors": {
                        "ade": {"last_success_at": NOW, "records": [{"id": "x", "name": 3}]}
                    },
                }
            },
        }
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
async def test_an_unusable_file_is_moved_aside_and_the_exporter_starts_empty(
    world: World, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    add_contoso(world)
    (tmp_path / FILE_NAME).write_text(BAD_FILES[kind])
    with caplog.at_level(logging.WARNING):
        exporter = await started(world, tmp_path)
    assert values(scrape(exporter), "intune_ade_token_info") == []
    assert values(scrape(exporter), "intune_exporter_storage_restored_records") == [0.0]
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith(f"{FILE_NAME}.corrupt-")]
    assert len(aside) == 1
    assert (tmp_path / aside[0]).read_text() == BAD_FILES[kind]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(tmp_path / FILE_NAME) in warning and "starting without kept state" in warning
    # And it keeps working: the next write makes a good file.
    await exporter.poll_all_once()
    assert exporter.keeper is not None and await exporter.keeper.write_if_changed()
    assert json.loads((tmp_path / FILE_NAME).read_text())["version"] == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
async def test_an_unreadable_file_is_set_aside(world: World, tmp_path: Path) -> None:
    add_contoso(world)
    path = tmp_path / FILE_NAME
    path.write_text("{}")
    path.chmod(0)
    exporter = await started(world, tmp_path)
    assert values(scrape(exporter), "intune_ade_token_info") == []
    assert any(p.name.startswith(f"{FILE_NAME}.corrupt-") for p in tmp_path.iterdir())


def test_an_unreadable_file_as_root_is_reported_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Root reads any mode; a directory in the file's place cannot be read by anyone."""
    (tmp_path / FILE_NAME).mkdir()
    with caplog.at_level(logging.WARNING):
        assert StateFile(tmp_path, KINDS).load() == {}
    assert "cannot be read" in caplog.text
    assert any(p.name.startswith(f"{FILE_NAME}.corrupt-") for p in tmp_path.iterdir())


async def test_a_failing_write_is_counted_and_retried(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_contoso(world)
    directory = tmp_path / "state"
    directory.mkdir()
    exporter = await started(world, directory)
    keeper = exporter.keeper
    assert keeper is not None
    await exporter.poll_all_once()
    # The disk goes away under the exporter (a read-only remount, a full disk).
    broken = directory.rename(tmp_path / "moved")
    with caplog.at_level(logging.WARNING):
        assert not await keeper.write_if_changed()
        assert not await keeper.write_if_changed()  # retried at the next interval
    assert keeper.stats.write_errors == 2
    assert "cannot write kept state" in caplog.text and "retrying" in caplog.text
    samples = scrape(exporter)
    assert values(samples, "intune_exporter_storage_write_errors_total") == [2.0]
    assert values(samples, "intune_ade_token_info")  # polling and scrapes carry on
    broken.rename(directory)
    assert await keeper.write_if_changed()
    assert values(scrape(exporter), "intune_exporter_storage_last_write_timestamp_seconds")


def test_the_directory_must_exist_and_be_writable(tmp_path: Path) -> None:
    assert check_directory(tmp_path) is None
    assert check_directory(tmp_path / "absent") == f"{str(tmp_path / 'absent')!r} does not exist"
    (tmp_path / "file").write_text("")
    assert check_directory(tmp_path / "file") == f"{str(tmp_path / 'file')!r} is not a directory"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--storage.path={absent}"], "--storage.path: '{absent}' does not exist"),
        (["--storage.path={tmp}", "--storage.write-interval=soon"], "--storage.write-interval:"),
    ],
)
def test_bad_storage_flags_exit_2_naming_the_flag(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "tenants:\n  - name: a\n    tenant_id: 11111111-1111-1111-1111-111111111111\n"
        "    client_id: 11111111-1111-1111-1111-111111111111\n    client_secret: x\n"
    )
    names = {"absent": str(tmp_path / "absent"), "tmp": str(tmp_path)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            f"--config.file={config}",
            "--check-config",
            *(flag.format(**names) for flag in flags),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message.format(**names) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any directory")
def test_a_read_only_directory_exits_2(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        assert check_directory(tmp_path) == f"{str(tmp_path)!r} is not writable"
    finally:
        tmp_path.chmod(0o700)


def test_the_real_process_keeps_state_across_a_restart(tmp_path: Path) -> None:
    """`--demo --storage.path`: SIGTERM writes the file; the next start serves it at once."""
    from .e2e_support import _LISTENING_RE, Process, http_get, wait_for

    state = tmp_path / "state"
    state.mkdir()

    def run(log: str) -> Process:
        process = Process(
            "exporter",
            [
                sys.executable,
                "-m",
                "exporter",
                "--demo",
                "--web.listen-address=127.0.0.1:0",
                f"--storage.path={state}",
            ],
            tmp_path / log,
        )
        match = wait_for("listening", lambda: _LISTENING_RE.search(process.log()), 30.0, [process])
        base = f"http://127.0.0.1:{match.group(1)}"
        wait_for("/-/ready", lambda: http_get(f"{base}/-/ready")[0] == 200, 30.0, [process])
        scraped.append(samples_by_name(http_get(f"{base}/metrics")[1]))
        return process

    scraped: list[dict[str, list[tuple[dict[str, str], float]]]] = []

    first = run("first.log")
    try:
        assert scraped[0]["intune_exporter_storage_restored_records"] == [({}, 0.0)]  # first
        assert scraped[0]["intune_exporter_storage_write_errors_total"] == [({}, 0.0)]
    finally:
        first.stop()  # also when an assertion fails: no exporter left running after the test
    assert first.popen.returncode == 0
    doc = json.loads((state / FILE_NAME).read_text())
    assert {"contoso", "fabrikam", "northwind", "woodgrove"} <= set(doc["tenants"])
    assert "tailspin" not in doc["tenants"]  # never polled successfully: nothing to keep
    # GDAP customers are kept too, and restored once discovery lists them again.
    assert {"Alpine Ski House", "Litware Inc"} <= set(doc["tenants"])
    assert "Adatum Corporation" not in doc["tenants"]

    second = run("second.log")
    try:
        kept = sum(
            len(c["records"]) for t in doc["tenants"].values() for c in t["collectors"].values()
        )
        assert scraped[1]["intune_exporter_storage_restored_records"] == [({}, float(kept))]
        assert "intune_exporter_storage_last_write_timestamp_seconds" not in scraped[1]
    finally:
        second.stop()
    log = second.log()
    assert "kept state read: serving its records until each tenant's first poll" in log
    assert "tenants=4" in log
