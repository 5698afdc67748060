"""Graph and Entra edge cases that must never turn a real problem into silence or a wrong page."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exporter import graph as graph_module
from exporter.auth import AuthSettings, ClientSecret, ClientSecretFile, MsalTokenProvider
from exporter.demo.simulator import ADE_PATH, APNS_PATH, VPP_PATH, Fault, TokenFault
from exporter.errors import GraphError, PollError
from exporter.graph import GraphClient
from exporter.msal_http import MsalHttpClient
from exporter.scheduler import Scheduler
from exporter.server import build_app, start_site
from exporter.service import Exporter
from exporter.tls import client_ssl_context

from .conftest import CLIENT_ID, SECRET, World, exposition, one, samples_by_name
from .graph_data import ade_item, apns_item, vpp_item


def collector_error(exporter: Exporter, tenant: str, collector: str) -> PollError:
    error = exporter.store.tenant(tenant).collectors[collector].last_error
    assert error is not None
    return error


# --- the simulator answers as Graph does ------------------------------------------------------


async def test_an_unknown_select_property_is_graphs_400(world: World, ca_file: Path) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    graph: GraphClient = exporter._scheduler._pollers["contoso"]._graph  # type: ignore[assignment]
    with pytest.raises(GraphError) as caught:
        await graph.get_collection(ADE_PATH, ("id", "tokenNmae"))
    assert caught.value.status == 400
    assert caught.value.code == "BadRequest"
    assert caught.value.graph_message == (
        "Could not find a property named 'tokenNmae' on type "
        "'microsoft.graph.depOnboardingSetting'."
    )
    # Graph's headers come with every answer.
    (first, *_, last) = world.cloud.requests_for(sim.tenant_id, ADE_PATH)
    assert last.status == 400 and first.status == 200


async def test_select_returns_only_the_selected_properties(world: World) -> None:
    world.add("contoso", vpp_tokens=[vpp_item("V")])
    exporter = await world.exporter(collect=["vpp"])
    await exporter.poll_all_once()
    graph: GraphClient = exporter._scheduler._pollers["contoso"]._graph  # type: ignore[assignment]
    (item,) = await graph.get_collection(VPP_PATH, ("displayName",))
    # id and @odata.type always come; nothing else was asked for, not even the secret.
    assert set(item) == {"@odata.type", "id", "displayName"}


async def test_graph_answers_carry_request_ids(world: World) -> None:
    world.add("contoso", ade_tokens=[ade_item("A")])
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    token = next(iter(world.cloud.entra.tokens))
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{world.cloud.base_url}{ADE_PATH}",
            headers={"Authorization": f"Bearer {token}", "client-request-id": "mine-123"},
            ssl=client_ssl_context(world.ca_file),
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["client-request-id"] == "mine-123"
        assert len(response.headers["request-id"]) == 36


@pytest.mark.parametrize(
    ("form", "error", "code"),
    [
        ({"grant_type": "password"}, "unsupported_grant_type", 70003),
        ({"scope": "https://graph.microsoft.com/.default"}, "invalid_scope", 1002012),
        (
            {"client_assertion": "x.y.z", "client_assertion_type": "jwt"},
            "invalid_request",
            50027,
        ),
    ],
)
async def test_the_token_endpoint_checks_as_entra_does(
    world: World, form: dict[str, str], error: str, code: int
) -> None:
    sim = world.add("contoso")
    request = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "scope": f"{world.cloud.base_url}/.default",
        **form,
    }
    if "client_assertion" not in form:
        request["client_secret"] = SECRET
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{world.cloud.base_url}/{sim.tenant_id}/oauth2/v2.0/token",
            data=request,
            ssl=client_ssl_context(world.ca_file),
        ) as response,
    ):
        body = await response.json()
    assert response.status == 400
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")


# --- paging ----------------------------------------------------------------------------------


async def test_next_link_is_followed_byte_for_byte(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item(f"T{n}") for n in range(7)], page_size=3)
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    requests = world.cloud.requests_for(sim.tenant_id, ADE_PATH)
    assert [r.status for r in requests] == [200, 200, 200]
    # The skip token's escapes reached Graph exactly as Graph wrote them.
    for request in requests[1:]:
        assert "%2c%27RowKey%27%3a%24" in request.raw_path
    assert len(samples_by_name(exposition(exporter))["intune_ade_token_info"]) == 7


async def test_a_re_encoded_next_link_is_refused_by_the_simulator(world: World) -> None:
    # The check the test above relies on: a client that re-quotes the link gets Graph's 400.
    world.add("contoso", ade_tokens=[ade_item(f"T{n}") for n in range(4)], page_size=3)
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    token = next(iter(world.cloud.entra.tokens))
    ssl = client_ssl_context(world.ca_file)
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{world.cloud.base_url}{ADE_PATH}", headers=headers, ssl=ssl) as r:
            link = (await r.json())["@odata.nextLink"]
        requoted = link.replace("%2c", "%2C")
        async with http.get(requoted, headers=headers, ssl=ssl) as r:
            assert r.status == 400
            assert "Invalid $skiptoken" in (await r.json())["error"]["message"]


@pytest.mark.parametrize(
    ("base", "link", "allowed"),
    [
        (
            "https://graph.microsoft.com:443",
            "https://graph.microsoft.com/beta/x?$skiptoken=1",
            True,
        ),
        ("https://graph.microsoft.com", "https://GRAPH.microsoft.com:443/beta/x", True),
        ("https://graph.microsoft.com", "https://graph.microsoft.com:8443/beta/x", False),
        ("https://graph.microsoft.com", "http://graph.microsoft.com/beta/x", False),
        ("https://graph.microsoft.com", "https://evil.example/beta/x", False),
    ],
)
async def test_next_link_origin_is_compared_with_default_ports(
    base: str, link: str, allowed: bool
) -> None:
    async with aiohttp.ClientSession() as session:
        client = GraphClient(session, base, tokens=None, timeout=5)  # type: ignore[arg-type]
        if allowed:
            followed = client._checked_next_link("/beta/x", link)
            assert (followed.raw_path, followed.raw_query_string) == (
                link.split("/", 3)[3].partition("?")[0].join(["/", ""]),
                link.partition("?")[2],
            )
        else:
            with pytest.raises(PollError, match="points outside"):
                client._checked_next_link("/beta/x", link)


@pytest.mark.parametrize("chunked", [False, True], ids=["announced", "chunked"])
async def test_a_body_past_the_cap_is_an_invalid_response(
    world: World, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    monkeypatch.setattr(graph_module, "MAX_BODY", 10_000)
    sim = world.add("contoso", ade_tokens=[ade_item("A")], apns_certificate=apns_item())
    huge = b'{"value": [' + b'{"id": "x"},' * 2000 + b'{"id": "y"}]}'
    world.cloud.fail_next(sim.tenant_id, ADE_PATH, Fault(200, body=huge, chunked=chunked))
    exporter = await world.exporter(collect=["ade", "apns"])
    await exporter.poll_all_once()
    error = collector_error(exporter, "contoso", "ade")
    assert error.reason == "invalid_response"
    assert "larger than 10,000 bytes" in error.message
    assert exporter.store.tenant("contoso").collectors["apns"].up


# --- a beta property Graph stops accepting ------------------------------------------------------


async def test_a_withdrawn_property_degrades_ade_visibly(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.add("contoso", ade_tokens=[ade_item("A", devices=7)])
    world.cloud.withdrawn["depOnboardingSetting"] = frozenset({"syncedDeviceCount"})
    exporter = await world.exporter(collect=["ade"])
    with caplog.at_level(logging.WARNING):
        await exporter.poll_all_once()
    state = exporter.store.tenant("contoso").collectors["ade"]
    assert state.up
    assert state.notes == (
        f"Graph no longer accepts the property 'syncedDeviceCount' of {ADE_PATH}; "
        "read without $select",
    )
    assert any("syncedDeviceCount" in r.getMessage() for r in caplog.records)
    samples = samples_by_name(exposition(exporter))
    assert one(samples, "intune_ade_token_days_to_expiry", token_name="A") > 0
    assert "intune_ade_token_synced_devices" not in samples
    from exporter.kinds import KINDS

    from .conftest import status_page

    page = status_page(exporter.store.view(), KINDS, 0)
    assert "no longer accepts the property &#x27;syncedDeviceCount&#x27;" in page


async def test_vpp_never_reads_without_select(world: World) -> None:
    sim = world.add("contoso", vpp_tokens=[vpp_item("V")])
    world.cloud.withdrawn["vppToken"] = frozenset({"locationName"})
    exporter = await world.exporter(collect=["vpp"])
    await exporter.poll_all_once()
    error = collector_error(exporter, "contoso", "vpp")
    assert error.reason == "http" and "locationName" in error.message
    # No request without $select: that would have fetched the secret `token`.
    assert all("$select" in r.query for r in world.cloud.requests_for(sim.tenant_id, VPP_PATH))


# --- Entra ID answers that are not the credential's fault -----------------------------------------


@pytest.mark.parametrize(
    ("fault", "reason", "gist"),
    [
        (TokenFault(429, headers={"Retry-After": "30"}), "throttled", "retry after 30s"),
        (TokenFault(400, body={"error": "temporarily_unavailable"}), "throttled", ""),
        (TokenFault(503), "network", "HTTP Error: 503"),
        (TokenFault(500), "network", "failed"),
        (TokenFault(429, body="<html>Too many</html>"), "throttled", "HTTP 429"),
        (TokenFault(200, body="<html>Proxy login</html>"), "invalid_response", "not JSON"),
    ],
    ids=["429-json", "temporarily-unavailable", "503", "500", "429-html", "proxy-page"],
)
async def test_entra_outages_and_throttling_are_not_auth_failures(
    world: World,
    caplog: pytest.LogCaptureFixture,
    fault: TokenFault,
    reason: str,
    gist: str,
) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    world.cloud.fail_next_token(sim.tenant_id, fault)
    exporter = await world.exporter(collect=["ade"])
    with caplog.at_level(logging.DEBUG):
        await exporter.poll_all_once()
    error = collector_error(exporter, "contoso", "ade")
    assert error.reason == reason
    assert gist in error.message
    samples = samples_by_name(exposition(exporter))
    auth_errors = one(
        samples, "intune_tenant_poll_errors_total", tenant="contoso", collector="ade", reason="auth"
    )
    assert auth_errors == 0.0  # IntuneExporterAuthFailing stays quiet
    # A proxy's page never floods the log, and never with a traceback.
    assert not any("<html>" in r.getMessage() or r.exc_info for r in caplog.records)


async def test_a_refused_credential_stays_auth(world: World) -> None:
    world.add("contoso", ade_tokens=[ade_item("A")], credential={"client_secret": "wrong-Zz1"})
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    error = collector_error(exporter, "contoso", "ade")
    assert error.reason == "auth" and "AADSTS7000215" in error.message


@pytest.mark.parametrize(
    ("fault", "gist"),
    [
        (TokenFault(404, body="<html>Not here</html>"), "OIDC discovery failed"),
        (TokenFault(503), "failed OIDC discovery"),
    ],
)
async def test_a_failed_authority_discovery_says_what_went_wrong(
    world: World, fault: TokenFault, gist: str
) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")])
    world.cloud.fail_next_discovery(sim.tenant_id, fault)
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    error = collector_error(exporter, "contoso", "ade")
    assert gist in error.message
    assert error.reason == ("network" if fault.status >= 500 else "auth")


async def test_an_unreadable_secret_file_does_not_fail_once_it_was_read(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    sim = world.add(
        "contoso", ade_tokens=[ade_item("A")], credential={"client_secret_file": str(secret_file)}
    )
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    secret_file.unlink()  # a Kubernetes Secret being recreated
    world.cloud.expire_tokens(sim.tenant_id)  # and a new token is needed right then
    with caplog.at_level(logging.WARNING):
        await exporter.poll_all_once()
    assert exporter.store.tenant("contoso").up
    assert any(
        "cannot be read; using the one read before" in r.getMessage() for r in caplog.records
    )


async def test_msal_calls_have_a_total_deadline(world: World, msal_http: MsalHttpClient) -> None:
    sim = world.add("contoso")
    world.cloud.fail_next_token(sim.tenant_id, TokenFault(200, wait=asyncio.Event()))  # hangs
    settings = AuthSettings(
        "contoso",
        f"{world.cloud.base_url}/{sim.tenant_id}",
        CLIENT_ID,
        f"{world.cloud.base_url}/.default",
        ClientSecret(SECRET),
        deadline=0.5,
    )
    pool = ThreadPoolExecutor(2)
    tokens = MsalTokenProvider(settings, http_client=msal_http, executor=pool)
    with pytest.raises(PollError) as caught:
        await tokens.token()
    assert caught.value.reason == "timeout"
    assert "within 0.5s" in caught.value.message
    pool.shutdown(wait=False, cancel_futures=True)  # the abandoned call never blocks this


async def test_the_msal_client_is_let_go_once_it_has_given_a_token(
    world: World, msal_http: MsalHttpClient, tmp_path: Path
) -> None:
    sim = world.add("contoso")
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    settings = AuthSettings(
        "contoso",
        f"{world.cloud.base_url}/{sim.tenant_id}",
        CLIENT_ID,
        f"{world.cloud.base_url}/.default",
        ClientSecretFile(secret_file),
    )
    now = [1000.0]
    pool = ThreadPoolExecutor(2)
    tokens = MsalTokenProvider(
        settings,
        http_client=msal_http,
        executor=pool,
        clock=lambda: now[0],
    )
    entra = world.cloud.entra
    try:
        first = await tokens.token()
        assert tokens._app is None  # nothing of MSAL's kept per tenant between tokens
        assert (len(entra.discovery_requests), len(entra.token_requests)) == (1, 1)
        assert await tokens.token() == first  # held until shortly before it expires
        assert (len(entra.discovery_requests), len(entra.token_requests)) == (1, 1)
        now[0] += 3600  # past its use-by time: a new client, from the credential read before
        second = await tokens.token()
        assert second != first
        assert tokens._app is None
        assert (len(entra.discovery_requests), len(entra.token_requests)) == (2, 2)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# --- hung polls and liveness --------------------------------------------------------------------


async def test_a_hung_graph_call_ends_at_the_poll_deadline(world: World) -> None:
    sim = world.add("contoso", ade_tokens=[ade_item("A")], apns_certificate=apns_item())
    world.cloud.fail_next(sim.tenant_id, APNS_PATH, Fault(200, wait=asyncio.Event()))
    # The request timeout would wait a minute; the poll's deadline (its interval) is 1 s.
    exporter = await world.exporter(
        collect=["ade", "apns"], poll_interval="1s", request_timeout="60s"
    )
    await exporter.poll_all_once()
    error = collector_error(exporter, "contoso", "apns")
    assert error.reason == "timeout"
    assert "deadline of 1s" in error.message
    assert exporter.store.tenant("contoso").collectors["ade"].up


async def test_healthy_turns_503_when_no_poll_finishes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.add("contoso", ade_tokens=[ade_item("A")])
    now = [1000.0]
    stuck = asyncio.Event()

    async def hang(self: Scheduler, poller: Any) -> None:
        await stuck.wait()  # a scheduler whose polls never end, deadlines or not

    monkeypatch.setattr(Scheduler, "_poll", hang)
    exporter = Exporter(world.config(collect=["ade"], poll_interval="10m"), clock=lambda: now[0])
    world.exporters.append(exporter)
    app = build_app(exporter.store, exporter.lines, health_problem=exporter.health_problem)
    runner, port = await start_site(app, "127.0.0.1", 0)
    try:
        await exporter.start()
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/-/healthy"
            now[0] += 2 * 600 + 600 - 1  # two intervals and the deadline, less a second
            async with http.get(url) as response:
                assert response.status == 200
            now[0] += 2
            async with http.get(url) as response:
                assert response.status == 503
                text = await response.text()
        assert "no poll of any tenant has finished for 1801s" in text
    finally:
        stuck.set()
        await runner.cleanup()


async def test_healthy_turns_503_when_polling_has_died(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.add("contoso", ade_tokens=[ade_item("A")])

    async def crash(self: Scheduler) -> None:
        raise RuntimeError("the scheduler's bug")

    monkeypatch.setattr(Scheduler, "run", crash)
    exporter = Exporter(world.config(collect=["ade"]))
    world.exporters.append(exporter)
    app = build_app(exporter.store, exporter.lines, health_problem=exporter.health_problem)
    runner, port = await start_site(app, "127.0.0.1", 0)
    try:
        await exporter.start()
        assert exporter._task is not None
        with pytest.raises(RuntimeError):
            await exporter._task
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/-/healthy") as response,
        ):
            assert response.status == 503
            assert await response.text() == "Unhealthy: polling has stopped\n"
    finally:
        await runner.cleanup()


# --- records without the field the exporter exists for ----------------------------------------


async def test_a_token_without_an_expiry_is_counted_and_shown(world: World) -> None:
    no_expiry = ade_item("No Expiry")
    no_expiry["tokenExpirationDateTime"] = None
    vpp_no_expiry = vpp_item("VPP No Expiry")
    del vpp_no_expiry["expirationDateTime"]
    world.add(
        "contoso",
        ade_tokens=[ade_item("Fine"), no_expiry],
        vpp_tokens=[vpp_no_expiry],
        apns_certificate=apns_item(),
    )
    exporter = await world.exporter()
    await exporter.poll_all_once()
    samples = samples_by_name(exposition(exporter))
    incomplete = "intune_tenant_incomplete_records"
    assert one(samples, incomplete, tenant="contoso", collector="ade") == 1.0
    assert one(samples, incomplete, tenant="contoso", collector="vpp") == 1.0
    assert one(samples, incomplete, tenant="contoso", collector="apns") == 0.0
    # Never dropped silently: still a token, still on the page, flagged.
    names = {labels["token_name"] for labels, _ in samples["intune_ade_token_info"]}
    assert names == {"Fine", "No Expiry"}
    from exporter.kinds import KINDS

    from .conftest import status_page

    page = status_page(exporter.store.view(), KINDS, 0)
    row = page[page.index("No Expiry") :].split("</tr>")[0]
    assert "expiry unknown: Graph sent no expiry date" in row
