"""TLS connections read with the exporter's smaller asyncio read buffer (exporter.tls_buffers)."""

from __future__ import annotations

import hashlib
import ssl
from asyncio.sslproto import SSLProtocol
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from exporter import tls_buffers


@pytest.fixture
def small_read_buffer() -> Iterator[None]:
    before = SSLProtocol.max_size
    tls_buffers.limit()
    yield
    SSLProtocol.max_size = before


def test_limit_lowers_the_buffer_and_never_raises_it(small_read_buffer: None) -> None:
    assert SSLProtocol.max_size == tls_buffers.READ_BUFFER
    SSLProtocol.max_size = 4096
    tls_buffers.limit()
    assert SSLProtocol.max_size == 4096


async def test_an_answer_many_times_the_buffer_arrives_whole(
    small_read_buffer: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    buffers: list[int] = []  # each TLS connection's read buffer, as asyncio allocated it
    original = SSLProtocol.__init__

    def recording(self: SSLProtocol, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        buffers.append(len(self._ssl_buffer))  # type: ignore[attr-defined]

    monkeypatch.setattr(SSLProtocol, "__init__", recording)
    body = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(64 * 1024))  # 2 MiB
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/big", big)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # a fresh connection, then the kept one
                async with session.get(f"https://127.0.0.1:{port}/big", ssl=client_context) as r:
                    assert r.status == 200
                    assert await r.read() == body
    finally:
        await runner.cleanup()
    # One connection each side (the second request rode the kept one), both with small buffers.
    assert buffers == [tls_buffers.READ_BUFFER] * 2
