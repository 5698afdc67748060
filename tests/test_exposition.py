"""The pre-rendered exposition equals prometheus-client's, series for series, in both formats."""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter import exposition, server
from exporter.demo import demo_config, start_demo_cloud
from exporter.exposition import Layout, render, render_lines, render_snapshot
from exporter.kinds import KINDS
from exporter.metric_spec import MetricSpec
from exporter.metrics import TenantLines, exporter_samples
from exporter.records import Records, Sample
from exporter.server import build_app, start_site
from exporter.service import Exporter
from exporter.sharding import Shard
from exporter.snapshot import SnapshotStore

from .conftest import World, one, samples_by_name
from .conftest import exposition as scrape_text
from .graph_data import NOW, ade_item, apns_item, vpp_item
from .reference_exposition import reference_exposition

Parsed = dict[str, tuple[str, str, frozenset[tuple[str, frozenset[tuple[str, str]], float]]]]


def parse(body: bytes, *, openmetrics: bool) -> Parsed:
    """{family: (type, help, {(sample name, labels, value)})}, order ignored."""
    text = body.decode()
    if openmetrics:
        assert text.endswith("# EOF\n")
        families = openmetrics_families(text)
    else:
        assert "# EOF" not in text
        families = text_string_to_metric_families(text)
    parsed: Parsed = {}
    for family in families:
        samples = frozenset((s.name, frozenset(s.labels.items()), s.value) for s in family.samples)
        assert family.name not in parsed, f"{family.name}: lines not contiguous"
        parsed[family.name] = (family.type, family.documentation, samples)
    return parsed


def assert_equal_to_reference(store: SnapshotStore, lines: TenantLines, now: float) -> int:
    extra = lambda: exporter_samples(600.0, Shard(), 3)  # noqa: E731
    count = 0
    for openmetrics in (False, True):
        ours = render(lines.layout, lines.parts(extra), now, openmetrics=openmetrics)
        reference = reference_exposition(store, extra, lambda: now, openmetrics=openmetrics)
        mine = parse(ours, openmetrics=openmetrics)
        theirs = parse(reference, openmetrics=openmetrics)
        assert mine.keys() == theirs.keys()
        for name in theirs:
            assert mine[name] == theirs[name], name
        count = sum(len(samples) for _, _, samples in theirs.values())
    return count


async def test_demo_data_renders_as_prometheus_client_does() -> None:
    cloud = await start_demo_cloud()
    exporter = Exporter(demo_config(cloud.base_url), ca_data=cloud.ca_pem)
    try:
        await exporter.poll_all_once()
        now = time.time()
        store = exporter.store
        count = assert_equal_to_reference(store, exporter.lines, now)
        assert count > 300  # every demo tenant's credentials, health and counters
    finally:
        await exporter.close()
        await cloud.stop()


def _records(kind: str, items: list[dict[str, Any]]) -> Records:
    from exporter.kinds import ade, apns, vpp

    parse_item = {"ade": ade.parse_token, "vpp": vpp.parse_token, "apns": apns.parse_certificate}
    return tuple(r for item in items if (r := parse_item[kind](item)) is not None)


def generated_store(tenants: int) -> tuple[SnapshotStore, TenantLines]:
    """A store of `tenants` polled tenants (3 ADE tokens, 1 VPP token, 1 APNs certificate)."""
    store = SnapshotStore()
    lines = TenantLines(store)
    for index in range(tenants):
        name = f"tenant-{index:05d}"
        store.add_tenant(name, str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), "global", list(KINDS))
        results = {
            "ade": _records(
                "ade",
                [
                    ade_item(f"{name} ADE {n}", expires_in_days=10 + index % 300 + n)
                    for n in range(3)
                ],
            ),
            "vpp": _records("vpp", [vpp_item(f"{name} VPP", expires_in_days=100 + index % 50)]),
            "apns": _records("apns", [apns_item(expires_in_days=index % 400 - 20)]),
        }
        store.record_poll(name, results, NOW, 0.25)
        for status in (200, 200, 429):
            store.count_graph_request(name, status)
    return store, lines


def test_generated_thousand_tenants_render_as_prometheus_client_does() -> None:
    store, lines = generated_store(1000)
    # Counters counted after the poll show with the tenant's next change: poll once more.
    for index in range(1000):
        name = f"tenant-{index:05d}"
        store.record_poll(name, {"ade": store.tenant(name).collectors["ade"].records or ()}, NOW, 1)
    count = assert_equal_to_reference(store, lines, NOW + 3600)
    assert count > 40_000


def test_label_values_are_escaped_in_both_formats() -> None:
    store = SnapshotStore()
    lines = TenantLines(store)
    odd = 'Ünïcödé "quoted" back\\slash\nnew line 100% 日本'
    store.add_tenant(odd, str(uuid.uuid4()), "global", ["ade"])
    token = ade_item(odd, token_id="t-1", apple_id='a"b\\c@example.com')
    store.record_poll(odd, {"ade": _records("ade", [token])}, NOW, 0.1)
    assert_equal_to_reference(store, lines, NOW)
    body = render(lines.layout, lines.parts(), NOW, openmetrics=False).decode()
    samples = samples_by_name(body)
    assert one(samples, "intune_ade_token_sync_error", tenant=odd, token_name=odd) == 0.0
    # The %-template of a derived family must not read "100% 日" as a conversion.
    days = one(samples, "intune_ade_token_days_to_expiry", tenant=odd)
    assert days == pytest.approx(200.0, abs=1e-6)
    assert '\\"quoted\\" back\\\\slash\\nnew line' in body


def test_header_lines_are_rendered_once_per_family_even_without_samples() -> None:
    specs = (
        MetricSpec("x_total", "counter", 'Help with "quotes" and \\ backslash.', ("a",)),
        MetricSpec("x_days", "gauge", "Days.", ("a",), derived="days_until"),
    )
    layout = Layout.of(specs)
    text = render(layout, [], 0.0, openmetrics=False).decode()
    assert text == (
        '# HELP x_total Help with "quotes" and \\\\ backslash.\n# TYPE x_total counter\n'
        "# HELP x_days Days.\n# TYPE x_days gauge\n"
    )
    om = render(layout, [], 0.0, openmetrics=True).decode()
    assert om == (
        '# HELP x Help with \\"quotes\\" and \\\\ backslash.\n# TYPE x counter\n'
        "# HELP x_days Days.\n# TYPE x_days gauge\n# EOF\n"
    )


def test_time_derived_values_move_between_scrapes_without_a_poll() -> None:
    layout = Layout.of(
        (
            MetricSpec("d", "gauge", "days", ("a",), derived="days_until"),
            MetricSpec("s", "gauge", "since", ("a",), derived="seconds_since"),
            MetricSpec("v", "gauge", "static", ("a",)),
        )
    )
    samples: list[Sample] = [("d", ("x",), 1000.0 + 86400), ("s", ("x",), 1000.0), ("v", ("x",), 7)]
    part = render_lines(layout, samples)
    first = samples_by_name(render(layout, [part], 1000.0, openmetrics=False).decode())
    later = samples_by_name(render(layout, [part], 1000.0 + 43200, openmetrics=False).decode())
    assert (one(first, "d"), one(first, "s"), one(first, "v")) == (1.0, 0.0, 7.0)
    assert (one(later, "d"), one(later, "s"), one(later, "v")) == (0.5, 43200.0, 7.0)


def test_time_derived_values_are_written_as_shortest_round_trip_text() -> None:
    values = [0.0, -0.0, 1.0, 0.1, 1 / 3, -20.000011574074074, 86399.99999, 1e-05, 2.5e16, 1e300]
    texts = exposition.value_texts(values)
    assert [float(text) for text in texts] == values
    # Exponents aside (orjson writes 0.00001 where repr writes 1e-05), the same text.
    assert [text.decode() for text in texts[:7]] == [repr(value) for value in values[:7]]
    assert exposition.value_texts([]) == []


def test_a_non_finite_time_derived_value_is_written_as_prometheus_client_writes_it() -> None:
    # orjson writes NaN and infinities as null, which no parser reads as a number.
    texts = exposition.value_texts([1.5, float("inf"), float("-inf"), float("nan")])
    assert texts == [b"1.5", b"+Inf", b"-Inf", b"NaN"]
    layout = Layout.of((MetricSpec("d", "gauge", "days", ("a",), derived="days_until"),))
    part = render_lines(layout, [("d", ("x",), float("inf")), ("d", ("y",), 1000.0 + 86400)])
    text = render(layout, [part], 1000.0, openmetrics=False).decode()
    assert 'd{a="x"} +Inf\n' in text
    assert 'd{a="y"} 1.0\n' in text


def test_a_credential_expiry_learnt_between_polls_shows_in_the_tenant_lines() -> None:
    store = SnapshotStore()
    lines = TenantLines(store)
    store.add_tenant("contoso", str(uuid.uuid4()), "global", ["ade"])
    changes: list[str] = []
    store.subscribe(lambda name, _: changes.append(name))
    changes.clear()  # subscribing shows the listener every tenant as it is
    store.record_credential_expiry("contoso", 2e9)
    store.record_credential_expiry("contoso", 2e9)  # unchanged: no re-render
    store.record_credential_expiry("gone", 1.0)  # not a tenant: ignored
    assert changes == ["contoso"]
    text = render(lines.layout, lines.parts(), NOW, openmetrics=False).decode()
    samples = samples_by_name(text)
    assert samples["intune_exporter_credential_expiry_timestamp_seconds"] == [
        ({"tenant": "contoso"}, 2e9)
    ]


def test_name_filter_keeps_only_the_named_families() -> None:
    _, lines = generated_store(3)
    body = render(
        lines.layout,
        lines.parts(),
        NOW,
        openmetrics=False,
        names=frozenset({"intune_tenant_up", "intune_ade_token_days_to_expiry"}),
    ).decode()
    assert set(samples_by_name(body)) == {"intune_tenant_up", "intune_ade_token_days_to_expiry"}
    assert len(samples_by_name(body)["intune_ade_token_days_to_expiry"]) == 9


def test_a_failed_collector_keeps_its_last_good_lines() -> None:
    store, lines = generated_store(2)
    from exporter.errors import PollError

    name = "tenant-00001"
    store.record_poll(name, {"ade": PollError("network", "down"), "vpp": ()}, NOW + 60, 0.1)
    samples = samples_by_name(render(lines.layout, lines.parts(), NOW, openmetrics=False).decode())
    ade_series = [s for s, _ in samples["intune_ade_token_info"] if s["tenant"] == name]
    vpp_series = [s for s, _ in samples["intune_vpp_token_info"] if s["tenant"] == name]
    assert len(ade_series) == 3  # kept through the failure
    assert vpp_series == []  # a successful poll that found none: gone
    assert one(samples, "intune_tenant_collector_up", tenant=name, collector="ade") == 0.0
    assert (
        one(
            samples,
            "intune_tenant_poll_errors_total",
            tenant=name,
            collector="ade",
            reason="network",
        )
        == 1.0
    )


def test_removed_tenant_lines_disappear() -> None:
    store, lines = generated_store(2)
    store.remove_tenant("tenant-00000")
    body = render(lines.layout, lines.parts(), NOW, openmetrics=False).decode()
    assert "tenant-00000" not in body
    assert "tenant-00001" in body


async def test_removed_token_disappears_after_the_next_successful_poll(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("Keep"), ade_item("Gone")])
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    assert len(samples_by_name(scrape_text(exporter))["intune_ade_token_info"]) == 2
    sim.ade_tokens = [ade_item("Keep")]
    await exporter.poll_all_once()
    samples = samples_by_name(scrape_text(exporter))
    names = [labels["token_name"] for labels, _ in samples["intune_ade_token_info"]]
    assert names == ["Keep"]


# --- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture
async def served(world: World) -> AsyncIterator[tuple[Exporter, str]]:
    world.add(
        "contoso",
        ade_tokens=[ade_item("Contoso iOS")],
        vpp_tokens=[vpp_item("Apps")],
        apns_certificate=apns_item(),
    )
    exporter = await world.exporter()
    await exporter.poll_all_once()
    app = build_app(exporter.store, exporter.lines, exporter_samples=exporter.exporter_samples)
    runner, port = await start_site(app, "127.0.0.1", 0)
    yield exporter, f"http://127.0.0.1:{port}"
    await runner.cleanup()


PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


async def test_content_negotiation_and_gzip(served: tuple[Exporter, str]) -> None:
    _, base = served
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"}) as r:
            assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert "Content-Encoding" not in r.headers
            plain = await r.read()
        headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
        async with http.get(f"{base}/metrics", headers=headers) as r:
            assert r.headers["Content-Type"].startswith(
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            )
            assert r.headers["Content-Encoding"] == "gzip"
            om = gzip.decompress(await r.read())
        async with http.get(
            f"{base}/metrics?name[]=intune_tenant_up", headers={"Accept-Encoding": "identity"}
        ) as r:
            only = (await r.read()).decode()
    assert om.endswith(b"# EOF\n")
    assert (
        parse(plain, openmetrics=False)["intune_tenant_up"]
        == parse(om, openmetrics=True)["intune_tenant_up"]
    )
    assert set(samples_by_name(only)) == {"intune_tenant_up"}


async def test_health_answers_while_a_scrape_is_rendering(
    served: tuple[Exporter, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base = served
    entered, release = threading.Event(), threading.Event()
    real_render = exposition.render_snapshot

    def slow_render(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)
        return real_render(*args, **kwargs)

    monkeypatch.setattr(server, "render_snapshot", slow_render)
    async with aiohttp.ClientSession() as http:
        scrape = asyncio.ensure_future(http.get(f"{base}/metrics"))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        # The render is stuck in its thread; the event loop still answers the probe.
        async with http.get(f"{base}/-/healthy") as r:
            assert (r.status, await r.text()) == (200, "Healthy\n")
        assert not scrape.done()
        release.set()
        async with await scrape as r:
            assert r.status == 200
            assert "intune_tenant_up" in await r.text()


def test_render_skips_nothing_for_parts_without_a_family() -> None:
    # A tenant with no ADE records has empty ADE lines; the family header still comes once.
    store, lines = generated_store(1)
    store.add_tenant("empty", str(uuid.uuid4()), "global", ["vpp"])
    body = render(lines.layout, lines.parts(), NOW, openmetrics=False).decode()
    assert body.count("# TYPE intune_ade_token_days_to_expiry gauge") == 1
    families: Iterator[Any] = text_string_to_metric_families(body)
    assert len({f.name for f in families}) == len(lines.layout.specs)


def test_joins_are_reused_until_a_part_of_that_family_changes() -> None:
    store, lines = generated_store(20)
    cache = lines.exposition
    first = cache.snapshot()
    assert all(family is None for family in first.families)
    _, joined = render_snapshot(first, NOW, openmetrics=False)
    cache.keep(first, joined)
    assert all(family is not None for family in cache.snapshot().families)
    # A poll that changes only the tenant's poll time and counters dirties only those families.
    name = "tenant-00003"
    store.record_poll(name, {"ade": store.tenant(name).collectors["ade"].records or ()}, NOW, 2)
    second = cache.snapshot()
    dirty = {lines.layout.specs[i].name for i, f in enumerate(second.families) if f is None}
    assert "intune_tenant_polls_total" in dirty
    assert "intune_tenant_poll_duration_seconds" in dirty
    assert "intune_ade_token_info" not in dirty
    assert "intune_ade_token_days_to_expiry" not in dirty
    again, joined = render_snapshot(second, NOW, openmetrics=False)
    cache.keep(second, joined)
    samples = samples_by_name(b"".join(again).decode())
    assert one(samples, "intune_tenant_polls_total", tenant=name) == 2.0
    assert one(samples, "intune_tenant_poll_duration_seconds", tenant=name) == 2.0
    # The cached and uncached renders agree.
    assert b"".join(again) == render(lines.layout, lines.parts(), NOW, openmetrics=False)


def test_a_join_made_while_a_part_changed_is_not_kept() -> None:
    store, lines = generated_store(3)
    cache = lines.exposition
    snapshot = cache.snapshot()
    _, joined = render_snapshot(snapshot, NOW, openmetrics=False)
    store.remove_tenant("tenant-00001")  # lands while the scrape was rendering
    cache.keep(snapshot, joined)
    body = b"".join(render_snapshot(cache.snapshot(), NOW, openmetrics=False)[0]).decode()
    assert "tenant-00001" not in body
    assert "tenant-00002" in body


async def test_a_change_shows_in_the_next_scrape_over_http(
    world: World, served: tuple[Exporter, str]
) -> None:
    exporter, base = served
    sim = world.cloud.tenants[world.tenants[0]["tenant_id"]]

    async def token_names() -> list[str]:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
            samples = samples_by_name(await r.text())
        return sorted(labels["token_name"] for labels, _ in samples["intune_ade_token_info"])

    assert await token_names() == ["Contoso iOS"]
    assert await token_names() == ["Contoso iOS"]  # from the kept joins
    sim.ade_tokens = [ade_item("Contoso iOS"), ade_item("Contoso Macs")]
    await exporter.poll_all_once()
    assert await token_names() == ["Contoso Macs", "Contoso iOS"]


def test_gzip_scrapes_reuse_compressed_families_until_they_change() -> None:
    store, lines = generated_store(20)
    cache = lines.exposition
    for openmetrics in (False, True):
        plain = render(lines.layout, lines.parts(), NOW, openmetrics=openmetrics)
        body, joined = render_snapshot(
            cache.snapshot(), NOW, openmetrics=openmetrics, compress=True
        )
        assert gzip.decompress(b"".join(body)) == plain
    cache.keep(cache.snapshot(), joined)
    kept = cache.snapshot().families
    info = lines.layout.index["intune_ade_token_info"]
    polls = lines.layout.index["intune_tenant_polls_total"]
    assert kept[info] is not None and kept[info].deflated is not None
    name = "tenant-00003"
    store.record_poll(name, {"ade": store.tenant(name).collectors["ade"].records or ()}, NOW, 2)
    second = cache.snapshot()
    assert second.families[polls] is None  # changed: joined and compressed again
    assert second.families[info] is kept[info]  # unchanged: its compressed lines are reused
    later = NOW + 3600  # the time-derived families are compressed per scrape, at its clock
    body, joined = render_snapshot(second, later, openmetrics=True, compress=True)
    text = gzip.decompress(b"".join(body))
    assert text == render(lines.layout, lines.parts(), later, openmetrics=True)
    samples = samples_by_name(text.decode())
    assert one(samples, "intune_tenant_polls_total", tenant=name) == 2.0
    cache.keep(second, joined)
    assert cache.snapshot().families[polls] is joined[polls]


def test_coalesce_passes_large_pieces_on_and_joins_runs_of_small_ones() -> None:
    large = b"L" * exposition.PASS_SIZE
    view = memoryview(b"V" * (exposition.PASS_SIZE + 5))[5:]
    small = [b"a" * 100, b"", memoryview(b"bcd"), b"e" * 200]
    many = [b"s" * 1000] * (exposition.WRITE_SIZE // 1000 + 10)
    chunks = exposition.coalesce([*small, large, view, *small, *many])
    assert b"".join(chunks) == b"".join([*small, large, view, *small, *many])
    # The large pieces are the very objects given (no copy); a run of small ones is joined
    # until it reaches WRITE_SIZE (so it ends less than one small piece past it).
    assert chunks[1] is large and chunks[2] is view
    assert chunks[0] == b"a" * 100 + b"bcd" + b"e" * 200
    assert exposition.WRITE_SIZE <= len(chunks[3]) < exposition.WRITE_SIZE + 1000
    assert len(chunks) == 5 and 0 < len(chunks[4]) < exposition.WRITE_SIZE
    assert exposition.coalesce([b"", b""]) == []


async def test_a_large_scrape_is_whole_in_both_encodings_and_a_hang_up_stops_the_writes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, lines = generated_store(1000)
    app = build_app(store, lines, clock=lambda: NOW)
    runner, port = await start_site(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            headers = {"Accept-Encoding": "identity"}
            async with http.get(f"{base}/metrics", headers=headers) as r:
                plain = await r.read()
            headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
            async with http.get(f"{base}/metrics", headers=headers) as r:
                om = gzip.decompress(await r.read())
            assert plain == render(lines.layout, lines.parts(), NOW, openmetrics=False)
            assert om == render(lines.layout, lines.parts(), NOW, openmetrics=True)
            assert len(plain) > 5_000_000  # hundreds of chunks, most of them passed on whole

            # A scraper that times out hangs up after the headers, mid-body (and a person
            # closing the status page).
            for path in ("/metrics", "/"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert (await reader.readline()).startswith(b"HTTP/1.1 200")
                writer.transport.abort()  # a reset, not an orderly close
            async with http.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"}) as r:
                assert await r.read() == plain
    finally:
        await runner.cleanup()
    # The writes stopped: no asyncio warning per chunk, no aiohttp error for writing to a
    # closed transport.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
