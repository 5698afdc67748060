"""Access tokens for Graph: one MSAL confidential client per tenant, client-credentials flow.

MSAL is blocking and its constructor already does network I/O (OIDC discovery), so the client is
built lazily and every MSAL call runs in a worker thread. MSAL's own cache answers repeated
requests (since 1.23 `acquire_token_for_client` looks there first).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import msal
from msal.exceptions import MsalServiceError

from .credentials import CredentialFileError, load_certificate, read_text_file
from .errors import AuthError, PollError
from .msal_http import MsalHttpClient, TransportError, TransportTimeout

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# MSAL calls that run at once, across every tenant. MSAL is CPU-bound Python in threads: each
# one competes with the event loop for the GIL as an equal, so with twenty of them the loop got
# a twentieth of the CPU and Graph requests stalled for seconds in a cold round. Two keep
# Entra ID's round trips overlapped and leave the loop most of the interpreter.
TOKEN_SLOTS: Final = 2

# MSAL treats a token with less than 5 minutes left as expired; so does our own shortcut.
REFRESH_BEFORE_EXPIRY: Final = 300.0


def usable_for(expires_in: float) -> float:
    """How long a token is used before MSAL is asked again: until 5 minutes before it expires,
    and a short-lived one (under 10 minutes, as some tenants' policies set) half its life."""
    if expires_in > 2 * REFRESH_BEFORE_EXPIRY:
        return expires_in - REFRESH_BEFORE_EXPIRY
    return max(expires_in, 0.0) / 2


# MSAL tries `import msal_extensions` in every client's constructor; where it is not installed,
# each failed import searches sys.path again (6% of a cold poll of 1,000 tenants). None in
# sys.modules is Python's documented "not importable", answered at once.
if importlib.util.find_spec("msal_extensions") is None:
    sys.modules.setdefault("msal_extensions", None)  # type: ignore[arg-type]

# What the AADSTS codes an operator is likely to meet mean, for log lines and the status page.
AADSTS_HINTS: Final[dict[int, str]] = {
    7000215: "invalid client secret",
    7000222: "the client secret has expired",
    700016: "application not found in the tenant (wrong client_id, or not consented there)",
    90002: "tenant not found",
    700027: "client assertion rejected (certificate not registered on the app?)",
    65001: "admin consent is missing",
    700024: "federated token is expired or not yet valid",
    70021: "no federated identity credential matches the token",
    7000112: "the application is disabled",
    500011: "the resource is not found in the tenant (wrong cloud?)",
}

_AADSTS_RE: Final = re.compile(r"AADSTS(\d+)")


@dataclass(frozen=True)
class ClientSecret:
    """A client secret given in the config (from `${VAR}`)."""

    value: str = field(repr=False)


@dataclass(frozen=True)
class ClientSecretFile:
    """A file holding the client secret; read again when it changes."""

    path: Path


@dataclass(frozen=True)
class ClientCertificateFile:
    """A PEM with the private key and the certificate (chain)."""

    path: Path
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class FederatedTokenFile:
    """A federated token (workload identity), read again for every new access token."""

    path: Path


CredentialSource = ClientSecret | ClientSecretFile | ClientCertificateFile | FederatedTokenFile


@dataclass(frozen=True)
class AuthSettings:
    """Everything a token provider needs: no more of the tenant's config than this."""

    tenant: str  # the tenant's name, for log lines
    authority: str  # https://host[:port]/<tenant id>
    client_id: str
    scope: str  # {graph}/.default
    credential: CredentialSource


def describe_entra_error(result: dict[str, Any]) -> tuple[str, int | None]:
    """Turn an MSAL error result into a log-friendly sentence and its AADSTS code."""
    codes = result.get("error_codes") or []
    description = str(result.get("error_description") or "")
    code: int | None = int(codes[0]) if codes and str(codes[0]).isdigit() else None
    if code is None and (match := _AADSTS_RE.search(description)):
        code = int(match.group(1))
    # Entra's description is one sentence, then "Trace ID: ..." lines; keep the sentence.
    first = description.splitlines()[0].strip() if description else ""
    hint = AADSTS_HINTS.get(code or 0)
    error = str(result.get("error") or "error")
    text = f"Entra ID refused the token request: {error}"
    if code is not None:
        text += f" AADSTS{code}"
    if hint:
        text += f" ({hint})"
    if first and not hint:
        text += f": {first.removeprefix(f'AADSTS{code}: ' if code else '')}"
    return text, code


class MsalTokenProvider:
    """Client-credentials tokens for one tenant through MSAL, with its configured credential."""

    def __init__(
        self,
        settings: AuthSettings,
        *,
        http_client: MsalHttpClient,
        executor: Executor,
        slots: asyncio.Semaphore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._http_client = http_client
        self._executor = executor
        self._app: msal.ConfidentialClientApplication | None = None
        self._credential_stamp: object = None
        self._lock = asyncio.Lock()
        # The token MSAL last gave, until MSAL itself would refresh it: asking MSAL's cache
        # costs a worker thread per call, three per poll, which at thousands of tenants is CPU
        # the event loop needs.
        self._token: str | None = None
        self._token_fresh_until = 0.0
        self._clock = clock
        # Shared by every tenant: how many MSAL calls run at once (see TOKEN_SLOTS).
        self._slots = slots

    async def token(self) -> str:
        if self._token is not None and self._clock() < self._token_fresh_until:
            return self._token
        # One acquisition at a time per tenant: concurrent collectors then share one token.
        async with self._lock:
            if self._token is not None and self._clock() < self._token_fresh_until:
                return self._token
            if self._slots is None:
                token, expires_in = await self._in_thread(self._acquire)
            else:
                async with self._slots:
                    token, expires_in = await self._in_thread(self._acquire)
            self._token = token
            self._token_fresh_until = self._clock() + usable_for(expires_in)
            return token

    async def invalidate(self, token: str) -> None:
        async with self._lock:
            if self._token == token:
                self._token = None
            await self._in_thread(lambda: self._forget(token))

    async def _in_thread(self, call: Callable[[], _T]) -> _T:
        # The exporter's own pool (not asyncio.to_thread's default one): shutdown can abandon a
        # token request in flight instead of waiting for it.
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    # --- blocking helpers, run in worker threads ------------------------------------------------

    def _stamp(self) -> object:
        """Cheap identity of the credential on disk; a change (rotation) means a fresh client."""
        source = self._settings.credential
        if not isinstance(source, ClientSecretFile | ClientCertificateFile):
            return None
        path = source.path
        try:
            st = path.stat()
        except OSError:
            return ("unreadable",)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _credential(self) -> Any:
        """The credential in the shape `ConfidentialClientApplication` takes."""
        source = self._settings.credential
        try:
            if isinstance(source, ClientSecret):
                return source.value
            if isinstance(source, ClientSecretFile):
                return read_text_file(source.path, "secret file")
            if isinstance(source, ClientCertificateFile):
                cert = load_certificate(source.path, source.password)
                # public_certificate enables subject-name/issuer auth (x5c header); MSAL
                # derives the SHA-256 thumbprint from it.
                credential = {
                    "private_key": cert.private_key_pem,
                    "public_certificate": cert.certificate_pem,
                }
                if cert.passphrase:
                    credential["passphrase"] = cert.passphrase
                return credential
            path = source.path

            def assertion() -> str:
                # Re-read on every call: workload identity rotates the projected token.
                return read_text_file(path, "federated token file")

            return {"client_assertion": assertion}
        except CredentialFileError as exc:
            raise AuthError(f"cannot read the credential: {exc}") from None

    def _client(self) -> msal.ConfidentialClientApplication:
        stamp = self._stamp()
        if self._app is not None and stamp == self._credential_stamp:
            return self._app
        credential = self._credential()
        settings = self._settings
        authority = settings.authority
        try:
            app = msal.ConfidentialClientApplication(
                settings.client_id,
                client_credential=credential,
                authority=authority,
                # It carries the timeout: MSAL ignores `timeout=` with an http_client.
                http_client=self._http_client,
                # Instance discovery only validates the authority (one more request per tenant);
                # ours is a cloud's own host or one the config names, and for a host MSAL does
                # not know, it would even ask the public cloud.
                instance_discovery=False,
            )
        except TransportTimeout:
            raise PollError("timeout", f"timed out reaching the authority {authority}") from None
        except TransportError as exc:
            raise PollError("network", f"cannot reach the authority {authority}: {exc}") from None
        except MsalServiceError as exc:
            # OIDC discovery answered 5xx: an outage at Entra ID, not the credential's fault.
            raise PollError(
                "network", f"the authority {authority} failed OIDC discovery: {exc}"
            ) from None
        except ValueError as exc:
            # MSAL raises ValueError when OIDC discovery fails, e.g. AADSTS90002 unknown tenant.
            # It wraps the discovery failure (with Entra's AADSTS text) as its __context__.
            chain = f"{exc} {exc.__context__ or ''} {exc.__cause__ or ''}"
            match = _AADSTS_RE.search(chain)
            code = int(match.group(1)) if match else None
            hint = AADSTS_HINTS.get(code or 0, "authority discovery failed")
            prefix = f"AADSTS{code} " if code else ""
            raise AuthError(
                f"Entra ID rejected the authority {authority}: {prefix}({hint})", code
            ) from None
        if self._app is not None:
            log.info(
                "credential changed on disk; rebuilt the MSAL client",
                extra={"tenant": settings.tenant},
            )
        self._app, self._credential_stamp = app, stamp
        return app

    def _acquire(self) -> tuple[str, float]:
        """A token and the seconds it stays valid."""
        app = self._client()
        try:
            result: dict[str, Any] = app.acquire_token_for_client(scopes=[self._settings.scope])
        except TransportTimeout:
            raise PollError("timeout", "timed out requesting a token from Entra ID") from None
        except CredentialFileError as exc:  # raised by the federated-token callable
            raise AuthError(f"cannot read the credential: {exc}") from None
        except TransportError as exc:
            raise PollError("network", f"cannot reach Entra ID's token endpoint: {exc}") from None
        except MsalServiceError as exc:  # the token endpoint answered 5xx
            raise PollError("network", f"Entra ID's token endpoint failed: {exc}") from None
        except ValueError:  # MSAL could not decode the token endpoint's answer
            raise PollError(
                "invalid_response", "Entra ID's token endpoint answered with invalid JSON"
            ) from None
        token = result.get("access_token")
        if isinstance(token, str) and token:
            expires_in = result.get("expires_in")
            valid = float(expires_in) if isinstance(expires_in, int | float) else 0.0
            return token, valid
        text, code = describe_entra_error(result)
        raise AuthError(text, code)

    def _forget(self, token: str) -> None:
        if self._app is None:
            return
        cache = self._app.token_cache
        for item in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            if item.get("secret") == token:
                cache.remove_at(item)
