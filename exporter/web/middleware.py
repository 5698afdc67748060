"""The request side of the web config: allowed client SANs, rate limit, basic auth, headers.

Mirrors exporter-toolkit's ``web/handler.go``: the headers a web config may set
(``extraHTTPHeaders``, ``validateHeaderConfig``) and what ``webHandler.ServeHTTP`` does to each
request, as one aiohttp middleware.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .basic_auth import BasicAuth, TooBusy, parse_basic

# Paths that never need credentials: liveness probes (kubelet, Docker HEALTHCHECK) carry none.
OPEN_PATHS: Final = frozenset({"/-/healthy"})

REALM: Final = "intune-apple-token-exporter"

# The only headers the toolkit lets a web config set, with the values it allows (None: any).
_ALLOWED_HEADERS: Final[dict[str, frozenset[str] | None]] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}


def check_headers(headers: Mapping[str, str]) -> None:
    """Raise ValueError unless every header may be configured, with an allowed value."""
    for name, header_value in headers.items():
        if name not in _ALLOWED_HEADERS:
            raise ValueError(
                f"header {name!r} cannot be configured; allowed: {', '.join(_ALLOWED_HEADERS)}"
            )
        allowed = _ALLOWED_HEADERS[name]
        if allowed is not None and header_value.lower() not in allowed:
            raise ValueError(
                f"invalid value for header {name!r}; allowed: {', '.join(sorted(allowed))}"
            )


class TokenBucket:
    """The toolkit's rate limiter: one request per interval on average, bursts up to ``burst``."""

    def __init__(self, interval: float, burst: int) -> None:
        self._interval = interval
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def normalise_sans(sans: tuple[str, ...]) -> frozenset[str]:
    """The allowed client SANs, IP addresses written the way the peer's certificate shows them."""
    return frozenset(_normalise_san(s) for s in sans)


def _normalise_san(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


def _peer_sans(request: web.Request) -> set[str]:
    if request.transport is None:
        return set()
    ssl_object = request.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return set()
    cert = ssl_object.getpeercert()
    if not cert:
        return set()
    entries = cert.get("subjectAltName", ())
    return {_normalise_san(str(value)) for _kind, value in entries}


def build_middleware(
    auth: BasicAuth | None,
    allowed_sans: frozenset[str],
    headers: dict[str, str],
    bucket: TokenBucket | None,
) -> Middleware:
    """One aiohttp middleware applying the SAN check, the rate limit, basic auth and headers."""

    def plain(status: int, text: str, extra: Mapping[str, str] | None = None) -> web.Response:
        response = web.Response(status=status, text=text + "\n")
        response.headers.update(extra or {})
        return response

    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if allowed_sans and not (_peer_sans(request) & allowed_sans):
            # The toolkit ends the handshake here; Python's ssl has no hook for that, so the
            # request is refused instead, on every path.
            return plain(403, "Forbidden: client certificate SAN not allowed")
        if request.path in OPEN_PATHS:
            return await handler(request)
        if bucket is not None and not bucket.take():
            return plain(429, "Too Many Requests")
        if auth is not None:
            credentials = parse_basic(request.headers.get("Authorization"))
            try:
                ok = credentials is not None and await auth.check(*credentials)
            except TooBusy:
                return plain(429, "Too Many Requests", {"Retry-After": "1"})
            if not ok:
                return plain(
                    401,
                    "Unauthorized",
                    {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
                )
        return await handler(request)

    @web.middleware
    async def web_config_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await guard(request, handler)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        # A prepared (streamed) response has sent its headers already.
        if not response.prepared:
            response.headers.update(headers)
        return response

    return web_config_middleware
