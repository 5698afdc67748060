"""The simulated Entra ID: OIDC discovery and the OAuth2 client-credentials token endpoint.

It checks what Entra ID checks (the tenant, `grant_type`, `scope` = `{graph}/.default`, the app
and its credential, `client_assertion_type` for assertions, an assertion's signature, audience
and issuer) and answers failures with Entra's JSON (`error`, `error_description` starting
`AADSTSnnnnnnn:`, `error_codes`), so MSAL sees what it would see in production.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import jwt
from aiohttp import web
from cryptography import x509

JWT_BEARER: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REQUEST_LOG_SIZE: Final = 20_000


@dataclass
class SimApp:
    """An app registration consented in a tenant, with the credential it accepts."""

    client_id: str
    secret: str | None = None
    certificate_pem: str | None = None  # accepts assertions signed by this certificate's key
    federated_tokens: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class TokenRequest:
    """One call to the token endpoint, as the fake saw it."""

    tenant_id: str
    client_id: str
    credential: str  # "secret", "certificate", "federated", "none"
    accepted: bool
    assertion_claims: dict[str, Any] | None = None
    assertion_headers: dict[str, Any] | None = None
    scope: str = ""


@dataclass
class TokenFault:
    """A canned answer for a tenant's next token request (throttling, an outage, a proxy)."""

    status: int = 503
    body: Any = None  # dict -> JSON, bytes/str -> raw (an HTML page), None -> Entra's JSON
    headers: dict[str, str] = field(default_factory=dict)
    wait: asyncio.Event | None = None  # answer only once this is set
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set when it is used


def entra_error(status: int, error: str, code: int, description: str) -> web.Response:
    """Entra ID's error JSON."""
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


class EntraFake:
    """Discovery and token endpoints for the tenants `apps_of` knows."""

    def __init__(
        self,
        apps_of: Callable[[str], Mapping[str, SimApp] | None],
        lifetime_of: Callable[[str], int],
        base_url: Callable[[], str],
    ) -> None:
        self._apps_of = apps_of
        self._lifetime_of = lifetime_of
        self._base_url = base_url
        self.token_requests: deque[TokenRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self.discovery_requests: deque[str] = deque(maxlen=REQUEST_LOG_SIZE)  # tenant each
        self.tokens: dict[str, tuple[str, float]] = {}  # access token -> (tenant, expires at)
        self._faults: dict[tuple[str, bool], deque[TokenFault]] = defaultdict(deque)

    def fail_next(self, tenant_id: str, *faults: TokenFault, discovery: bool = False) -> None:
        self._faults[(tenant_id, discovery)].extend(faults)

    async def discovery(self, request: web.Request) -> web.StreamResponse:
        tenant = request.match_info["tenant"]
        self.discovery_requests.append(tenant)
        faults = self._faults.get((tenant, True))
        if faults:
            return await self._fault(faults.popleft())
        if self._apps_of(tenant) is None:
            return entra_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        # On the host it was asked on, as Entra ID's own discovery names its own host.
        base = f"https://{request.host}/{tenant}"
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

    async def token(self, request: web.Request) -> web.StreamResponse:
        tenant_id = request.match_info["tenant"]
        form = await request.post()
        faults = self._faults.get((tenant_id, False))
        if faults:
            return await self._fault(faults.popleft())
        apps = self._apps_of(tenant_id)
        if apps is None:
            return entra_error(400, "invalid_tenant", 90002, f"Tenant '{tenant_id}' not found.")
        if form.get("grant_type") != "client_credentials":
            return entra_error(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            )
        scope = str(form.get("scope", ""))
        if scope != f"{self._base_url()}/.default":
            return entra_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )
        client_id = str(form.get("client_id", ""))
        app = apps.get(client_id)
        has_assertion = bool(form.get("client_assertion"))
        kind = "secret" if "client_secret" in form else "assertion" if has_assertion else "none"
        if app is None:
            self.token_requests.append(TokenRequest(tenant_id, client_id, kind, False, scope=scope))
            return entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant_id}'. This can happen if the application has not been installed by "
                "the administrator of the tenant or consented to by any user in the tenant.",
            )
        if has_assertion and form.get("client_assertion_type") != JWT_BEARER:
            self.token_requests.append(TokenRequest(tenant_id, client_id, kind, False, scope=scope))
            return entra_error(
                400,
                "invalid_request",
                50027,
                f"JWT token is invalid or malformed: client_assertion_type must be {JWT_BEARER}.",
            )
        audience = f"https://{request.host}/{tenant_id}/oauth2/v2.0/token"
        accepted, kind, claims, headers = self._check_credential(tenant_id, app, form, audience)
        self.token_requests.append(
            TokenRequest(tenant_id, client_id, kind, accepted, claims, headers, scope)
        )
        if not accepted:
            if kind == "secret":
                return entra_error(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request "
                    "is the client secret value, not the client secret ID.",
                )
            return entra_error(
                401, "invalid_client", 700027, "Client assertion failed signature validation."
            )
        return web.json_response(self._issue(tenant_id))

    def _issue(self, tenant_id: str) -> dict[str, Any]:
        token = f"sim.{secrets.token_urlsafe(24)}"
        now = time.time()
        lifetime = self._lifetime_of(tenant_id)
        if len(self.tokens) > 4096:
            # Forget tokens that expired over an hour ago (a 401 needs them only just after).
            for old, (_, expires) in list(self.tokens.items()):
                if expires < now - 3600:
                    del self.tokens[old]
        self.tokens[token] = (tenant_id, now + lifetime)
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    @staticmethod
    async def _fault(fault: TokenFault) -> web.StreamResponse:
        fault.arrived.set()
        if fault.wait is not None:
            await fault.wait.wait()
        if isinstance(fault.body, dict):
            return web.json_response(fault.body, status=fault.status, headers=fault.headers)
        if isinstance(fault.body, bytes | str):
            raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
            return web.Response(
                body=raw,
                status=fault.status,
                headers={"Content-Type": "text/html", **fault.headers},
            )
        if fault.status == 429:
            response = entra_error(
                429, "temporarily_unavailable", 50196, "The server is temporarily unavailable."
            )
        else:
            response = entra_error(
                fault.status,
                "server_error" if fault.status >= 500 else "invalid_request",
                90033,
                "A transient error has occurred. Please try again.",
            )
        response.headers.update(fault.headers)
        return response

    def _check_credential(
        self, tenant_id: str, app: SimApp, form: Any, audience: str
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
                audience=audience,
                issuer=app.client_id,
            )
        except (jwt.PyJWTError, ValueError):
            return False, "certificate", None, None
        return claims.get("sub") == app.client_id, "certificate", claims, headers
