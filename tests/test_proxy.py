"""HTTPS_PROXY and NO_PROXY: Entra ID (MSAL) and Graph both go through the proxy, or neither."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from exporter.proxies import proxy_for

from .conftest import World
from .graph_data import ade_item


class ConnectProxy:
    """A CONNECT-only HTTP proxy on loopback that records the targets it tunnels to."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.authorizations: list[str | None] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://user:pa%40ss@127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        auth = next(
            (
                h.split(":", 1)[1].strip()
                for h in head[1:]
                if h.lower().startswith("proxy-authorization:")
            ),
            None,
        )
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            writer.close()
            return
        self.targets.append(target)
        self.authorizations.append(auth)
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    server = ConnectProxy()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
def _clean_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


async def test_entra_id_and_graph_go_through_https_proxy(
    world: World, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    world.add("contoso", ade_tokens=[ade_item("Contoso iOS")])
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    assert exporter.store.tenant("contoso").up
    target = world.cloud.base_url.removeprefix("https://")
    # One tunnel: MSAL's requests (discovery, then the token) and Graph's share the session's
    # pool, so they share the connection. It carries the proxy's credentials from the URL.
    assert proxy.targets == [target]
    assert proxy.authorizations == ["Basic dXNlcjpwYUBzcw=="]
    assert len(world.cloud.entra.discovery_requests) == 1
    assert len(world.cloud.token_requests) == 1
    assert world.cloud.requests_for(world.tenants[0]["tenant_id"])


async def test_entra_id_goes_through_the_proxy_when_graph_is_exempt(
    world: World, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entra ID's requests go through the proxy on their own: the authority is `localhost` and
    Graph `127.0.0.1`, which NO_PROXY exempts."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    world.add("contoso", ade_tokens=[ade_item("Contoso iOS")])
    base = world.cloud.base_url
    authority = base.replace("127.0.0.1", "localhost")
    exporter = await world.exporter(
        collect=["ade"],
        defaults={"authority_host": authority, "graph_endpoint": base, "ca_file": world.ca_file},
    )
    await exporter.poll_all_once()
    assert exporter.store.tenant("contoso").up
    # Discovery, then the token, both at the authority's host through one tunnel; Graph went
    # direct: no tunnel to its host.
    assert proxy.targets == [authority.removeprefix("https://")]
    assert proxy.authorizations == ["Basic dXNlcjpwYUBzcw=="]
    assert len(world.cloud.entra.discovery_requests) == 1
    assert len(world.cloud.token_requests) == 1
    assert world.cloud.requests_for(world.tenants[0]["tenant_id"])


async def test_no_proxy_exempts_the_hosts_it_names(
    world: World, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    world.add("contoso", ade_tokens=[ade_item("Contoso iOS")])
    exporter = await world.exporter(collect=["ade"])
    await exporter.poll_all_once()
    assert exporter.store.tenant("contoso").up
    assert proxy.targets == []


def test_proxy_for_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert proxy_for("https://graph.microsoft.com") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", ".internal.example,graph.microsoft.us")
    assert proxy_for("https://graph.microsoft.com") == "http://proxy.example:3128"
    assert proxy_for("https://login.internal.example/tenant") is None
    assert proxy_for("https://graph.microsoft.us") is None


async def test_entra_id_cookies_are_never_sent_back(world: World) -> None:
    """Entra ID sets cookies on its answers; MSAL's requests share the session with Graph's and
    with every other tenant's, so the session keeps none. The authority is `localhost`: a cookie
    jar keeps no cookies for an IP address, so on 127.0.0.1 this would prove nothing."""
    base = world.cloud.base_url
    for name in ("contoso", "fabrikam"):
        world.add(name, ade_tokens=[ade_item(f"{name} iOS")])
    exporter = await world.exporter(
        collect=["ade"],
        defaults={
            "authority_host": base.replace("127.0.0.1", "localhost"),
            "graph_endpoint": base,
            "ca_file": world.ca_file,
        },
    )
    await exporter.poll_all_once()
    assert exporter.store.tenant("contoso").up and exporter.store.tenant("fabrikam").up
    assert len(world.cloud.token_requests) == 2
    assert world.cloud.requests_with_cookies == 0
