"""The HTTP side: /metrics, /-/healthy, /-/ready and the status page, on aiohttp."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Final, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import gzip_accepted

from .exposition import coalesce, render_lines, render_snapshot, wants_openmetrics
from .kinds import KINDS, CredentialKind
from .memory import WORTH_TRIMMING, trim
from .metrics import TenantLines
from .records import Sample
from .snapshot import SnapshotStore
from .status_page import page_pieces

DEFAULT_PORT: Final = 9893
# Bytes of a body handed to the transport between two turns of the event loop: a turn per
# chunk cost 0.2-0.3 ms more per scrape at 1,000 tenants (side by side), where most chunks are
# tens of KB. (What the socket does not take at once, asyncio copies into its own buffer.)
YIELD_EVERY: Final = 256 * 1024
_T = TypeVar("_T")


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
    lines: TenantLines,
    *,
    exporter_samples: Callable[[], Iterable[Sample]] = lambda: (),
    kinds: Mapping[str, CredentialKind] = KINDS,
    middlewares: Sequence[Middleware] = (),
    clock: Callable[[], float] = time.time,
    health_problem: Callable[[], str | None] = lambda: None,
    reload: Callable[[], Awaitable[str | None]] | None = None,
    lifecycle: bool = False,
    discovery_summary: Callable[[], str | None] = lambda: None,
) -> web.Application:
    """The exporter's web application over a snapshot store and its rendered lines.

    `health_problem` says why the exporter is not healthy (None when it is); `/-/healthy` then
    turns 503, so a liveness probe restarts an exporter whose data would otherwise freeze.
    Rendering (metrics, the status page) and gzip run in a thread of their own: a health probe
    on the event loop answers while a large scrape renders.
    """
    render_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")

    async def in_thread(call: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(render_pool, call)

    async def send(
        request: web.Request, response: web.StreamResponse, chunks: list[bytes | memoryview]
    ) -> web.StreamResponse:
        """Write a body rendered in the render thread, chunk by chunk (an 80 MB body is not
        copied into one more buffer first), then give its memory back."""
        response.content_length = size = sum(map(len, chunks))
        await response.prepare(request)
        # HEAD: headers only. A StreamResponse sends whatever it is given, and a body after
        # HEAD's headers would be read by a keep-alive client as its next response.
        body = chunks if request.method != "HEAD" else []
        since_yield = 0
        for chunk in body:
            # A client that hung up (a scrape timeout): a failed send closes the transport at
            # once, and the loop sees a hang-up at the next yield. Stop writing then: aiohttp
            # raises on a write to a closing transport (logged as "Error handling request"),
            # and older versions had asyncio warn "socket.send() raised exception" per chunk.
            if request.transport is None or request.transport.is_closing():
                break
            await response.write(chunk)
            since_yield += len(chunk)
            # A write that does not fill the buffer does not yield: let probes in between.
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
        else:
            await response.write_eof()
        chunks.clear()  # the caller's list too: the body is gone before the trim
        if size >= WORTH_TRIMMING:
            # In the render thread, after the body's buffers are gone (exporter.memory): a
            # large scrape or status page would otherwise stay resident until the next one.
            render_pool.submit(trim)
        return response

    async def metrics(request: web.Request) -> web.StreamResponse:
        accept = ",".join(request.headers.getall("Accept", []))
        openmetrics, content_type = wants_openmetrics(accept)
        compress = gzip_accepted(request.headers.get("Accept-Encoding", ""))
        names = frozenset(request.query.getall("name[]")) if "name[]" in request.query else None
        # On the loop: a consistent set of references (and a few exporter-level lines); the
        # joining, formatting and gzip happen in the render thread.
        exposition = lines.exposition
        snapshot = exposition.snapshot()
        extra = render_lines(lines.layout, exporter_samples())
        chunks, joined = await in_thread(
            partial(
                render_snapshot,
                snapshot,
                clock(),
                openmetrics=openmetrics,
                names=names,
                extra=extra,
                compress=compress,
            )
        )
        exposition.keep(snapshot, joined)
        response = web.StreamResponse(headers={"Content-Type": content_type})
        if compress:
            response.headers["Content-Encoding"] = "gzip"
        return await send(request, response, chunks)

    async def health(request: web.Request) -> web.Response:
        problem = health_problem()
        if problem is not None:
            return web.Response(status=503, text=f"Unhealthy: {problem}\n")
        return web.Response(text="Healthy\n")

    async def ready(request: web.Request) -> web.Response:
        if store.ready:
            return web.Response(text="Ready\n")
        done, total = store.progress
        return web.Response(
            status=503,
            text=f"Not ready: {done} of {total} tenants have finished their first poll\n",
        )

    async def status(request: web.Request) -> web.StreamResponse:
        view = store.view()
        summary = discovery_summary()
        page = partial(
            page_pieces,
            view,
            kinds,
            clock(),
            summary,
            query=request.query.get("q", "")[:200],  # a filter, not a place for a document
            problems_only=request.query.get("problems", "") in ("1", "on", "true"),
        )
        # Encoded piece by piece and joined into write-sized chunks: no page-sized string.
        chunks = await in_thread(lambda: coalesce(piece.encode() for piece in page()))
        response = web.StreamResponse(
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )
        response.content_type = "text/html"
        response.charset = "utf-8"
        return await send(request, response, chunks)

    async def reload_config(request: web.Request) -> web.Response:
        # Prometheus's answers: 403 unless the lifecycle API is on, 500 with the reason.
        if not lifecycle or reload is None:
            return web.Response(status=403, text="Lifecycle API is not enabled.\n")
        problem = await reload()
        if problem is not None:
            return web.Response(status=500, text=f"failed to reload config: {problem}\n")
        return web.Response(text="config reloaded\n")

    async def stop_render_pool(app: web.Application) -> None:
        render_pool.shutdown(wait=False, cancel_futures=True)

    app = web.Application(middlewares=list(middlewares))
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", health)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/", status)
    app.router.add_post("/-/reload", reload_config)  # GET and others: 405
    app.on_cleanup.append(stop_render_pool)
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
