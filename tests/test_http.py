"""The HTTP endpoints: /metrics parsed back value by value, readiness, health, status page."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from exporter.demo.simulator import ADE_PATH, Fault
from exporter.server import build_app, parse_listen_address, start_site
from exporter.service import Exporter

from .conftest import World, one, samples_by_name
from .graph_data import DAY, NOW, VPP_SECRET_PREFIX, ade_item, apns_item, vpp_item


async def serve(exporter: Exporter) -> tuple[web.AppRunner, str]:
    app = build_app(exporter.store, exporter.lines, exporter_samples=exporter.exporter_samples)
    runner, port = await start_site(app, "127.0.0.1", 0)
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_metrics_endpoint_values(world: World, http: aiohttp.ClientSession) -> None:
    world.add(
        "contoso",
        ade_tokens=[ade_item("Contoso iOS", expires_in_days=20, synced_ago=7200, devices=412)],
        vpp_tokens=[vpp_item("Contoso Apps", state="invalid", expires_in_days=90)],
        apns_certificate=apns_item(expires_in_days=12),
    )
    exporter = await world.exporter(poll_interval="5m")
    await exporter.poll_all_once()
    runner, base = await serve(exporter)
    try:
        async with http.get(f"{base}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            samples = samples_by_name(await response.text())
    finally:
        await runner.cleanup()

    elapsed_days = (time.time() - NOW) / DAY
    ade = {"tenant": "contoso", "token_name": "Contoso iOS"}
    assert one(samples, "intune_ade_token_days_to_expiry", **ade) == pytest.approx(
        20 - elapsed_days, abs=0.001
    )
    assert one(samples, "intune_ade_token_expiry_timestamp_seconds", **ade) == pytest.approx(
        NOW + 20 * DAY, abs=0.001
    )
    assert one(samples, "intune_ade_token_last_successful_sync_age_seconds", **ade) == (
        pytest.approx(7200 + elapsed_days * DAY, abs=5)
    )
    assert one(samples, "intune_ade_token_synced_devices", **ade) == 412.0
    assert one(samples, "intune_ade_token_sync_error", **ade) == 0.0
    assert one(samples, "intune_ade_token_last_sync_error_code", **ade) == 0.0
    assert one(samples, "intune_ade_token_info", **ade, token_type="dep") == 1.0
    assert one(samples, "intune_vpp_token_state", token_name="Contoso Apps", state="invalid") == 1.0
    assert one(samples, "intune_vpp_token_days_to_expiry", token_name="Contoso Apps") == (
        pytest.approx(90 - elapsed_days, abs=0.001)
    )
    assert one(samples, "intune_apns_certificate_days_to_expiry", tenant="contoso") == (
        pytest.approx(12 - elapsed_days, abs=0.001)
    )
    assert one(samples, "intune_tenant_info", tenant="contoso", cloud="global") == 1.0
    assert one(samples, "intune_tenant_up", tenant="contoso") == 1.0
    assert one(samples, "intune_tenant_polls_total", tenant="contoso") == 1.0
    # ade, vpp and apns one request each; ade_devices lists the token, reads its defaults and
    # its (here empty) devices.
    assert one(samples, "intune_graph_requests_total", tenant="contoso", code="200") == 6.0
    assert one(samples, "intune_exporter_poll_interval_seconds") == 300.0
    assert one(samples, "intune_tenant_poll_duration_seconds", tenant="contoso") > 0
    for collector in ("ade", "ade_devices", "vpp", "apns"):
        for reason in ("auth", "forbidden"):  # pre-created so increase() sees the first error
            assert (
                one(
                    samples,
                    "intune_tenant_poll_errors_total",
                    tenant="contoso",
                    collector=collector,
                    reason=reason,
                )
                == 0.0
            )
    ((labels, value),) = samples["intune_exporter_build_info"]
    assert value == 1.0 and labels["version"]


async def test_metrics_negotiates_openmetrics_and_gzip(
    world: World, http: aiohttp.ClientSession
) -> None:
    world.add("contoso", ade_tokens=[ade_item("A")])
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    runner, base = await serve(exporter)
    try:
        headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
        async with http.get(f"{base}/metrics", headers=headers) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            body = await response.text()
        assert body.rstrip().endswith("# EOF")
        assert "intune_ade_token_days_to_expiry{" in body
        async with http.get(
            f"{base}/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
        ) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            text = gzip.decompress(await response.read()).decode()
        assert 'intune_tenant_up{tenant="contoso"} 1.0' in text
    finally:
        await runner.cleanup()


async def test_ready_only_after_every_tenant_finished_its_first_poll(
    world: World, http: aiohttp.ClientSession
) -> None:
    world.add("ok", ade_tokens=[ade_item("A")])
    world.add("failing", ade_tokens=[ade_item("B")], credential={"client_secret": "wrong"})
    exporter = await world.exporter(collect=["ade"])
    runner, base = await serve(exporter)
    try:
        async with http.get(f"{base}/-/ready") as response:
            assert response.status == 503
            assert "0 of 2" in await response.text()
        async with http.get(f"{base}/-/healthy") as response:
            assert response.status == 200
        async with http.get(f"{base}/metrics") as response:
            before = samples_by_name(await response.text())
        assert one(before, "intune_tenant_up", tenant="ok") == 0.0  # present from start-up
        assert one(before, "intune_tenant_up", tenant="failing") == 0.0

        await exporter.poll_all_once()  # one tenant fails: ready all the same

        async with http.get(f"{base}/-/ready") as response:
            assert response.status == 200
    finally:
        await runner.cleanup()


async def test_status_page_lists_everything_escaped_and_without_secrets(
    world: World, http: aiohttp.ClientSession
) -> None:
    sim = world.add(
        "contoso",
        ade_tokens=[
            ade_item("<script>alert(1)</script>", expires_in_days=-3),
            ade_item("School & Co", error_code=3, expires_in_days=100),
        ],
        vpp_tokens=[vpp_item("Apps", state="invalid")],
        apns_certificate=None,
    )
    world.add("broken", ade_tokens=[], credential={"client_secret": "wrong-Hh72"})
    exporter = await world.exporter()
    await exporter.poll_all_once()
    # The next poll of the ADE tokens fails: the page keeps their last good rows, and says why.
    world.cloud.fail_next(sim.tenant_id, ADE_PATH, Fault(500))
    await exporter.poll_all_once()
    assert not exporter.store.tenant("contoso").collectors["ade"].up
    runner, base = await serve(exporter)
    try:
        async with http.get(f"{base}/") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            page = await response.text()
    finally:
        await runner.cleanup()

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "School &amp; Co" in page
    assert 'class="expired' in page
    assert "sync error code 3: new Apple Business/School Manager terms" in page
    assert "state invalid" in page
    assert "not configured in this tenant" in page
    assert "AADSTS7000215" in page  # the failing tenant says why
    assert "ade: http: HTTP 500 UnknownError: simulated 500" in page
    assert "https://learn.microsoft.com/intune/device-enrollment/apple/setup-apple-token" in page
    assert "https://learn.microsoft.com/mem/intune/apps/vpp-apps-ios" in page
    assert "wrong-Hh72" not in page and VPP_SECRET_PREFIX not in page
    # Soonest expiry first: the expired token comes before the healthy one.
    assert page.index("&lt;script&gt;") < page.index("School &amp; Co")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":9893", (None, 9893)),
        ("0.0.0.0:9893", ("0.0.0.0", 9893)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9100", ("::1", 9100)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_listen_address(address: str, expected: tuple[str | None, int]) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9893", "host:port", ":70000", ""])
def test_parse_listen_address_rejects(address: str) -> None:
    with pytest.raises(ValueError, match=r"port|host:port"):
        parse_listen_address(address)


async def test_scrapes_do_not_wait_for_a_hanging_graph(
    world: World, http: aiohttp.ClientSession
) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    hang = Fault(200, body={"value": []}, wait=asyncio.Event())  # never released
    world.cloud.fail_next(sim.tenant_id, ADE_PATH, hang)
    exporter = await world.exporter(collect=["ade"], request_timeout="60s")
    runner, base = await serve(exporter)
    poll = asyncio.create_task(exporter.poll_all_once())
    try:
        await asyncio.wait_for(hang.arrived.wait(), 10)  # the poll is under way, Graph hangs
        async with http.get(f"{base}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as response:
            samples = samples_by_name(await response.text())
        assert one(samples, "intune_tenant_up", tenant="contoso") == 0.0
        assert not poll.done()
        async with http.get(f"{base}/-/ready") as response:
            assert response.status == 503
    finally:
        poll.cancel()
        await runner.cleanup()


async def test_each_scrape_gives_its_memory_back_afterwards(
    world: World, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exporter.memory.trim runs in the render thread after each large scrape has been written (on
    glibc it is malloc_trim; see the module for why)."""
    import threading

    from exporter import memory

    if memory._TRIM is None:
        pytest.skip("not glibc: trim() does nothing here")
    calls: list[str] = []
    monkeypatch.setattr("exporter.server.WORTH_TRIMMING", 1)  # this body is small
    monkeypatch.setattr(
        "exporter.server.trim", lambda: calls.append(threading.current_thread().name)
    )
    world.add("contoso", ade_tokens=[ade_item("Contoso iOS")])
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    runner, base = await serve(exporter)
    try:
        for _ in range(2):
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200
                await response.read()
        # The render thread runs in order: the second render came after the first trim.
        assert calls[:1] == ["render_0"]
        # The status page is built in the same thread, and gives its memory back too.
        calls.clear()
        for _ in range(2):
            async with http.get(f"{base}/") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "text/html; charset=utf-8"
                assert "contoso" in await response.text()
        assert calls[:1] == ["render_0"]
    finally:
        await runner.cleanup()
    memory.trim()  # the real one, on this glibc: callable and harmless


async def test_a_large_status_page_is_built_and_served_in_chunks(
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter import server
    from exporter.exposition import WRITE_SIZE
    from exporter.kinds import KINDS

    from .conftest import status_page
    from .graph_data import NOW
    from .test_exposition import generated_store

    made: list[list[bytes | memoryview]] = []
    real_coalesce = server.coalesce

    def spy(chunks: Any) -> list[bytes | memoryview]:
        out = real_coalesce(chunks)
        made.append(list(out))
        return out

    monkeypatch.setattr(server, "coalesce", spy)
    store, lines = generated_store(1000)
    whole = status_page(store.view(), KINDS, NOW)
    app = build_app(store, lines, clock=lambda: NOW)
    runner, port = await start_site(app, "127.0.0.1", 0)
    try:
        async with http.get(f"http://127.0.0.1:{port}/") as response:
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            assert await response.text() == whole
    finally:
        await runner.cleanup()
    # Encoded as the rows are made, never as one page-sized string: chunks of about
    # WRITE_SIZE (a row more at most), the last one smaller.
    [chunks] = made
    assert b"".join(chunks).decode() == whole
    assert len(whole) > 2_000_000 and len(chunks) > 2_000_000 // (WRITE_SIZE * 11 // 10)
    assert all(WRITE_SIZE <= len(chunk) < WRITE_SIZE * 11 // 10 for chunk in chunks[:-1])


async def test_head_answers_with_headers_only_and_the_connection_stays_usable(
    world: World,
) -> None:
    world.add("contoso", ade_tokens=[ade_item("Contoso iOS")])
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    runner, base = await serve(exporter)
    reader, writer = await asyncio.open_connection(*base.removeprefix("http://").split(":"))
    try:
        for path in ("/metrics", "/"):
            # HEAD, then GET on the same keep-alive connection: a body sent after HEAD's
            # headers would be read as the start of the next answer.
            writer.write(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(
                next(
                    line
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ).split(b":")[1]
            )
            assert length > 1000  # what GET would send
            writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            after = await reader.readuntil(b"\r\n\r\n")
            assert after.startswith(b"HTTP/1.1 200"), after[:80]
            assert await reader.readexactly(len(b"Healthy\n")) == b"Healthy\n"
    finally:
        writer.close()
        await runner.cleanup()
