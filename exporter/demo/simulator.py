"""A simulated Microsoft cloud: Entra ID's token endpoint and the Graph resources we read.

It follows Microsoft's documented wire formats (OIDC discovery, the OAuth2 client-credentials
token endpoint and its AADSTS errors, Graph's OData paging with `@odata.nextLink`, Graph error
JSON with Intune's nested message, 429 with `Retry-After`) and serves them over TLS with a
throw-away CA, because MSAL only accepts https authorities. `--demo` runs on it, and so does
the test suite, which also uses its fault injection and request log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import ssl
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import jwt
import trustme
from aiohttp import web
from cryptography import x509

ADE_PATH: Final = "/beta/deviceManagement/depOnboardingSettings"
VPP_PATH: Final = "/beta/deviceAppManagement/vppTokens"
APNS_PATH: Final = "/beta/deviceManagement/applePushNotificationCertificate"
_COLLECTIONS: Final = (ADE_PATH, VPP_PATH)
REQUEST_LOG_SIZE: Final = 20_000


def iso(timestamp: float | None) -> str | None:
    """Unix time as Graph writes it (UTC, `Z`, 7 fractional digits); None stays None."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def graph_error_body(code: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """Graph's error JSON."""
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id or str(uuid.uuid4()),
                "client-request-id": str(uuid.uuid4()),
            },
        }
    }


def intune_nested_message(message: str) -> str:
    """The JSON document Intune puts, as a string, inside Graph's `error.message`."""
    return json.dumps(
        {
            "_version": 3,
            "Message": message,
            "CustomApiErrorPhrase": "",
            "RetryAfter": None,
            "ErrorSourceService": "",
            "HttpHeaders": "{}",
        },
        indent=2,
    ).replace("\n", "\r\n")


INTUNE_FORBIDDEN_MESSAGE: Final = (
    "Application is not authorized to perform this operation. Application must have one of the "
    "following scopes: DeviceManagementServiceConfig.Read.All, "
    "DeviceManagementServiceConfig.ReadWrite.All - Operation ID (for customer support): "
    "00000000-0000-0000-0000-000000000000 - Activity ID: 4ee7b1c2-63b5-4d06-9f32-29e0d3d7a9c1"
)


@dataclass
class Fault:
    """A canned answer for the next matching Graph request."""

    status: int = 503
    body: Any = None  # dict -> JSON, bytes/str -> raw, None -> Graph error body for status
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (to provoke client timeouts)


@dataclass
class SimApp:
    """An app registration consented in a tenant, with the credential it accepts."""

    client_id: str
    secret: str | None = None
    certificate_pem: str | None = None  # accepts assertions signed by this certificate's key
    federated_tokens: set[str] = field(default_factory=set)


@dataclass
class SimTenant:
    """A tenant's Intune data."""

    tenant_id: str
    ade_tokens: list[dict[str, Any]] = field(default_factory=list)
    vpp_tokens: list[dict[str, Any]] = field(default_factory=list)
    apns_certificate: dict[str, Any] | None = None
    page_size: int = 100
    apps: dict[str, SimApp] = field(default_factory=dict)
    token_lifetime: int = 3599


@dataclass(frozen=True)
class TokenRequest:
    """One call to the token endpoint, as the fake saw it."""

    tenant_id: str
    client_id: str
    credential: str  # "secret", "certificate", "federated"
    accepted: bool
    assertion_claims: dict[str, Any] | None = None
    assertion_headers: dict[str, Any] | None = None


@dataclass(frozen=True)
class GraphRequest:
    """One Graph request, as the fake saw it."""

    tenant_id: str | None
    path: str
    query: dict[str, str]
    token: str
    at: float  # time.monotonic()
    status: int


class SimulatedCloud:
    """Entra ID + Graph for any number of simulated tenants, on one loopback TLS server."""

    def __init__(self, latency: float = 0.0) -> None:
        self.tenants: dict[str, SimTenant] = {}
        self.latency = latency
        # Bounded: the demo runs for days; tests look at far fewer requests than this.
        self.token_requests: deque[TokenRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self.graph_requests: deque[GraphRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self._faults: dict[tuple[str, str], deque[Fault]] = defaultdict(deque)
        self._tokens: dict[str, tuple[str, float]] = {}  # access token -> (tenant, expires at)
        self._ca = trustme.CA()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- set-up --------------------------------------------------------------------------------

    def add_tenant(self, tenant: SimTenant) -> SimTenant:
        """Register a tenant (and its apps)."""
        self.tenants[tenant.tenant_id] = tenant
        return tenant

    def fail_next(self, tenant_id: str, path: str, *faults: Fault) -> None:
        """Answer the next requests of `tenant_id` for `path` with `faults`, in order."""
        self._faults[(tenant_id, path)].extend(faults)

    def expire_tokens(self, tenant_id: str) -> None:
        """Make every access token of a tenant invalid for Graph (as if it expired early)."""
        for token, (owner, _) in list(self._tokens.items()):
            if owner == tenant_id:
                self._tokens[token] = (owner, time.time() - 1)

    @property
    def ca_pem(self) -> str:
        """The CA that signed the server certificate, to trust as `ca_file`."""
        return self._ca.cert_pem.bytes().decode()

    def issue_client_certificate(self, common_name: str) -> tuple[str, str]:
        """A client certificate and key (PEM) signed by the CA, for certificate credentials."""
        # Entra ID takes RSA certificates only for client authentication.
        cert = self._ca.issue_cert(common_name, key_type=trustme.KeyType.RSA)
        key_pem = cert.private_key_pem.bytes().decode()
        cert_pem = cert.cert_chain_pems[0].bytes().decode()
        return key_pem, cert_pem

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve over TLS on loopback; returns the base URL ``https://127.0.0.1:PORT``."""
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        for path in (*_COLLECTIONS, APNS_PATH):
            app.router.add_get(path, self._graph)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        # Short grace at stop: a test may leave a delayed (hanging) answer behind.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=context)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"https://{host}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- Entra ID ------------------------------------------------------------------------------

    @staticmethod
    def _entra_error(status: int, error: str, code: int, description: str) -> web.Response:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        trace = str(uuid.uuid4())
        return web.json_response(
            {
                "error": error,
                "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
                f"Correlation ID: {uuid.uuid4()} Timestamp: {now}",
                "error_codes": [code],
                "timestamp": now,
                "trace_id": trace,
                "correlation_id": str(uuid.uuid4()),
            },
            status=status,
        )

    async def _discovery(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if tenant not in self.tenants:
            return self._entra_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        base = f"{self.base_url}/{tenant}"
        return web.json_response(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{base}/v2.0",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        tenant_id = request.match_info["tenant"]
        form = await request.post()
        client_id = str(form.get("client_id", ""))
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            return self._entra_error(
                400, "invalid_tenant", 90002, f"Tenant '{tenant_id}' not found."
            )
        if form.get("grant_type") != "client_credentials":
            return self._entra_error(400, "unsupported_grant_type", 70003, "Unsupported grant.")
        app = tenant.apps.get(client_id)
        assertion = str(form.get("client_assertion", "")) or None
        kind = "secret" if "client_secret" in form else "assertion" if assertion else "none"
        if app is None:
            self.token_requests.append(TokenRequest(tenant_id, client_id, kind, False))
            return self._entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant_id}'.",
            )
        accepted, kind, claims, headers = self._check_credential(request, tenant_id, app, form)
        self.token_requests.append(
            TokenRequest(tenant_id, client_id, kind, accepted, claims, headers)
        )
        if not accepted:
            if kind == "secret":
                return self._entra_error(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request "
                    "is the client secret value, not the client secret ID.",
                )
            return self._entra_error(
                401, "invalid_client", 700027, "Client assertion failed signature validation."
            )
        token = f"sim.{secrets.token_urlsafe(24)}"
        now = time.time()
        # Forget tokens that expired over an hour ago (a 401 needs them only just after expiry).
        for old, (_, expires) in list(self._tokens.items()):
            if expires < now - 3600:
                del self._tokens[old]
        self._tokens[token] = (tenant_id, now + tenant.token_lifetime)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": tenant.token_lifetime,
                "ext_expires_in": tenant.token_lifetime,
                "access_token": token,
            }
        )

    def _check_credential(
        self, request: web.Request, tenant_id: str, app: SimApp, form: Any
    ) -> tuple[bool, str, dict[str, Any] | None, dict[str, Any] | None]:
        if "client_secret" in form:
            return (
                app.secret is not None and form["client_secret"] == app.secret,
                "secret",
                None,
                None,
            )
        assertion = str(form.get("client_assertion", ""))
        if not assertion:
            return False, "none", None, None
        if assertion in app.federated_tokens:
            return True, "federated", None, None
        if app.certificate_pem is None:
            return False, "federated", None, None
        try:
            headers = jwt.get_unverified_header(assertion)
            public_key = x509.load_pem_x509_certificate(app.certificate_pem.encode()).public_key()
            claims = jwt.decode(
                assertion,
                public_key,  # type: ignore[arg-type]
                algorithms=["RS256", "PS256", "ES256"],
                audience=f"{self.base_url}/{tenant_id}/oauth2/v2.0/token",
                issuer=app.client_id,
            )
        except (jwt.PyJWTError, ValueError):
            return False, "certificate", None, None
        return claims.get("sub") == app.client_id, "certificate", claims, headers

    # --- Graph ---------------------------------------------------------------------------------

    async def _graph(self, request: web.Request) -> web.StreamResponse:
        if self.latency:
            await asyncio.sleep(self.latency)  # injected Graph latency for benchmarks
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        owner = self._tokens.get(token)
        path = request.path
        query = dict(request.query)
        tenant_id = owner[0] if owner else None
        response = await self._graph_answer(request, owner, path, query)
        self.graph_requests.append(
            GraphRequest(tenant_id, path, query, token, time.monotonic(), response.status)
        )
        return response

    async def _graph_answer(
        self,
        request: web.Request,
        owner: tuple[str, float] | None,
        path: str,
        query: dict[str, str],
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
        faults = self._faults.get((tenant.tenant_id, path))
        if faults:
            fault = faults.popleft()
            if fault.delay:
                await asyncio.sleep(fault.delay)
            return self._fault_response(fault)
        if path == APNS_PATH:
            if tenant.apns_certificate is None:
                return web.json_response(
                    graph_error_body("ResourceNotFound", "Resource not found"), status=404
                )
            return web.json_response(
                {
                    "@odata.context": f"{self.base_url}/beta/$metadata#deviceManagement/"
                    "applePushNotificationCertificate/$entity",
                    **tenant.apns_certificate,
                }
            )
        items = tenant.ade_tokens if path == ADE_PATH else tenant.vpp_tokens
        offset = _decode_skiptoken(query.get("$skiptoken"))
        if offset is None:
            return web.json_response(
                graph_error_body("BadRequest", "Invalid $skiptoken"), status=400
            )
        page = items[offset : offset + tenant.page_size]
        body: dict[str, Any] = {
            "@odata.context": f"{self.base_url}/beta/$metadata#{path.split('/beta/')[1]}",
            "value": page,
        }
        if offset + tenant.page_size < len(items):
            # Graph's nextLink is absolute and carries the original query plus $skiptoken.
            next_query = {k: v for k, v in query.items() if k != "$skiptoken"}
            next_query["$skiptoken"] = _encode_skiptoken(offset + tenant.page_size)
            url = request.url.with_query(next_query)
            body["@odata.nextLink"] = str(url.with_scheme("https").with_host(url.host or ""))
        return web.json_response(body)

    @staticmethod
    def _fault_response(fault: Fault) -> web.Response:
        if isinstance(fault.body, dict):
            return web.json_response(fault.body, status=fault.status, headers=fault.headers)
        if isinstance(fault.body, bytes | str):
            raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
            return web.Response(
                body=raw,
                status=fault.status,
                headers={"Content-Type": "application/json", **fault.headers},
            )
        code = {429: "TooManyRequests", 503: "ServiceUnavailable", 504: "GatewayTimeout"}.get(
            fault.status, "UnknownError"
        )
        return web.json_response(
            graph_error_body(code, f"simulated {fault.status}"),
            status=fault.status,
            headers=fault.headers,
        )

    def requests_for(self, tenant_id: str, path: str | None = None) -> list[GraphRequest]:
        """The Graph requests a tenant made (optionally for one path), in order."""
        return [
            r
            for r in self.graph_requests
            if r.tenant_id == tenant_id and (path is None or r.path == path)
        ]


def _encode_skiptoken(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset={offset}".encode()).decode()


def _decode_skiptoken(token: str | None) -> int | None:
    if token is None:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        return int(text.removeprefix("offset="))
    except ValueError:
        return None
