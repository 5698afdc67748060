"""The `ade_devices` collector against the simulated Graph over TLS: each ADE token's imported
devices and default enrollment profiles, counted per token, platform and state."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from exporter.demo.simulator import (
    ADE_PATH,
    INTUNE_FORBIDDEN_MESSAGE,
    Fault,
    devices_path,
    graph_error_body,
    intune_nested_message,
)
from exporter.kinds import KINDS
from exporter.kinds.ade_devices import KNOWN_STATES, AdeTokenDevices, count_devices, wait_text
from exporter.service import Exporter
from exporter.storage import StateFile

from .conftest import World, exposition, one, samples_by_name, status_page
from .graph_data import DAY, NOW, SERIAL_PREFIX, ade_item, device_item, profile

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(exporter: Exporter) -> Samples:
    return samples_by_name(exposition(exporter, time.time()))


def values(samples: Samples, name: str, **labels: str) -> dict[tuple[str, ...], float]:
    """{(platform, enrollment_state…): value} of the samples of `name` matching `labels`."""
    found = {}
    for sample_labels, value in samples.get(name, []):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            rest = tuple(
                sample_labels[key]
                for key in ("platform", "enrollment_state", "profile_id", "profile_name")
                if key in sample_labels
            )
            found[rest] = value
    return found


def devices(prefix: str, count: int, **fields: Any) -> list[dict[str, Any]]:
    return [device_item(f"{prefix}{n:05d}", **fields) for n in range(count)]


def token_id(name: str) -> str:
    token: str = ade_item(name)["id"]
    return token


async def test_counts_by_platform_and_state_over_several_pages(world: World) -> None:
    ipads = ade_item("Contoso iPads")
    items = (
        devices("enrolled-ios-", 11)
        + devices("waiting-ios-", 4, state="notContacted")
        + devices("failed-ios-", 3, state="failed")
        + devices("reset-ios-", 2, state="pendingReset")
        + devices("mac-", 5, platform="macOS", state="enrolled")
        + devices("mac-blocked-", 1, platform="macOS", state="blocked")
    )
    sim = world.add(
        "contoso",
        ade_tokens=[ipads],
        devices={ipads["id"]: items},
        device_page_size=7,
    )
    exporter = await world.exporter(collect=["ade_devices"])

    await exporter.poll_all_once()

    requests = world.cloud.requests_for(sim.tenant_id, devices_path(ipads["id"]))
    assert len(requests) == 4  # 26 devices, 7 a page
    assert all(r.status == 200 for r in requests)
    selected = requests[0].query["$select"].split(",")
    assert "serialNumber" not in selected and "enrollmentState" in selected
    (listing,) = world.cloud.requests_for(sim.tenant_id, ADE_PATH)
    assert listing.query["$select"] == "id,tokenName"
    (token,) = world.cloud.requests_for(sim.tenant_id, f"{ADE_PATH}/{ipads['id']}")
    assert token.query["$expand"] == (
        "defaultIosEnrollmentProfile,defaultMacOsEnrollmentProfile,"
        "defaultTvOSEnrollmentProfile,defaultVisionOSEnrollmentProfile"
    )
    samples = scrape(exporter)
    counts = values(samples, "intune_ade_devices", token_name="Contoso iPads")
    expected = {("ios", state): 0.0 for state in KNOWN_STATES} | {
        ("macos", state): 0.0 for state in KNOWN_STATES
    }
    expected |= {
        ("ios", "enrolled"): 11.0,
        ("ios", "notContacted"): 4.0,
        ("ios", "failed"): 3.0,
        ("ios", "pendingReset"): 2.0,
        ("macos", "enrolled"): 5.0,
        ("macos", "blocked"): 1.0,
    }
    assert counts == expected
    labels = next(
        labels for labels, _ in samples["intune_ade_devices"] if labels["platform"] == "macos"
    )
    assert labels["tenant"] == "contoso" and labels["token_id"] == ipads["id"]
    assert one(samples, "intune_tenant_collector_up", tenant="contoso", collector="ade_devices")
    assert one(samples, "intune_graph_requests_total", tenant="contoso", code="200") == 6.0


async def test_unknown_enum_values_are_kept_and_platforms_lower_cased(world: World) -> None:
    token = ade_item("T")
    items = [
        device_item("a", platform="visionOS", state="enrolled"),
        device_item("b", platform="unknownFutureValue", state="enrolled"),
        device_item("c", platform="ios", state="awaitingActivation", profile_id=None),
        device_item("d", platform=None, state=None),
        device_item("e", platform="tvos", state="enrolled"),
    ]
    world.add("contoso", ade_tokens=[token], devices={token["id"]: items})
    exporter = await world.exporter(collect=["ade_devices"])

    await exporter.poll_all_once()

    counts = values(scrape(exporter), "intune_ade_devices", token_name="T")
    assert {platform for platform, _ in counts} == {
        "visionos",
        "unknownfuturevalue",
        "ios",
        "unknown",
        "tvos",
    }
    assert counts[("visionos", "enrolled")] == 1.0
    assert counts[("unknownfuturevalue", "enrolled")] == 1.0
    assert counts[("tvos", "enrolled")] == 1.0
    # A state Graph adds later is kept as it comes, next to every known state (at 0).
    assert counts[("ios", "awaitingActivation")] == 1.0
    assert {s for p, s in counts if p == "ios"} == {*KNOWN_STATES, "awaitingActivation"}
    assert ("visionos", "awaitingActivation") not in counts
    # No platform and no state: unknown.
    assert counts[("unknown", "unknown")] == 1.0


async def test_deleted_devices_and_the_without_profile_rule(world: World) -> None:
    token = ade_item("T")
    items = [
        # Waiting without a profile: counted.
        device_item("w1", state="notContacted", profile_id=None),
        device_item("w2", state="failed", profile_id=""),
        device_item("w3", state="unknown", profile_id=None),
        # Enrolled without a profile: set up long ago, nothing waits; not counted.
        device_item("e1", state="enrolled", profile_id=None),
        device_item("e2", state="enrolled", profile_id=""),
        # Not enrolled, but with a profile: it gets its setup; not counted.
        device_item("p1", state="notContacted", profile_id="profile-ios"),
        # Released in Apple Business Manager: counted as deleted only.
        device_item("d1", state="notContacted", profile_id=None, deleted=True),
        device_item("d2", state="enrolled", deleted=True),
        device_item("d3", platform="macOS", state="notContacted", profile_id=None, deleted=True),
    ]
    world.add("contoso", ade_tokens=[token], devices={token["id"]: items})
    exporter = await world.exporter(collect=["ade_devices"])

    await exporter.poll_all_once()

    samples = scrape(exporter)
    assert values(samples, "intune_ade_devices_without_profile", token_name="T") == {
        ("ios",): 3.0,
        ("macos",): 0.0,
    }
    assert values(samples, "intune_ade_devices_deleted_in_apple", token_name="T") == {
        ("ios",): 2.0,
        ("macos",): 1.0,
    }
    counts = values(samples, "intune_ade_devices", token_name="T")
    assert counts[("ios", "enrolled")] == 2.0
    assert counts[("ios", "notContacted")] == 2.0
    assert counts[("ios", "failed")] == 1.0
    assert sum(v for (p, _), v in counts.items() if p == "ios") == 6.0
    # A platform with deleted devices only keeps its series, at 0.
    assert sum(v for (p, _), v in counts.items() if p == "macos") == 0.0
    assert "intune_ade_devices_without_profile_oldest_timestamp_seconds" in samples


async def test_the_oldest_device_without_a_profile(world: World) -> None:
    token = ade_item("T")
    items = [
        device_item("young", state="notContacted", profile_id=None, created_ago=2 * DAY),
        device_item("old", state="failed", profile_id=None, created_ago=5 * DAY),
        # Older still, but not waiting: enrolled, deleted or with a profile.
        device_item("e", state="enrolled", profile_id=None, created_ago=50 * DAY),
        device_item("d", state="notContacted", profile_id=None, deleted=True, created_ago=60 * DAY),
        device_item("p", state="notContacted", created_ago=70 * DAY),
        # Waiting, but Graph did not say since when: counted, not aged, and incomplete.
        device_item("x", state="notContacted", profile_id=None, created_ago=None),
        device_item("mac", platform="macOS", state="enrolled", created_ago=90 * DAY),
    ]
    world.add("contoso", ade_tokens=[token], devices={token["id"]: items})
    exporter = await world.exporter(collect=["ade_devices"])

    await exporter.poll_all_once()

    samples = scrape(exporter)
    oldest = values(
        samples, "intune_ade_devices_without_profile_oldest_timestamp_seconds", token_name="T"
    )
    assert list(oldest) == [("ios",)]  # absent for macOS: none waits there
    assert oldest[("ios",)] == pytest.approx(NOW - 5 * DAY, abs=1e-3)
    assert values(samples, "intune_ade_devices_without_profile", token_name="T") == {
        ("ios",): 3.0,
        ("macos",): 0.0,
    }
    assert (
        one(samples, "intune_tenant_incomplete_records", tenant="contoso", collector="ade_devices")
        == 1.0
    )


async def test_default_profiles_present_null_and_missing(world: World) -> None:
    with_defaults = ade_item("With defaults")
    without = ade_item("Null defaults")
    missing = ade_item("Missing navigations")
    sim = world.add(
        "contoso",
        ade_tokens=[with_defaults, without, missing],
        devices={with_defaults["id"]: [device_item("a")]},
        default_profiles={
            with_defaults["id"]: {
                "ios": profile("Contoso iPhone"),
                "macos": profile("Contoso Mac"),
                "tvos": None,
            },
        },
    )
    # A token Graph sends without the navigations at all (as if $expand were ignored).
    world.cloud.fail_next(
        sim.tenant_id,
        f"{ADE_PATH}/{missing['id']}",
        Fault(200, body={"id": missing["id"], "tokenName": "Missing navigations"}),
    )
    exporter = await world.exporter(collect=["ade_devices"])

    await exporter.poll_all_once()

    samples = scrape(exporter)
    name = "intune_ade_token_default_profile"
    assert values(samples, name, token_name="With defaults") == {
        ("ios",): 1.0,
        ("macos",): 1.0,
        ("tvos",): 0.0,
        ("visionos",): 0.0,
    }
    for token in ("Null defaults", "Missing navigations"):
        assert values(samples, name, token_name=token) == {
            (p,): 0.0 for p in ("ios", "macos", "tvos", "visionos")
        }
    info = values(samples, "intune_ade_token_default_profile_info", token_name="With defaults")
    assert info == {
        ("ios", profile("Contoso iPhone")["id"], "Contoso iPhone"): 1.0,
        ("macos", profile("Contoso Mac")["id"], "Contoso Mac"): 1.0,
    }
    assert not values(samples, "intune_ade_token_default_profile_info", token_name="Null defaults")
    # A token without devices has no device series, but its defaults are still there.
    assert not values(samples, "intune_ade_devices", token_name="Null defaults")


@pytest.mark.parametrize(
    ("status", "code", "message", "reason"),
    [
        (403, "Forbidden", intune_nested_message(INTUNE_FORBIDDEN_MESSAGE), "forbidden"),
        (404, "ResourceNotFound", intune_nested_message("Resource not found"), "not_found"),
    ],
    ids=["403", "404"],
)
async def test_an_error_on_one_tokens_devices_fails_ade_devices_of_that_tenant_only(
    world: World, status: int, code: str, message: str, reason: str
) -> None:
    first, second = ade_item("First"), ade_item("Second")
    broken = world.add(
        "contoso",
        ade_tokens=[first, second],
        devices={first["id"]: [device_item("a")], second["id"]: [device_item("b")]},
    )
    other = ade_item("Other")
    world.add("fabrikam", ade_tokens=[other], devices={other["id"]: [device_item("c")]})
    # Every poll runs ade_devices here (not hourly), so the second poll reads the devices again.
    exporter = await world.exporter(
        collect=["ade", "ade_devices"],
        poll_interval="10m",
        collector_intervals={"ade_devices": "10m"},
    )
    await exporter.poll_all_once()
    before = values(scrape(exporter), "intune_ade_devices", tenant="contoso")

    world.cloud.fail_next(
        broken.tenant_id,
        devices_path(second["id"]),
        Fault(status, body=graph_error_body(code, message)),
    )
    await exporter.poll_all_once()

    samples = scrape(exporter)
    collector_up = "intune_tenant_collector_up"
    assert one(samples, collector_up, tenant="contoso", collector="ade_devices") == 0.0
    assert one(samples, collector_up, tenant="contoso", collector="ade") == 1.0
    assert one(samples, collector_up, tenant="fabrikam", collector="ade_devices") == 1.0
    errors = "intune_tenant_poll_errors_total"
    assert one(samples, errors, tenant="contoso", collector="ade_devices", reason=reason) == 1.0
    assert all(
        value == 0.0
        for labels, value in samples[errors]
        if labels["collector"] == "ade" or labels["tenant"] == "fabrikam"
    )
    error = exporter.store.tenant("contoso").collectors["ade_devices"].last_error
    assert error is not None and error.reason == reason
    # The ADE token metrics are untouched, and the last good device counts stay.
    ade_tokens = [x for x, _ in samples["intune_ade_token_info"] if x["tenant"] == "contoso"]
    assert len(ade_tokens) == 2
    assert values(samples, "intune_ade_devices", tenant="contoso") == before
    assert values(samples, "intune_ade_devices", tenant="fabrikam")[("ios", "enrolled")] == 1.0


async def test_an_ade_failure_never_touches_ade_devices(world: World) -> None:
    token = ade_item("T")
    sim = world.add("contoso", ade_tokens=[token], devices={token["id"]: [device_item("a")]})
    # Only the `ade` collector's request (it selects the expiry) fails.
    world.cloud.fail_next(
        sim.tenant_id,
        ADE_PATH,
        Fault(500, when=lambda query: "tokenExpirationDateTime" in query.get("$select", "")),
    )
    exporter = await world.exporter(collect=["ade", "ade_devices"])

    await exporter.poll_all_once()

    samples = scrape(exporter)
    collector_up = "intune_tenant_collector_up"
    assert one(samples, collector_up, tenant="contoso", collector="ade") == 0.0
    assert one(samples, collector_up, tenant="contoso", collector="ade_devices") == 1.0
    assert values(samples, "intune_ade_devices", token_name="T")[("ios", "enrolled")] == 1.0
    assert "intune_ade_token_info" not in samples


async def test_ade_devices_runs_hourly_by_default_and_keeps_its_values(world: World) -> None:
    token = ade_item("T")
    sim = world.add(
        "contoso",
        ade_tokens=[token],
        devices={token["id"]: [device_item("a", state="notContacted", profile_id=None)]},
    )
    exporter = await world.exporter(collect=["ade", "ade_devices"], poll_interval="10m")
    poller = exporter._scheduler.poller("contoso")
    assert poller is not None
    now = [1000.0]
    poller._clock = lambda: now[0]
    path = devices_path(token["id"])

    await exporter.poll_all_once()
    first_success = exporter.store.tenant("contoso").collectors["ade_devices"].last_success_at
    sim.devices[token["id"]] = devices("more-", 3, state="notContacted", profile_id=None)
    for _ in range(5):  # the next five polls, ten minutes apart: not due
        now[0] += 600
        await exporter.poll_all_once()

    assert len(world.cloud.requests_for(sim.tenant_id, path)) == 1
    assert len(world.cloud.requests_for(sim.tenant_id, ADE_PATH)) == 1 + 6  # ade ran every poll
    samples = scrape(exporter)
    name = "intune_ade_devices_without_profile"
    assert one(samples, name, token_name="T", platform="ios") == 1.0  # kept
    state = exporter.store.tenant("contoso")
    # Its health does not flip while it is skipped: still up, still its first success.
    assert state.collectors["ade_devices"].up and state.up
    assert state.collectors["ade_devices"].last_success_at == first_success
    interval = "intune_tenant_collector_interval_seconds"
    assert one(samples, interval, tenant="contoso", collector="ade_devices") == 3600.0
    assert one(samples, interval, tenant="contoso", collector="ade") == 600.0

    now[0] += 600  # an hour after the first: due
    await exporter.poll_all_once()

    assert len(world.cloud.requests_for(sim.tenant_id, path)) == 2
    assert one(scrape(exporter), name, token_name="T", platform="ios") == 3.0


@pytest.mark.parametrize("where", ["top", "tenant"])
async def test_collector_intervals_override_the_hourly_default(world: World, where: str) -> None:
    token = ade_item("T")
    sim = world.add("contoso", ade_tokens=[token], devices={token["id"]: [device_item("a")]})
    top: dict[str, Any] = {"collect": ["ade_devices"], "poll_interval": "10m"}
    if where == "top":
        top["collector_intervals"] = {"ade_devices": "10m"}
    else:
        world.tenants[0]["collector_intervals"] = {"ade_devices": "10m"}
    exporter = await world.exporter(**top)
    poller = exporter._scheduler.poller("contoso")
    assert poller is not None
    now = [1000.0]
    poller._clock = lambda: now[0]

    for _ in range(3):
        await exporter.poll_all_once()
        now[0] += 600

    assert len(world.cloud.requests_for(sim.tenant_id, devices_path(token["id"]))) == 3
    interval = "intune_tenant_collector_interval_seconds"
    assert one(scrape(exporter), interval, tenant="contoso", collector="ade_devices") == 600.0


async def test_serial_numbers_are_never_exported_logged_kept_or_shown(
    world: World, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    token = ade_item("T")
    items = [
        device_item("waiting", state="notContacted", profile_id=None),
        device_item("failed", state="failed"),
        device_item("deleted", deleted=True),
    ]
    sim = world.add("contoso", ade_tokens=[token], devices={token["id"]: items})
    # Graph withdraws a selected property: the collector reads once more without $select, and
    # Graph then sends every property, the serial number too.
    world.cloud.withdrawn["importedAppleDeviceIdentity"] = frozenset({"discoverySource"})
    caplog.set_level(logging.DEBUG)
    exporter = await world.exporter(collect=["ade", "ade_devices"])

    await exporter.poll_all_once()

    path = devices_path(token["id"])
    assert [r.status for r in world.cloud.requests_for(sim.tenant_id, path)] == [400, 200]
    state = exporter.store.tenant("contoso")
    assert state.collectors["ade_devices"].up
    assert state.collectors["ade_devices"].notes  # the withdrawn property is noted
    text = exposition(exporter) + exposition(exporter, openmetrics=True)
    assert "intune_ade_devices_without_profile" in text
    page = status_page(exporter.store.view(), KINDS, time.time())
    assert "1 device without an enrollment profile" in page
    document = json.dumps(StateFile(tmp_path, KINDS).document(exporter.store.view()))
    assert "without_profile" in document
    device_ids = [item["id"] for item in items]
    for output in (text, caplog.text, page, document):
        assert SERIAL_PREFIX not in output
        assert not any(device_id in output for device_id in device_ids)


def test_a_device_without_an_id_is_not_counted_but_is_incomplete() -> None:
    items = [device_item("a"), {k: v for k, v in device_item("b").items() if k != "id"}]
    # An item Graph repeats across a page boundary counts once.
    record = count_devices("token", "T", [*items, device_item("a")], ())
    assert dict(((p, s), c) for p, s, c in record.states)[("ios", "enrolled")] == 1
    assert record.incomplete == 1
    assert KINDS["ade_devices"].incomplete((record, record)) == 2


def test_status_rows_say_in_words_what_waits() -> None:
    now = NOW
    items = (
        devices("w-", 14, state="notContacted", profile_id=None, created_ago=3 * DAY + 3600)
        + devices("mac-", 6, platform="macOS", state="notContacted")
        + devices("f-", 2, state="failed")
        + devices("ok-", 30)
    )
    defaults = (("ios", "p1", "Contoso iPhone"),)
    record = count_devices("token", "Contoso ADE", items, defaults)
    (row,) = KINDS["ade_devices"].status_rows((record,), now)
    assert row.problem == (
        "14 devices without an enrollment profile, oldest 3 days; "
        "no default macOS profile; 6 Macs waiting; "
        "2 devices failed to enroll"
    )
    assert not row.expires and row.troubleshooting_url
    assert row.detail is not None and row.detail.startswith("52 devices: 30 enrolled")
    assert "macOS none" in row.detail and "iOS/iPadOS 'Contoso iPhone'" in row.detail
    # A token whose devices are all fine is listed, without a problem; one without any is not.
    fine = count_devices("t2", "Fine", devices("ok-", 3), defaults)
    empty = count_devices("t3", "Empty", [], ())
    rows = KINDS["ade_devices"].status_rows((fine, empty), now)
    assert [(r.name, r.problem) for r in rows] == [("Fine", None)]


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (59, "0 minutes"),
        (60, "1 minute"),
        (3599, "59 minutes"),
        (3600, "1 hour"),
        (47 * 3600, "47 hours"),
        (2 * DAY, "2 days"),
        (3 * DAY + 3600, "3 days"),
        (-5, "0 minutes"),
    ],
)
def test_wait_text(seconds: float, words: str) -> None:
    assert wait_text(seconds) == words


def test_records_round_trip_through_the_kept_state(tmp_path: Path) -> None:
    record = count_devices(
        "token",
        "T",
        [device_item("a", state="notContacted", profile_id=None), device_item("b", deleted=True)],
        (("ios", "p1", "Contoso iPhone"),),
    )
    file = StateFile(tmp_path, KINDS)
    adapter = file._adapters["ade_devices"]
    encoded = json.loads(json.dumps([file._record("ade_devices", record)]))
    (restored,) = adapter.validate_python(encoded)
    assert isinstance(restored, AdeTokenDevices)
    assert restored == record
