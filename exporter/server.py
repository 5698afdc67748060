"""The HTTP side: /metrics, /-/healthy, /-/ready and the status page, on aiohttp."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.registry import CollectorRegistry

from .kinds import KINDS, CredentialKind
from .snapshot import SnapshotStore
from .status_page import render_status_page

DEFAULT_PORT: Final = 9893


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """Split Prometheus-style ``host:port`` (``:9893``, ``[::1]:9893``); no host means all."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"{address!r} is not host:port (for example :{DEFAULT_PORT})")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{address!r} has an invalid port {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{address!r}: port {port} is out of range")
    host = host.removeprefix("[").removesuffix("]")
    return (host or None), port


def build_app(
    store: SnapshotStore,
    registry: CollectorRegistry,
    *,
    collectors: Mapping[str, CredentialKind] = KINDS,
    middlewares: Sequence[Middleware] = (),
    clock: Callable[[], float] = time.time,
    healthy: Callable[[], bool] = lambda: True,
) -> web.Application:
    """The exporter's web application over a snapshot store and a metrics registry.

    `healthy` says whether polling still runs; `/-/healthy` turns 503 when it does not, so a
    liveness probe restarts an exporter whose data would otherwise silently freeze.
    """
    metrics_handler = make_aiohttp_handler(registry)

    async def health(request: web.Request) -> web.Response:
        if not healthy():
            return web.Response(status=503, text="Unhealthy: polling has stopped\n")
        return web.Response(text="Healthy\n")

    async def ready(request: web.Request) -> web.Response:
        if store.ready:
            return web.Response(text="Ready\n")
        tenants = store.view().tenants
        done = sum(1 for tenant in tenants if tenant.polled)
        return web.Response(
            status=503,
            text=f"Not ready: {done} of {len(tenants)} tenants have finished their first poll\n",
        )

    async def status(request: web.Request) -> web.Response:
        page = render_status_page(store.view(), collectors, clock())
        return web.Response(
            text=page,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    app = web.Application(middlewares=list(middlewares))
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/-/healthy", health)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/", status)
    return app


async def start_site(
    app: web.Application,
    host: str | None,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, int]:
    """Listen on `host:port`; returns the runner and the bound port (useful with port 0)."""
    # A short shutdown grace: SIGTERM must end the process within a few seconds.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    return runner, bound
