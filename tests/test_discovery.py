"""GDAP discovery of an MSP's customer tenants, against the simulated partner tenant."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from exporter.config import GdapDiscovery, TenantConfig, parse_config
from exporter.demo.simulator import GDAP_PATH, SimApp, SimTenant
from exporter.discovery import Customer, discovered_tenants
from exporter.kinds import KINDS
from exporter.service import Exporter

from .conftest import (
    CLIENT_ID,
    FAST_RETRY,
    SECRET,
    World,
    exposition,
    samples_by_name,
    status_page,
    tenant_guid,
)
from .graph_data import ade_item

PARTNER = tenant_guid("partner-msp")


def customer(name: str, tenant: str | None = None) -> dict[str, Any]:
    tenant_id = tenant or tenant_guid(name)
    return {"id": tenant_id, "tenantId": tenant_id, "displayName": name}


def partner(world: World, customers: list[dict[str, Any]]) -> SimTenant:
    sim = SimTenant(PARTNER, customers=customers)
    sim.apps[CLIENT_ID] = SimApp(CLIENT_ID, secret=SECRET)
    return world.cloud.add_tenant(sim)


def customer_tenant(world: World, name: str, *, consented: bool = True) -> SimTenant:
    """A customer's Intune data; without consent the app has no service principal there."""
    sim = SimTenant(tenant_guid(name), ade_tokens=[ade_item(f"{name} iPads")])
    if consented:
        sim.apps[CLIENT_ID] = SimApp(CLIENT_ID, secret=SECRET)
    return world.cloud.add_tenant(sim)


def config(world: World, **gdap: Any) -> Any:
    return world.config(
        collect=["ade"],
        discovery={
            "gdap": {
                "partner_tenant_id": PARTNER,
                "client_id": CLIENT_ID,
                "client_secret": SECRET,
                **gdap,
            }
        },
    )


async def started(world: World, **gdap: Any) -> Exporter:
    exporter = Exporter(config(world, **gdap), retry=FAST_RETRY)
    world.exporters.append(exporter)
    await exporter.open()
    assert await exporter.refresh_discovery() is gdap.pop("_expect", True)
    return exporter


def infos(exporter: Exporter) -> dict[str, dict[str, str]]:
    samples = samples_by_name(exposition(exporter))
    return {labels["tenant"]: labels for labels, _ in samples["intune_tenant_info"]}


def one(exporter: Exporter, name: str, **labels: str) -> float:
    samples = samples_by_name(exposition(exporter))
    (value,) = [v for ls, v in samples[name] if all(ls.get(k) == x for k, x in labels.items())]
    return value


async def test_customers_over_several_pages_filtered_by_include_and_exclude(world: World) -> None:
    bulk = [customer(f"Bulk {n:03d}") for n in range(650)]  # 3 pages of Graph's 300
    wanted = [customer("Contoso Ltd"), customer("Contoso Test"), customer("Fabrikam Inc")]
    partner(world, bulk + wanted)
    for name in ("Contoso Ltd", "Fabrikam Inc"):
        customer_tenant(world, name)
    exporter = await started(world, include=["^Contoso", "^Fabrikam"], exclude=["(?i)test"])
    requests = world.cloud.requests_for(PARTNER, GDAP_PATH)
    assert len(requests) == 3
    assert requests[0].query["$top"] == "300"
    assert requests[0].query["$select"] == "tenantId,displayName"
    assert set(infos(exporter)) == {"Contoso Ltd", "Fabrikam Inc"}
    assert infos(exporter)["Contoso Ltd"] == {
        "tenant": "Contoso Ltd",
        "tenant_id": tenant_guid("Contoso Ltd"),
        "cloud": "global",
        "source": "gdap",
    }
    await exporter.poll_all_once()
    assert exporter.store.tenant("Contoso Ltd").up and exporter.store.tenant("Fabrikam Inc").up
    assert one(exporter, "intune_discovery_up") == 1.0
    assert one(exporter, "intune_discovery_tenants") == 2.0
    assert one(exporter, "intune_discovery_refresh_interval_seconds") == 6 * 3600


def listed_with_gdap(*listed: tuple[str, str]) -> tuple[GdapDiscovery, tuple[TenantConfig, ...]]:
    """A loaded config with discovery and these (name, tenant id) tenants listed."""
    doc = {
        "tenants": [
            {"name": name, "tenant_id": tenant_id, "client_id": CLIENT_ID, "client_secret": "own"}
            for name, tenant_id in listed
        ],
        "discovery": {
            "gdap": {"partner_tenant_id": PARTNER, "client_id": CLIENT_ID, "client_secret": "p"}
        },
    }
    loaded = parse_config(doc, "test.yaml")
    assert loaded.gdap is not None
    return loaded.gdap, loaded.tenants


def test_duplicate_names_and_a_configured_tenant_that_wins() -> None:
    gdap, listed = listed_with_gdap(
        ("contoso-own", tenant_guid("Contoso")), ("Woodgrove", tenant_guid("woodgrove-listed"))
    )
    customers = [
        Customer(tenant_guid("Contoso"), "Contoso"),  # listed under its own name: not twice
        Customer(tenant_guid("a"), "Adatum"),
        Customer(tenant_guid("b"), "Adatum"),
        Customer(tenant_guid("w"), "Woodgrove"),  # a listed tenant's name, another directory
    ]
    found = discovered_tenants(gdap, customers, listed)
    assert [t.name for t in found] == [
        f"Adatum ({tenant_guid('a')[:8]})",
        f"Adatum ({tenant_guid('b')[:8]})",
        f"Woodgrove ({tenant_guid('w')[:8]})",
    ]
    assert {t.source for t in found} == {"gdap"}
    # Stable: the same names whatever order Graph lists them in.
    again = discovered_tenants(gdap, customers[::-1], listed)
    assert sorted(t.name for t in again) == sorted(t.name for t in found)


async def test_the_next_refresh_adds_and_removes_customers(world: World) -> None:
    sim = partner(world, [customer("Contoso Ltd"), customer("Fabrikam Inc")])
    for name in ("Contoso Ltd", "Fabrikam Inc", "Northwind"):
        customer_tenant(world, name)
    exporter = await started(world)
    await exporter.poll_all_once()
    sim.customers = [customer("Contoso Ltd"), customer("Northwind")]
    assert await exporter.refresh_discovery()
    assert set(infos(exporter)) == {"Contoso Ltd", "Northwind"}
    samples = samples_by_name(exposition(exporter))
    ade = samples["intune_ade_token_info"]
    assert not [labels for labels, _ in ade if labels["tenant"] == "Fabrikam Inc"]
    assert exporter.store.tenant("Contoso Ltd").up  # unchanged: kept its state


async def test_a_failed_refresh_keeps_every_tenant(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    from exporter.demo.simulator import Fault

    partner(world, [customer("Contoso Ltd")])
    customer_tenant(world, "Contoso Ltd")
    exporter = await started(world)
    await exporter.poll_all_once()
    world.cloud.fail_next(PARTNER, GDAP_PATH, *[Fault(403)] * 4)
    with caplog.at_level(logging.WARNING):
        assert not await exporter.refresh_discovery()
    assert set(infos(exporter)) == {"Contoso Ltd"}
    assert one(exporter, "intune_discovery_up") == 0.0
    assert one(exporter, "intune_discovery_errors_total", reason="forbidden") == 1.0
    assert one(exporter, "intune_discovery_last_success_timestamp_seconds") <= time.time()
    assert "GDAP discovery failed; the tenants found before stay" in caplog.text
    assert SECRET not in caplog.text


async def test_a_discovery_that_never_succeeds_leaves_the_listed_tenants(world: World) -> None:
    world.add("listed", ade_tokens=[ade_item("Listed iPads")])  # no partner tenant in the fake
    exporter = Exporter(config(world), retry=FAST_RETRY)
    world.exporters.append(exporter)
    await exporter.open()
    assert not await exporter.refresh_discovery()
    assert set(infos(exporter)) == {"listed"}
    assert infos(exporter)["listed"]["source"] == "config"
    samples = samples_by_name(exposition(exporter))
    assert "intune_discovery_last_success_timestamp_seconds" not in samples
    assert one(exporter, "intune_discovery_up") == 0.0


async def test_a_customer_without_consent_is_down_with_the_reason_in_words(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    partner(world, [customer("Contoso Ltd"), customer("No Consent Co")])
    customer_tenant(world, "Contoso Ltd")
    customer_tenant(world, "No Consent Co", consented=False)
    exporter = await started(world)
    with caplog.at_level(logging.WARNING):
        await exporter.poll_all_once()
    assert exporter.store.tenant("Contoso Ltd").up
    refused = exporter.store.tenant("No Consent Co")
    assert not refused.up
    error = refused.collectors["ade"].last_error
    assert error is not None and error.reason == "auth"
    assert "admin consent is missing" in str(error)
    page = status_page(exporter.store.view(), KINDS, time.time(), exporter.discovery_summary())
    assert "admin consent is missing" in page
    assert "<td>GDAP discovery</td>" in page  # where the tenant came from
    assert f"GDAP discovery (partner {PARTNER}): up, 2 customers" in page
    assert SECRET not in page and SECRET not in caplog.text


def test_long_display_names_are_cut_before_they_are_made_unique() -> None:
    """Entra allows 256 characters, a tenant name 128: cut first (never ending on a space),
    then judge uniqueness on what is used, and never shadow a configured tenant."""
    long_name = "A" * 127 + " Holdings"
    twin = "B" * 130  # two customers whose names differ only past 128 characters
    configured_name = "C" * 128
    gdap, listed = listed_with_gdap((configured_name, tenant_guid("c-listed")))
    customers = [
        Customer(tenant_guid("long"), long_name),
        Customer(tenant_guid("b1"), twin + "X"),
        Customer(tenant_guid("b2"), twin + "Y"),
        Customer(tenant_guid("c"), configured_name + "DE"),  # cut, it is the configured name
    ]
    found = {t.tenant_id: t.name for t in discovered_tenants(gdap, customers, listed)}
    assert found[tenant_guid("long")] == "A" * 127  # cut at 128, the trailing space dropped
    suffixed = 128 - len(" (12345678)")
    assert found[tenant_guid("b1")] == f"{'B' * suffixed} ({tenant_guid('b1')[:8]})"
    assert found[tenant_guid("b2")] == f"{'B' * suffixed} ({tenant_guid('b2')[:8]})"
    assert found[tenant_guid("c")] == f"{'C' * suffixed} ({tenant_guid('c')[:8]})"
    assert all(len(name) <= 128 for name in found.values())
    assert configured_name not in found.values()


async def test_with_discovery_only_ready_waits_for_the_first_discovery(world: World) -> None:
    partner(world, [customer("Contoso Ltd")])
    customer_tenant(world, "Contoso Ltd")
    exporter = Exporter(config(world), retry=FAST_RETRY)
    world.exporters.append(exporter)
    assert exporter.tenants == ()
    assert not exporter.store.ready  # no tenant yet, but discovery has not answered

    await exporter.open()
    assert await exporter.refresh_discovery()
    assert not exporter.store.ready  # found one: ready once it is polled
    await exporter.poll_all_once()
    assert exporter.store.ready


async def test_a_crash_inside_discovery_is_counted_and_discovery_goes_on(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    partner(world, [customer("Contoso Ltd")])
    customer_tenant(world, "Contoso Ltd")
    exporter = await started(world)
    assert set(infos(exporter)) == {"Contoso Ltd"}

    async def broken(client: object) -> list[Customer]:
        raise RuntimeError("a bug")

    monkeypatch.setattr("exporter.service.fetch_customers", broken)
    with caplog.at_level(logging.ERROR, logger="exporter.service"):
        assert await exporter.refresh_discovery() is False
    assert "GDAP discovery crashed" in caplog.text
    assert exporter.discovery is not None and not exporter.discovery.up
    assert one(exporter, "intune_discovery_errors_total", reason="invalid_response") == 1
    assert set(infos(exporter)) == {"Contoso Ltd"}  # the tenants found before stay
    monkeypatch.undo()
    assert await exporter.refresh_discovery()
    assert exporter.discovery.up


async def test_discovery_turned_on_by_a_reload_keeps_refreshing(world: World) -> None:
    partner(world, [customer("Contoso Ltd")])
    customer_tenant(world, "Contoso Ltd")
    world.add("fabrikam", ade_tokens=[ade_item("fabrikam iPads")])
    exporter = Exporter(world.config(collect=["ade"]), retry=FAST_RETRY)
    world.exporters.append(exporter)
    await exporter.start()
    assert exporter._discovery_task is None  # no discovery configured

    await exporter.apply(config(world))
    assert await exporter.refresh_discovery()  # as a reload does after apply()
    task = exporter._discovery_task
    assert task is not None and not task.done()  # the refresh timer runs from now on
    assert "Contoso Ltd" in infos(exporter)

    await exporter.apply(world.config(collect=["ade"]))  # and off again
    assert set(infos(exporter)) == {"fabrikam"}
