"""Polling real MSAL + aiohttp code against the simulated Entra ID and Graph over TLS."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from exporter.auth import AuthSettings, ClientSecret, MsalTokenProvider, usable_for
from exporter.demo.simulator import (
    ADE_PATH,
    INTUNE_FORBIDDEN_MESSAGE,
    VPP_PATH,
    Fault,
    TokenFault,
    graph_error_body,
    intune_nested_message,
)
from exporter.errors import PollError
from exporter.graph import RetryPolicy
from exporter.msal_http import MsalHttpClient
from exporter.scheduler import Limiter, tokens_ahead
from exporter.service import Exporter

from .conftest import CLIENT_ID, SECRET, World, exposition, one, samples_by_name
from .graph_data import DAY, NOW, ade_item, apns_item, vpp_item

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(exporter: Exporter, clock: Callable[[], float] = time.time) -> Samples:
    return samples_by_name(exposition(exporter, clock()))


def error_of(exporter: Exporter, tenant: str, collector: str) -> PollError:
    error = exporter.store.tenant(tenant).collectors[collector].last_error
    assert error is not None
    return error


async def test_ade_collection_over_several_pages(world: World) -> None:
    tokens = [ade_item(f"Branch {n:02d}", expires_in_days=10 + n) for n in range(45)]
    sim = world.add("contoso", ade_tokens=tokens, page_size=20)
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    requests = world.cloud.requests_for(sim.tenant_id, ADE_PATH)
    assert len(requests) == 3
    first_select = requests[0].query["$select"].split(",")
    assert "tokenExpirationDateTime" in first_select and "id" in first_select
    assert "$skiptoken" not in requests[0].query
    # The nextLink carries $skiptoken (and Graph's copy of our $select).
    assert all("$skiptoken" in r.query for r in requests[1:])
    samples = scrape(exporter)
    names = {labels["token_name"] for labels, _ in samples["intune_ade_token_info"]}
    assert names == {f"Branch {n:02d}" for n in range(45)}
    assert one(samples, "intune_tenant_up", tenant="contoso") == 1.0


async def test_429_retry_after_is_honoured(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    world.cloud.fail_next(sim.tenant_id, ADE_PATH, Fault(429, headers={"Retry-After": "1.5"}))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    exporter = await world.exporter(collect=["ade"], sleep=sleep)

    await exporter.poll_all_once()

    first, second = world.cloud.requests_for(sim.tenant_id, ADE_PATH)
    assert first.status == 429 and second.status == 200
    assert waits == [1.5]  # exactly what Graph asked for, decimals and all
    assert exporter.store.tenant("contoso").up
    samples = scrape(exporter)
    assert one(samples, "intune_graph_requests_total", tenant="contoso", code="429") == 1.0
    assert one(samples, "intune_graph_requests_total", tenant="contoso", code="200") == 1.0


async def test_503_then_success(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    world.cloud.fail_next(sim.tenant_id, ADE_PATH, Fault(503), Fault(503))
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    statuses = [r.status for r in world.cloud.requests_for(sim.tenant_id, ADE_PATH)]
    assert statuses == [503, 503, 200]
    assert exporter.store.tenant("contoso").up


async def test_throttling_gives_up_after_bounded_attempts(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    world.cloud.fail_next(sim.tenant_id, ADE_PATH, *[Fault(429) for _ in range(10)])
    retry = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, max_total_wait=1)
    exporter = await world.exporter(retry=retry, collect=["ade"])

    await exporter.poll_all_once()

    assert len(world.cloud.requests_for(sim.tenant_id, ADE_PATH)) == 3
    assert error_of(exporter, "contoso", "ade").reason == "throttled"
    samples = scrape(exporter)
    assert (
        one(
            samples,
            "intune_tenant_poll_errors_total",
            tenant="contoso",
            collector="ade",
            reason="throttled",
        )
        == 1.0
    )


@pytest.mark.parametrize(
    ("retry_after", "max_delay", "max_total_wait"),
    [
        ("3600", 600.0, 30.0),  # beyond the total wait budget
        # beyond max_delay but within the budget: retrying after 180 s would be 20 s before
        # Graph allowed it, so the Retry-After is not shortened: give up, as throttled
        ("200", 180.0, 240.0),
    ],
    ids=["beyond-the-budget", "beyond-max-delay"],
)
async def test_a_retry_after_we_may_not_wait_for_gives_up(
    world: World, retry_after: str, max_delay: float, max_total_wait: float
) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    world.cloud.fail_next(sim.tenant_id, ADE_PATH, Fault(429, headers={"Retry-After": retry_after}))
    retry = RetryPolicy(
        max_attempts=4, base_delay=0.01, max_delay=max_delay, max_total_wait=max_total_wait
    )
    exporter = await world.exporter(retry=retry, collect=["ade"])

    await exporter.poll_all_once()

    assert len(world.cloud.requests_for(sim.tenant_id, ADE_PATH)) == 1
    assert error_of(exporter, "contoso", "ade").reason == "throttled"


async def test_timeout_fails_only_that_collector(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")], vpp_tokens=[vpp_item("V")])
    hang = asyncio.Event()  # never set: Graph does not answer
    world.cloud.fail_next(sim.tenant_id, VPP_PATH, Fault(200, body={"value": []}, wait=hang))
    exporter = await world.exporter(request_timeout="0.5s", collect=["ade", "vpp"])

    await exporter.poll_all_once()

    error = error_of(exporter, "contoso", "vpp")
    assert error.reason == "timeout"
    assert "0.5s" in error.message
    state = exporter.store.tenant("contoso")
    assert state.collectors["ade"].up and not state.up


async def test_invalid_json_is_an_invalid_response(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    world.cloud.fail_next(sim.tenant_id, ADE_PATH, Fault(200, body=b"{not json"))
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    error = error_of(exporter, "contoso", "ade")
    assert error.reason == "invalid_response"
    assert "not JSON" in error.message


async def test_a_response_without_value_is_an_invalid_response(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    world.cloud.fail_next(sim.tenant_id, ADE_PATH, Fault(200, body={"items": []}))
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    assert error_of(exporter, "contoso", "ade").reason == "invalid_response"


async def test_next_link_to_another_host_is_refused(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    page = {"value": [ade_item("A")], "@odata.nextLink": "https://evil.example/beta/x?$skiptoken=1"}
    world.cloud.fail_next(sim.tenant_id, ADE_PATH, Fault(200, body=page))
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    error = error_of(exporter, "contoso", "ade")
    assert error.reason == "invalid_response" and "outside" in error.message
    assert len(world.cloud.graph_requests) == 1  # the token never went to evil.example


async def test_403_with_intune_nested_error_on_one_collector(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    sim = world.add(
        "contoso",
        ade_tokens=[ade_item("A")],
        vpp_tokens=[vpp_item("V")],
        apns_certificate=apns_item(),
    )
    body = graph_error_body(
        "Forbidden", intune_nested_message(INTUNE_FORBIDDEN_MESSAGE), request_id="req-42"
    )
    world.cloud.fail_next(sim.tenant_id, VPP_PATH, Fault(403, body=body))
    exporter = await world.exporter()
    caplog.set_level(logging.WARNING)

    await exporter.poll_all_once()

    error = error_of(exporter, "contoso", "vpp")
    assert error.reason == "forbidden"
    assert error.message == (f"HTTP 403 Forbidden: {INTUNE_FORBIDDEN_MESSAGE} (request-id req-42)")
    assert "_version" not in caplog.text and INTUNE_FORBIDDEN_MESSAGE in caplog.text
    samples = scrape(exporter)
    assert one(samples, "intune_tenant_up", tenant="contoso") == 0.0
    assert one(samples, "intune_tenant_collector_up", tenant="contoso", collector="vpp") == 0.0
    assert one(samples, "intune_tenant_collector_up", tenant="contoso", collector="ade") == 1.0
    assert one(samples, "intune_tenant_collector_up", tenant="contoso", collector="apns") == 1.0
    assert one(samples, "intune_ade_token_sync_error", tenant="contoso", token_name="A") == 0.0
    assert one(samples, "intune_apns_certificate_configured", tenant="contoso") == 1.0
    assert (
        one(
            samples,
            "intune_tenant_poll_errors_total",
            tenant="contoso",
            collector="vpp",
            reason="forbidden",
        )
        == 1.0
    )
    assert "intune_tenant_last_successful_poll_timestamp_seconds" not in samples
    assert one(
        samples,
        "intune_tenant_collector_last_success_timestamp_seconds",
        tenant="contoso",
        collector="ade",
    ) == pytest.approx(time.time(), abs=60)


async def test_bad_client_secret_fails_only_its_tenant(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.add("good", ade_tokens=[ade_item("G")])
    world.add("bad", ade_tokens=[ade_item("B")], credential={"client_secret": "wrong-secret"})
    world.add("also-good", ade_tokens=[ade_item("H")])
    exporter = await world.exporter(collect=["ade"], max_concurrency=1)
    caplog.set_level(logging.INFO)

    await exporter.poll_all_once()

    bad = error_of(exporter, "bad", "ade")
    assert bad.reason == "auth" and "AADSTS7000215" in bad.message
    assert "invalid client secret" in bad.message
    assert exporter.store.tenant("good").up and exporter.store.tenant("also-good").up
    assert any(
        getattr(record, "aadsts", None) == 7000215 and getattr(record, "tenant", "") == "bad"
        for record in caplog.records
    )
    assert "wrong-secret" not in caplog.text and SECRET not in caplog.text
    samples = scrape(exporter)
    assert one(samples, "intune_tenant_up", tenant="bad") == 0.0
    assert one(samples, "intune_tenant_up", tenant="good") == 1.0
    assert (
        one(
            samples, "intune_tenant_poll_errors_total", tenant="bad", collector="ade", reason="auth"
        )
        == 1.0
    )
    assert not any(labels["tenant"] == "bad" for labels, _ in samples["intune_ade_token_info"])


async def test_unknown_tenant_and_unknown_app_are_auth_failures(world: World) -> None:
    world.add("contoso", ade_tokens=[ade_item("A")])
    world.tenants.append(
        {
            "name": "ghost",
            "tenant_id": "deadbeef-0000-0000-0000-000000000000",
            "client_id": world.tenants[0]["client_id"],
            "client_secret": SECRET,
        }
    )
    world.tenants.append(
        {
            "name": "stranger",
            "tenant_id": world.tenants[0]["tenant_id"],
            "client_id": "99999999-0000-0000-0000-000000000000",
            "client_secret": SECRET,
        }
    )
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    ghost = error_of(exporter, "ghost", "ade")
    assert ghost.reason == "auth" and "AADSTS90002" in ghost.message
    stranger = error_of(exporter, "stranger", "ade")
    assert stranger.reason == "auth" and "AADSTS700016" in stranger.message
    assert exporter.store.tenant("contoso").up


async def test_one_access_token_serves_every_collector_and_later_polls(world: World) -> None:
    sim = world.add(
        "contoso", ade_tokens=[ade_item("A")], vpp_tokens=[vpp_item("V")], apns_certificate=None
    )
    exporter = await world.exporter()

    await exporter.poll_all_once()
    await exporter.poll_all_once()

    assert [r.credential for r in world.cloud.token_requests] == ["secret"]
    tokens = {r.token for r in world.cloud.requests_for(sim.tenant_id)}
    assert len(tokens) == 1
    # The first poll: ade, vpp and apns one request each, ade_devices three (the tokens, the
    # token's defaults, its devices). The second: ade_devices is not due (hourly by default).
    assert len(world.cloud.requests_for(sim.tenant_id)) == 6 + 3


async def test_token_expiring_mid_run_is_replaced(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()

    world.cloud.expire_tokens(sim.tenant_id)  # Graph now rejects the token MSAL cached
    await exporter.poll_all_once()

    requests = world.cloud.requests_for(sim.tenant_id, ADE_PATH)
    assert [r.status for r in requests] == [200, 401, 200]
    assert requests[1].token == requests[0].token != requests[2].token
    assert len(world.cloud.token_requests) == 2
    assert exporter.store.tenant("contoso").up


def test_a_token_is_used_until_5_minutes_before_expiry_or_half_a_short_life() -> None:
    assert usable_for(3599) == 3299.0
    assert usable_for(601) == 301.0
    assert usable_for(120) == 60.0
    assert usable_for(-5) == 0.0


async def test_a_short_lived_token_is_reused_for_half_its_life_then_renewed(
    world: World, msal_http: MsalHttpClient
) -> None:
    # MSAL counts a token with under 5 minutes left as expired and fetches a new one; the
    # provider asks it again once half of such a token's life has passed.
    sim = world.add("contoso", ade_tokens=[ade_item("A")], token_lifetime=120)
    reused_for = 60.0
    now = [1000.0]
    settings = AuthSettings(
        "contoso",
        f"{world.cloud.base_url}/{sim.tenant_id}",
        CLIENT_ID,
        f"{world.cloud.base_url}/.default",
        ClientSecret(SECRET),
    )
    with ThreadPoolExecutor(2) as pool:
        tokens = MsalTokenProvider(
            settings, http_client=msal_http, executor=pool, clock=lambda: now[0]
        )
        first = await tokens.token()
        now[0] += reused_for - 1
        assert await tokens.token() == first
        assert len(world.cloud.token_requests) == 1
        now[0] += 2
        second = await tokens.token()
    assert second != first
    assert len(world.cloud.token_requests) == 2


async def test_a_repeated_401_is_an_auth_failure(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    unauthorized = graph_error_body("InvalidAuthenticationToken", "Access token has expired.")
    world.cloud.fail_next(
        sim.tenant_id, ADE_PATH, Fault(401, body=unauthorized), Fault(401, body=unauthorized)
    )
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    assert len(world.cloud.requests_for(sim.tenant_id, ADE_PATH)) == 2
    error = error_of(exporter, "contoso", "ade")
    assert error.reason == "auth" and "InvalidAuthenticationToken" in error.message


async def test_last_good_values_stay_and_keep_ageing_after_a_failed_poll(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A", expires_in_days=20, synced_ago=3600)])
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    first_success = exporter.store.tenant("contoso").last_success_at

    world.cloud.fail_next(sim.tenant_id, ADE_PATH, Fault(500))
    await exporter.poll_all_once()

    later = time.time() + 2 * DAY
    samples = scrape(exporter, clock=lambda: later)
    assert one(samples, "intune_tenant_up", tenant="contoso") == 0.0
    # The item's times are relative to NOW (when the test data was built), scraped at `later`.
    days = one(samples, "intune_ade_token_days_to_expiry", token_name="A")
    assert days == pytest.approx((NOW + 20 * DAY - later) / DAY, abs=1e-6)
    assert days < 18.0
    age = one(samples, "intune_ade_token_last_successful_sync_age_seconds", token_name="A")
    assert age == pytest.approx(later - (NOW - 3600), abs=0.01)
    assert one(
        samples, "intune_tenant_last_successful_poll_timestamp_seconds", tenant="contoso"
    ) == pytest.approx(first_success)
    assert error_of(exporter, "contoso", "ade").reason == "http"


async def test_a_token_removed_from_graph_disappears(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("Keep"), ade_item("Gone")])
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    assert len(scrape(exporter)["intune_ade_token_info"]) == 2

    sim.ade_tokens = [t for t in sim.ade_tokens if t["tokenName"] != "Gone"]
    await exporter.poll_all_once()

    samples = scrape(exporter)
    assert [labels["token_name"] for labels, _ in samples["intune_ade_token_info"]] == ["Keep"]
    assert not any(
        labels["token_name"] == "Gone" for labels, _ in samples["intune_ade_token_days_to_expiry"]
    )


async def test_a_slow_tenant_does_not_hold_up_the_others(world: World) -> None:
    slow = world.add("slow", ade_tokens=[ade_item("S")])
    fast = world.add("fast", ade_tokens=[ade_item("F")])
    release = asyncio.Event()
    gate = Fault(200, body={"value": [ade_item("S")]}, wait=release)
    world.cloud.fail_next(slow.tenant_id, ADE_PATH, gate)
    exporter = await world.exporter(collect=["ade"], max_concurrency=2)
    fast_done = asyncio.Event()
    exporter.store.subscribe(
        lambda name, state: fast_done.set() if name == "fast" and state and state.polled else None
    )

    round_ = asyncio.create_task(exporter.poll_all_once())
    await asyncio.wait_for(gate.arrived.wait(), 10)  # the slow tenant's Graph is hanging
    await asyncio.wait_for(fast_done.wait(), 10)  # and the fast tenant finished meanwhile
    assert exporter.store.tenant("fast").up
    assert not exporter.store.tenant("slow").polled
    release.set()
    await asyncio.wait_for(round_, 10)

    assert exporter.store.tenant("slow").up
    # The simulator logs a request when it answers: the fast one answered first.
    assert [r.tenant_id for r in world.cloud.graph_requests] == [fast.tenant_id, slow.tenant_id]


async def test_tokens_run_ahead_of_the_graph_slots_but_only_so_far(world: World) -> None:
    """Tokens are fetched before a Graph slot, so that Entra ID's round trips overlap Graph's;
    at most `tokens_ahead` tenants fetch or hold one while waiting for a slot."""
    go = asyncio.Event()
    faults = []
    for index in range(6):
        sim = world.add(f"t{index}", ade_tokens=[ade_item("A")])
        faults.append(TokenFault(503, wait=go))  # every token request hangs until `go`
        world.cloud.fail_next_token(sim.tenant_id, faults[-1])
    exporter = await world.exporter(collect=["ade"], max_concurrency=1)
    ahead = exporter._scheduler._ahead
    assert tokens_ahead(1) == 3

    round_ = asyncio.create_task(exporter.poll_all_once())
    for fault in faults[:3]:
        await asyncio.wait_for(fault.arrived.wait(), 10)
    # Three tenants fetch their token; the other three wait for a place, and have not asked.
    assert ahead.held == 3 and ahead.waiting == 3
    assert [fault.arrived.is_set() for fault in faults[3:]] == [False, False, False]
    go.set()
    await asyncio.wait_for(round_, 30)

    assert all(fault.arrived.is_set() for fault in faults)
    assert all(exporter.store.tenant(f"t{index}").polled for index in range(6))
    assert (ahead.held, ahead.waiting) == (0, 0)
    assert exporter._scheduler._limiter.held == 0


async def test_a_limiter_place_is_never_lost_to_a_cancelled_waiter() -> None:
    limiter = Limiter(1)
    await limiter.acquire()
    gave_up = asyncio.create_task(limiter.acquire())
    woken_then_cancelled = asyncio.create_task(limiter.acquire())
    last = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)  # each task runs to its wait (scheduling, not timing)
    assert limiter.waiting == 3
    gave_up.cancel()
    limiter.release()  # wakes the first waiter still waiting...
    woken_then_cancelled.cancel()  # ...which is cancelled before it runs: the place goes on
    await asyncio.wait_for(last, 5)
    assert limiter.held == 1 and limiter.waiting == 0
    assert gave_up.cancelled() and woken_then_cancelled.cancelled()
    limiter.release()
    assert limiter.held == 0


async def test_a_limiter_takes_a_new_limit_while_tasks_wait() -> None:
    limiter = Limiter(1)
    await limiter.acquire()
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    assert limiter.waiting == 3
    limiter.set_limit(3)  # two more places: two waiters get one at once
    await asyncio.wait_for(asyncio.gather(*waiters[:2]), 5)
    assert limiter.held == 3 and limiter.waiting == 1 and not waiters[2].done()
    limiter.set_limit(1)  # lower: nobody holding a place loses it, nobody new gets one
    limiter.release()
    limiter.release()
    assert limiter.held == 1 and not waiters[2].done()
    limiter.release()
    await asyncio.wait_for(waiters[2], 5)
    assert limiter.held == 1 and limiter.waiting == 0


async def test_apns_404_is_a_state_not_a_failure(world: World) -> None:
    world.add("contoso", apns_certificate=None)
    exporter = await world.exporter(collect=["apns"])

    await exporter.poll_all_once()

    samples = scrape(exporter)
    assert exporter.store.tenant("contoso").up
    assert one(samples, "intune_apns_certificate_configured", tenant="contoso") == 0.0
    assert "intune_apns_certificate_days_to_expiry" not in samples
    assert "intune_apns_certificate_info" not in samples
    assert one(samples, "intune_graph_requests_total", tenant="contoso", code="404") == 1.0


async def test_apns_fields_mapping(world: World) -> None:
    world.add("contoso", apns_certificate=apns_item(expires_in_days=12))
    exporter = await world.exporter(collect=["apns"])

    await exporter.poll_all_once()

    samples = scrape(exporter)
    assert one(samples, "intune_apns_certificate_configured", tenant="contoso") == 1.0
    ((info_labels, value),) = samples["intune_apns_certificate_info"]
    assert value == 1.0
    assert info_labels == {
        "tenant": "contoso",
        "apple_id": "push@contoso.example",
        "topic_id": "com.apple.mgmt.External.1234abcd",
        "serial_number": "6A1B2C3D4E5F6071",
    }
    expiry = one(samples, "intune_apns_certificate_expiry_timestamp_seconds", tenant="contoso")
    assert expiry == pytest.approx(NOW + 12 * DAY, abs=0.001)
    days = one(samples, "intune_apns_certificate_days_to_expiry", apple_id="push@contoso.example")
    assert days == pytest.approx(12 - (time.time() - NOW) / DAY, abs=0.001)


async def test_ade_field_mapping(world: World) -> None:
    world.add(
        "contoso",
        ade_tokens=[
            ade_item(
                "School",
                expires_in_days=-2,
                error_code=3,
                devices=7,
                token_type="appleSchoolManager",
                synced_ago=None,
                triggered_ago=None,
            ),
            ade_item("Future", token_type="somethingNew", apple_id="x@y.example"),
        ],
    )
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    samples = scrape(exporter)
    school = {"tenant": "contoso", "token_name": "School"}
    info = [labels for labels, _ in samples["intune_ade_token_info"]]
    assert {"apple_id": "abm@contoso.example", "token_type": "appleSchoolManager"}.items() <= next(
        i for i in info if i["token_name"] == "School"
    ).items()
    assert next(i for i in info if i["token_name"] == "Future")["token_type"] == "somethingNew"
    assert one(samples, "intune_ade_token_sync_error", **school) == 1.0
    assert one(samples, "intune_ade_token_last_sync_error_code", **school) == 3.0
    assert one(samples, "intune_ade_token_synced_devices", **school) == 7.0
    assert one(samples, "intune_ade_token_days_to_expiry", **school) < -1.99
    assert one(samples, "intune_ade_token_expiry_timestamp_seconds", **school) == pytest.approx(
        NOW - 2 * DAY, abs=0.001
    )
    never = [
        labels["token_name"]
        for name in (
            "intune_ade_token_last_successful_sync_timestamp_seconds",
            "intune_ade_token_last_successful_sync_age_seconds",
            "intune_ade_token_last_sync_triggered_timestamp_seconds",
        )
        for labels, _ in samples[name]
    ]
    assert never == ["Future", "Future", "Future"]  # "School" never synced: absent, not 0
    assert one(samples, "intune_ade_token_sync_error", token_name="Future") == 0.0


async def test_vpp_field_mapping_states_and_secret(world: World) -> None:
    world.add(
        "contoso",
        vpp_tokens=[
            vpp_item("Valid"),
            vpp_item("Expired", state="expired", expires_in_days=-1),
            vpp_item("Invalid", state="invalid"),
            vpp_item("External", state="assignedToExternalMDM"),
            vpp_item("Failing", sync_status="failed"),
            vpp_item("Weird", state="somethingApple2027"),
            vpp_item("", display_name="", organization="Org Only Ltd", synced_ago=None),
        ],
    )
    exporter = await world.exporter(collect=["vpp"])

    await exporter.poll_all_once()

    samples = scrape(exporter)
    requests = world.cloud.requests_for(world.cloud.graph_requests[0].tenant_id or "", VPP_PATH)
    assert "token" not in requests[0].query["$select"].split(",")

    def state_of(name: str) -> dict[str, float]:
        return {
            labels["state"]: value
            for labels, value in samples["intune_vpp_token_state"]
            if labels["token_name"] == name
        }

    known = {
        "unknown",
        "valid",
        "expired",
        "invalid",
        "assignedToExternalMDM",
        "duplicateLocationId",
    }
    assert set(state_of("Valid")) == known and state_of("Valid")["valid"] == 1.0
    assert sum(state_of("Valid").values()) == 1.0
    assert state_of("Expired")["expired"] == 1.0
    assert state_of("Invalid")["invalid"] == 1.0
    assert state_of("External")["assignedToExternalMDM"] == 1.0
    assert set(state_of("Weird")) == known | {"somethingApple2027"}
    assert state_of("Weird")["somethingApple2027"] == 1.0
    assert one(samples, "intune_vpp_token_sync_error", token_name="Failing") == 1.0
    assert one(samples, "intune_vpp_token_sync_error", token_name="Valid") == 0.0
    assert one(samples, "intune_vpp_token_days_to_expiry", token_name="Expired") < -0.99
    info = next(
        labels for labels, _ in samples["intune_vpp_token_info"] if labels["token_name"] == "Valid"
    )
    assert info == {
        "tenant": "contoso",
        "token_id": info["token_id"],
        "token_name": "Valid",
        "apple_id": "vpp@contoso.example",
        "organization_name": "Contoso Ltd",
        "account_type": "business",
        "location_name": "Contoso HQ",
    }
    # token_name falls back to organizationName when displayName is empty.
    assert one(samples, "intune_vpp_token_sync_error", token_name="Org Only Ltd") == 0.0
    assert not any(
        labels["token_name"] == "Org Only Ltd"
        for labels, _ in samples["intune_vpp_token_last_sync_age_seconds"]
    )
    assert one(
        samples, "intune_vpp_token_last_sync_age_seconds", token_name="Valid"
    ) == pytest.approx(7200 + time.time() - NOW, abs=5)
    text = exposition(exporter)
    assert "VPP-SECRET-TOKEN" not in text
    assert "VPP-SECRET-TOKEN" not in repr(exporter.store.view())


async def test_ca_file_is_trusted_even_with_ca_bundle_variables(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many corporate hosts (and these CI machines) point these at the system bundle; requests
    # would let them override a session's verify, and the private CA would stop being trusted.
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(variable, "/etc/ssl/certs/ca-certificates.crt")
    world.add("contoso", ade_tokens=[ade_item("A")])
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    assert exporter.store.tenant("contoso").up, exporter.store.tenant("contoso").collectors


async def test_without_the_ca_tls_verification_fails(world: World) -> None:
    world.add("contoso", ade_tokens=[ade_item("A")])
    world.tenants[0]["ca_file"] = "/etc/ssl/certs/ca-certificates.crt"
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    error = error_of(exporter, "contoso", "ade")
    assert error.reason == "network"
    assert not world.cloud.token_requests
    # What was tried, and the likely cause: here, a certificate nobody told the exporter to trust.
    assert "connecting directly (no HTTPS_PROXY)" in error.message
    assert "likely cause: TLS inspection" in error.message and "ca_file" in error.message


async def test_an_unreachable_authority_names_what_was_tried_and_the_likely_causes(
    world: World, unused_tcp_port: int
) -> None:
    world.add("contoso", ade_tokens=[ade_item("A")])
    world.tenants[0]["authority_host"] = f"https://127.0.0.1:{unused_tcp_port}"
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    error = error_of(exporter, "contoso", "ade")
    assert error.reason == "network"
    assert error.message.startswith(
        f"cannot reach the authority https://127.0.0.1:{unused_tcp_port}/"
    )
    assert "[connecting directly (no HTTPS_PROXY); likely cause: nothing accepts connections" in (
        error.message
    )


@pytest.mark.parametrize(
    ("error", "detail", "cause"),
    [
        (
            lambda key: aiohttp.ClientConnectorDNSError(
                key, socket.gaierror(-2, "Name or service not known")
            ),
            "ClientConnectorDNSError: cannot resolve graph.microsoft.com:443 "
            "(Name or service not known)",
            "likely cause: DNS",
        ),
        (
            lambda key: aiohttp.ClientConnectorError(
                key, ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
            ),
            "ClientConnectorError: cannot connect to graph.microsoft.com:443 (connection refused)",
            "likely cause: nothing accepts connections there",
        ),
        (
            lambda key: aiohttp.ClientConnectorCertificateError(
                key, ssl.SSLCertVerificationError("certificate verify failed")
            ),
            "TLS failure: ClientConnectorCertificateError",
            "likely cause: TLS inspection",
        ),
        (
            lambda key: aiohttp.ClientProxyConnectionError(key, OSError("boom")),
            "ClientProxyConnectionError: cannot connect to the proxy",
            "likely cause: the proxy refused or failed the connection",
        ),
    ],
    ids=["dns", "refused", "tls", "proxy"],
)
def test_graph_connection_failures_are_classified_by_type(
    error: Any, detail: str, cause: str
) -> None:
    """By aiohttp's exception types, not their text: that holds an SSLContext repr (with "ssl"
    in it), and the APNs collector's path has "certificate" in it."""
    from exporter.aiohttp_failures import connection_failure
    from exporter.errors import network_hint

    key = SimpleNamespace(host="graph.microsoft.com", port=443, ssl=ssl.create_default_context())
    found, kind = connection_failure(error(key))
    assert found == detail
    text = network_hint(
        f"GET /beta/deviceManagement/applePushNotificationCertificate: {found}", None, kind
    )
    assert cause in text and "SSLContext" not in text


def test_network_hints_name_the_cause_and_never_the_proxy_credentials() -> None:
    from exporter.errors import network_hint, shown_proxy

    proxy = "http://svc-user:s3cret@proxy.corp.example:3128"
    dns = network_hint("GET /beta/x: cannot resolve graph.microsoft.com:443", proxy, "dns")
    assert "through the proxy http://proxy.corp.example:3128" in dns
    assert "likely cause: DNS" in dns
    assert "s3cret" not in dns and "svc-user" not in dns
    refused = network_hint("cannot reach Entra ID's token endpoint: ProxyError", proxy, "proxy")
    assert "the proxy refused or failed the connection" in refused
    # The kind decides, never words in the detail (a path with "certificate" in it).
    other = network_hint("GET /beta/applePushNotificationCertificate: gone", None)
    assert other.endswith(
        "[connecting directly (no HTTPS_PROXY); likely cause: DNS, a proxy (HTTPS_PROXY, "
        "NO_PROXY), a firewall on outbound HTTPS (443) or TLS inspection]"
    )
    assert shown_proxy("http://u:p@[::1]:3128") == "http://[::1]:3128"
    assert shown_proxy("proxy.corp:8080") == "http://proxy.corp:8080"


async def test_a_collector_bug_costs_one_collector_one_poll(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    from exporter.kinds import KINDS
    from exporter.pollers import TenantPoller

    class Broken:
        name = "vpp"
        metrics = KINDS["vpp"].metrics
        select_fallback = False

        async def fetch(self, graph: object) -> tuple[object, ...]:
            raise RuntimeError("boom")

    world.add("contoso", ade_tokens=[ade_item("A")])
    exporter = await world.exporter(collect=["ade", "vpp"])
    graph = exporter._scheduler._pollers["contoso"]._graph
    poller = TenantPoller("contoso", [KINDS["ade"], Broken()], graph, exporter.store)  # type: ignore[list-item]

    state = await poller.poll_once()

    assert state.collectors["ade"].up
    error = state.collectors["vpp"].last_error
    assert error is not None
    assert (error.reason, error.message) == ("invalid_response", "internal error: RuntimeError")
    assert "unexpected error in a collector" in caplog.text


async def test_504_is_retried_with_backoff(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    world.cloud.fail_next(sim.tenant_id, ADE_PATH, Fault(504))
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    assert [r.status for r in world.cloud.requests_for(sim.tenant_id, ADE_PATH)] == [504, 200]
    assert exporter.store.tenant("contoso").up


def test_backoff_without_retry_after_is_exponential_with_jitter() -> None:
    from exporter.graph import GraphClient

    retry = RetryPolicy(max_attempts=6, base_delay=3.0, max_delay=20.0, max_total_wait=100)
    client = GraphClient(None, "https://graph.test", None, timeout=1, retry=retry)  # type: ignore[arg-type]
    for attempt, ceiling in ((1, 3.0), (2, 6.0), (3, 12.0), (4, 20.0), (5, 20.0)):
        delays = {client._delay(attempt, None) for _ in range(200)}
        assert min(delays) >= ceiling / 2 and max(delays) <= ceiling
        assert len(delays) > 100  # jittered, not a fixed step
    assert client._delay(1, "1.5") == 1.5
    assert client._delay(1, "500") == 500.0  # never shortened (the caller gives up instead)


async def test_a_hung_authority_times_out(world: World) -> None:
    # Accepts TCP connections and never answers: the TLS handshake with "Entra ID" hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        world.add("contoso", ade_tokens=[ade_item("A")])
        world.add("hung", ade_tokens=[ade_item("H")])
        world.tenants[1]["authority_host"] = f"https://127.0.0.1:{listener.getsockname()[1]}"
        exporter = await world.exporter(collect=["ade"], request_timeout="1s")

        await asyncio.wait_for(exporter.poll_all_once(), timeout=30)

        error = error_of(exporter, "hung", "ade")
        assert error.reason == "timeout"
        assert exporter.store.tenant("hung").polled
        assert exporter.store.tenant("contoso").up
    finally:
        listener.close()


async def test_polling_goes_on_by_itself(world: World) -> None:
    world.add("a", ade_tokens=[ade_item("A")])
    world.add("b", ade_tokens=[ade_item("B")])
    exporter = Exporter(world.config(collect=["ade"], poll_interval="0.3s"), retry=None)
    world.exporters.append(exporter)

    await exporter.start()
    deadline = time.monotonic() + 20
    while min(exporter.store.counters(name).polls for name in ("a", "b")) < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    assert exporter.polling
    assert exporter.store.tenant("a").up and exporter.store.tenant("b").up
    # Each poll used the one cached token: three polls of two tenants, two token requests.
    assert len(world.cloud.token_requests) == 2


async def test_an_item_repeated_across_pages_is_one_series(world: World) -> None:
    tokens = [ade_item(f"T{n}") for n in range(3)]
    sim = world.add("contoso", ade_tokens=[*tokens, tokens[1]], page_size=2)
    exporter = await world.exporter(collect=["ade"])

    await exporter.poll_all_once()

    assert len(world.cloud.requests_for(sim.tenant_id, ADE_PATH)) == 2
    names = [labels["token_name"] for labels, _ in scrape(exporter)["intune_ade_token_info"]]
    assert sorted(names) == ["T0", "T1", "T2"]


async def test_vpp_collection_over_several_pages(world: World) -> None:
    sim = world.add(
        "contoso", vpp_tokens=[vpp_item(f"Location {n}") for n in range(7)], page_size=3
    )
    exporter = await world.exporter(collect=["vpp"])

    await exporter.poll_all_once()

    assert len(world.cloud.requests_for(sim.tenant_id, VPP_PATH)) == 3
    names = {labels["token_name"] for labels, _ in scrape(exporter)["intune_vpp_token_info"]}
    assert names == {f"Location {n}" for n in range(7)}
