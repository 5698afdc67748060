"""A simulated Microsoft cloud: Entra ID and the Graph resources the exporter reads, over TLS.

It follows Microsoft's documented wire formats and is as strict as Graph where the exporter's
mistakes would hide: `$select` and `$expand` are checked against each resource type's
properties (`graph_schema`), an `@odata.nextLink` must come back byte for byte as it was given
(its skip token carries percent-escapes a client must not re-encode), answers carry
`request-id` and `client-request-id`, and errors use Graph's JSON with Intune's nested message.
`--demo` runs on it, and so does the test suite, with its faults and its request log.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import trustme
from aiohttp import web

from .entra import REQUEST_LOG_SIZE, EntraFake, SimApp, TokenFault, TokenRequest
from .graph_schema import (
    INTUNE_FORBIDDEN_MESSAGE,
    QueryError,
    graph_error_body,
    intune_nested_message,
    iso,
    parse_expand,
    parse_select,
    project,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ADE_PATH: Final = "/beta/deviceManagement/depOnboardingSettings"
VPP_PATH: Final = "/beta/deviceAppManagement/vppTokens"
APNS_PATH: Final = "/beta/deviceManagement/applePushNotificationCertificate"
GDAP_PATH: Final = "/v1.0/tenantRelationships/delegatedAdminCustomers"
DEFAULT_NAVIGATIONS: Final = {
    "ios": "defaultIosEnrollmentProfile",
    "macos": "defaultMacOsEnrollmentProfile",
    "tvos": "defaultTvOSEnrollmentProfile",
    "visionos": "defaultVisionOSEnrollmentProfile",
}
GDAP_MAX_TOP: Final = 300

__all__ = [
    "ADE_PATH",
    "APNS_PATH",
    "GDAP_PATH",
    "INTUNE_FORBIDDEN_MESSAGE",
    "VPP_PATH",
    "Fault",
    "GraphRequest",
    "SimApp",
    "SimTenant",
    "SimulatedCloud",
    "TokenFault",
    "TokenRequest",
    "devices_path",
    "graph_error_body",
    "intune_nested_message",
    "iso",
]


def devices_path(token_id: str) -> str:
    """The imported Apple devices of one ADE token."""
    return f"{ADE_PATH}/{token_id}/importedAppleDeviceIdentities"


@dataclass
class Fault:
    """A canned answer for the next matching Graph request."""

    status: int = 503
    body: Any = None  # dict -> JSON, bytes/str -> raw, None -> Graph error body for status
    headers: dict[str, str] = field(default_factory=dict)
    wait: asyncio.Event | None = None  # answer only once this is set (a hanging Graph)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set when it is used
    chunked: bool = False  # no Content-Length: the body's size is known only once read
    # Only for a request whose query this accepts (two collectors read one path with different
    # queries); the others pass it by.
    when: Callable[[Mapping[str, str]], bool] | None = None


@dataclass
class SimTenant:
    """A tenant's Intune data (and, for a partner, its GDAP customers)."""

    tenant_id: str
    ade_tokens: list[dict[str, Any]] = field(default_factory=list)
    vpp_tokens: list[dict[str, Any]] = field(default_factory=list)
    apns_certificate: dict[str, Any] | None = None
    # ADE token id -> its imported devices; and -> platform -> default profile (None: unset).
    devices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    default_profiles: dict[str, dict[str, dict[str, Any] | None]] = field(default_factory=dict)
    customers: list[dict[str, Any]] = field(default_factory=list)
    page_size: int = 100
    device_page_size: int = 1000
    apps: dict[str, SimApp] = field(default_factory=dict)
    token_lifetime: int = 3599


@dataclass(frozen=True)
class GraphRequest:
    """One Graph request, as the fake saw it."""

    tenant_id: str | None
    path: str
    query: dict[str, str]
    token: str
    at: float  # time.monotonic()
    status: int
    raw_path: str = ""  # path and query exactly as sent


class SimulatedCloud:
    """Entra ID + Graph for any number of simulated tenants, on one loopback TLS server."""

    def __init__(self, latency: float = 0.0, entra_latency: float = 0.0) -> None:
        self.tenants: dict[str, SimTenant] = {}
        self.latency = latency  # added to each Graph request (benchmarks)
        self.entra_latency = entra_latency  # added to each Entra ID request (benchmarks)
        self.requests_with_cookies = 0  # Entra ID or Graph requests that carried a Cookie
        # Properties Graph no longer serves, by resource type (a withdrawn beta property).
        self.withdrawn: dict[str, frozenset[str]] = {}
        self.graph_requests: deque[GraphRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self._faults: dict[tuple[str, str], deque[Fault]] = defaultdict(deque)
        self._issued_links: set[str] = set()
        self._ca = trustme.CA()
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.entra = EntraFake(
            lambda tid: self.tenants[tid].apps if tid in self.tenants else None,
            lambda tid: self.tenants[tid].token_lifetime,
            lambda: self.base_url,
        )

    # --- set-up --------------------------------------------------------------------------------

    @property
    def token_requests(self) -> deque[TokenRequest]:
        return self.entra.token_requests

    def add_tenant(self, tenant: SimTenant) -> SimTenant:
        """Register a tenant (and its apps)."""
        self.tenants[tenant.tenant_id] = tenant
        return tenant

    def fail_next(self, tenant_id: str, path: str, *faults: Fault) -> None:
        """Answer the next requests of `tenant_id` for `path` with `faults`, in order."""
        self._faults[(tenant_id, path)].extend(faults)

    def fail_next_token(self, tenant_id: str, *faults: TokenFault) -> None:
        """Answer the next token requests for `tenant_id` with `faults`, in order."""
        self.entra.fail_next(tenant_id, *faults)

    def fail_next_discovery(self, tenant_id: str, *faults: TokenFault) -> None:
        """Answer the next OIDC discovery requests for `tenant_id` with `faults`, in order."""
        self.entra.fail_next(tenant_id, *faults, discovery=True)

    def expire_tokens(self, tenant_id: str) -> None:
        """Make every access token of a tenant invalid for Graph (as if it expired early)."""
        tokens = self.entra.tokens
        for token, (owner, _) in list(tokens.items()):
            if owner == tenant_id:
                tokens[token] = (owner, time.time() - 1)

    @property
    def ca_pem(self) -> str:
        """The CA that signed the server certificate, to trust as `ca_file`."""
        return self._ca.cert_pem.bytes().decode()

    def issue_client_certificate(self, common_name: str) -> tuple[str, str]:
        """A client certificate and key (PEM) signed by the CA, for certificate credentials."""
        # Entra ID takes RSA certificates only for client authentication.
        cert = self._ca.issue_cert(common_name, key_type=trustme.KeyType.RSA)
        return cert.private_key_pem.bytes().decode(), cert.cert_chain_pems[0].bytes().decode()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve over TLS on loopback; returns the base URL ``https://127.0.0.1:PORT``."""
        app = web.Application()
        app.router.add_get(
            "/{tenant}/v2.0/.well-known/openid-configuration", self._entra(self.entra.discovery)
        )
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._entra(self.entra.token))
        app.router.add_get(ADE_PATH, self._graph)
        app.router.add_get(ADE_PATH + "/{token}", self._graph)
        app.router.add_get(ADE_PATH + "/{token}/importedAppleDeviceIdentities", self._graph)
        for path in (VPP_PATH, APNS_PATH, GDAP_PATH):
            app.router.add_get(path, self._graph)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        # Short grace at stop: a test may leave a hanging answer behind.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=context)
        await site.start()
        self.base_url = f"https://{host}:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def requests_for(self, tenant_id: str, path: str | None = None) -> list[GraphRequest]:
        """The Graph requests a tenant made (optionally for one path), in order."""
        return [
            r
            for r in self.graph_requests
            if r.tenant_id == tenant_id and (path is None or r.path == path)
        ]

    def _entra(self, handler: Handler) -> Handler:
        async def delayed(request: web.Request) -> web.StreamResponse:
            self._saw_cookies(request)
            if self.entra_latency:
                await asyncio.sleep(self.entra_latency)  # injected Entra ID latency
            response = await handler(request)
            # As Entra ID does: a per-browser cookie on every answer, which an API client
            # must not send back (let alone on another tenant's request).
            response.set_cookie("fpc", uuid.uuid4().hex, path="/", secure=True, httponly=True)
            return response

        return delayed

    def _saw_cookies(self, request: web.Request) -> None:
        if "Cookie" in request.headers:
            self.requests_with_cookies += 1

    # --- Graph ---------------------------------------------------------------------------------

    async def _graph(self, request: web.Request) -> web.StreamResponse:
        self._saw_cookies(request)
        if self.latency:
            await asyncio.sleep(self.latency)  # injected Graph latency for benchmarks
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        owner = self.entra.tokens.get(token)
        response = await self._answer(request, owner)
        # As Graph does: its own request id, and the client's echoed back.
        response.headers["request-id"] = str(uuid.uuid4())
        response.headers["client-request-id"] = request.headers.get(
            "client-request-id", str(uuid.uuid4())
        )
        self.graph_requests.append(
            GraphRequest(
                owner[0] if owner else None,
                request.path,
                dict(request.query),
                token,
                time.monotonic(),
                response.status,
                request.raw_path,
            )
        )
        return response

    async def _answer(
        self, request: web.Request, owner: tuple[str, float] | None
    ) -> web.StreamResponse:
        if owner is None or owner[1] <= time.time():
            return web.json_response(
                graph_error_body(
                    "InvalidAuthenticationToken",
                    "Lifetime validation failed, the token is expired."
                    if owner
                    else "Access token validation failure. Invalid audience.",
                ),
                status=401,
            )
        tenant = self.tenants[owner[0]]
        faults = self._faults.get((tenant.tenant_id, request.path))
        fault = next((f for f in faults or () if f.when is None or f.when(request.query)), None)
        if faults and fault is not None:
            faults.remove(fault)
            fault.arrived.set()
            if fault.wait is not None:
                await fault.wait.wait()
            return self._fault_response(fault)
        try:
            return self._resource(request, tenant)
        except QueryError as exc:
            return web.json_response(exc.body, status=400)

    def _resource(self, request: web.Request, tenant: SimTenant) -> web.StreamResponse:
        path, query = request.path, request.query
        token = request.match_info.get("token")
        if path == APNS_PATH:
            if tenant.apns_certificate is None:
                return web.json_response(
                    graph_error_body("ResourceNotFound", "Resource not found"), status=404
                )
            entity = self._entity(
                tenant.apns_certificate, "applePushNotificationCertificate", query
            )
            return web.json_response(
                {"@odata.context": self._context("applePushNotificationCertificate/$entity")}
                | entity
            )
        if path == VPP_PATH:
            return self._page(request, tenant.vpp_tokens, "vppToken", tenant.page_size)
        if path == GDAP_PATH:
            top_text = query.get("$top", str(GDAP_MAX_TOP))
            top = int(top_text) if top_text.isdigit() else -1
            if not 0 < top <= GDAP_MAX_TOP:
                raise QueryError(f"The limit of '{GDAP_MAX_TOP}' for Top query has been exceeded.")
            return self._page(request, tenant.customers, "delegatedAdminCustomer", top)
        if token is None:
            return self._page(request, tenant.ade_tokens, "depOnboardingSetting", tenant.page_size)
        known = {item["id"]: item for item in tenant.ade_tokens}
        if token not in known:
            return web.json_response(
                graph_error_body("ResourceNotFound", intune_nested_message("Resource not found")),
                status=404,
            )
        if path.endswith("/importedAppleDeviceIdentities"):
            devices = tenant.devices.get(token, [])
            return self._page(
                request, devices, "importedAppleDeviceIdentity", tenant.device_page_size
            )
        return web.json_response(self._ade_token(known[token], tenant, query))

    def _ade_token(self, item: dict[str, Any], tenant: SimTenant, query: Any) -> dict[str, Any]:
        entity = self._entity(item, "depOnboardingSetting", query)
        defaults = tenant.default_profiles.get(item["id"], {})
        for navigation in parse_expand(query.get("$expand"), "depOnboardingSetting"):
            platform = next((p for p, n in DEFAULT_NAVIGATIONS.items() if n == navigation), None)
            if platform is not None:
                profile = defaults.get(platform)
                entity[navigation] = None if profile is None else dict(profile)
        return {"@odata.context": self._context("depOnboardingSettings/$entity")} | entity

    def _entity(self, item: dict[str, Any], resource: str, query: Any) -> dict[str, Any]:
        withdrawn = self.withdrawn.get(resource, frozenset())
        selected = parse_select(query.get("$select"), resource, withdrawn)
        return project(item, resource, selected, withdrawn)

    def _context(self, tail: str) -> str:
        return f"{self.base_url}/beta/$metadata#deviceManagement/{tail}"

    def _page(
        self, request: web.Request, items: list[dict[str, Any]], resource: str, size: int
    ) -> web.Response:
        query = request.query
        withdrawn = self.withdrawn.get(resource, frozenset())
        selected = parse_select(query.get("$select"), resource, withdrawn)
        offset = 0
        if "$skiptoken" in query:
            # A nextLink must come back exactly as Graph gave it; a re-encoded one is invalid.
            decoded = _decode_skiptoken(query["$skiptoken"])
            if request.raw_path not in self._issued_links or decoded is None:
                raise QueryError("Invalid $skiptoken: the nextLink was altered.")
            offset = decoded
        page = [
            project(item, resource, selected, withdrawn) for item in items[offset : offset + size]
        ]
        body: dict[str, Any] = {"@odata.context": self._context(resource), "value": page}
        if offset + size < len(items):
            # Graph's nextLink is absolute, keeps the original query, adds $skiptoken.
            raw_query = request.raw_path.partition("?")[2]
            kept = "&".join(
                p for p in raw_query.split("&") if p and not p.startswith("$skiptoken=")
            )
            link = (
                f"{request.path}?{kept + '&' if kept else ''}$skiptoken={_skiptoken(offset + size)}"
            )
            self._issued_links.add(link)
            body["@odata.nextLink"] = f"{self.base_url}{link}"
        return web.json_response(body)

    @staticmethod
    def _fault_response(fault: Fault) -> web.Response:
        if isinstance(fault.body, dict):
            return web.json_response(fault.body, status=fault.status, headers=fault.headers)
        if isinstance(fault.body, bytes | str):
            raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
            response = web.Response(
                body=raw,
                status=fault.status,
                headers={"Content-Type": "application/json", **fault.headers},
            )
            if fault.chunked:
                response.enable_chunked_encoding()
            return response
        code = {429: "TooManyRequests", 503: "ServiceUnavailable", 504: "GatewayTimeout"}.get(
            fault.status, "UnknownError"
        )
        return web.json_response(
            graph_error_body(code, f"simulated {fault.status}"),
            status=fault.status,
            headers=fault.headers,
        )


# Graph's skip tokens are opaque and carry percent-escapes (`%2c`, `%27`, `%24` in lower case, as
# seen in Intune's nextLinks); a client that re-encodes them breaks paging.
_SKIPTOKEN_TAIL: Final = "%2c%27RowKey%27%3a%24"


def _skiptoken(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset={offset}".encode()).decode() + _SKIPTOKEN_TAIL


def _decode_skiptoken(token: str) -> int | None:
    head = token.partition(",")[0]
    try:
        return int(base64.urlsafe_b64decode(head.encode()).decode().removeprefix("offset="))
    except ValueError:
        return None
