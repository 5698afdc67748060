"""Access tokens for Graph: one MSAL confidential client per tenant, client-credentials flow.

MSAL is blocking and its constructor already does network I/O (OIDC discovery), so the client is
built lazily and every MSAL call runs in a worker thread, under a total deadline (a hung call is
abandoned, never awaited forever). The last token is reused until MSAL itself would renew it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
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
from .entra_errors import AADSTS_HINTS, AADSTS_RE, describe_entra_error, entra_reason
from .errors import AuthError, PollError, network_hint
from .msal_http import MsalHttpClient, TransportError, TransportTimeout

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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


class _ShortenMsalNoise(logging.Filter):
    """MSAL logs a token answer that is not JSON (a proxy's HTML page) in full, with a traceback,
    at ERROR. The exporter reports the failure itself; keep one short line of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Token response is not in json format"):
            text = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
            record.msg = "MSAL: the token endpoint's answer is not JSON (%d characters)"
            record.args = (len(text),)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("msal").addFilter(_ShortenMsalNoise())
for _name in ("msal.oauth2cli.oauth2", "msal.application", "msal.authority"):
    logging.getLogger(_name).addFilter(_ShortenMsalNoise())


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
    deadline: float = 120.0  # the most one MSAL call (discovery and a token) may take


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
        # The MSAL client, only while a token is being acquired (or failing to be): once it has
        # given a token, `token()` keeps that token and the client is let go. An idle MSAL client
        # with its caches held ~11 KiB per tenant, 110 MiB at 10,000 tenants; a new one costs
        # one OIDC discovery request per token (about one an hour per tenant).
        self._app: msal.ConfidentialClientApplication | None = None
        self._held: Any = None  # the credential as last read, to build the next client from
        # notAfter of the certificate credential in use (None for a secret or a federated
        # token): intune_exporter_credential_expiry_timestamp_seconds, no Graph call needed.
        self.credential_expires_at: float | None = None
        self._credential_stamp: object = None
        self._lock = asyncio.Lock()
        # The token MSAL last gave, until MSAL itself would refresh it: asking MSAL's cache
        # costs a worker thread per call, three per poll, which at thousands of tenants is CPU
        # the event loop needs.
        self._token: str | None = None
        self._token_fresh_until = 0.0
        self._clock = clock
        # Shared by every tenant: how many MSAL calls run at once (one per worker thread).
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
        # token request in flight instead of waiting for it, and so can the deadline.
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
        # arrives as the future completes, and shutdown then waits for a poll loop forever.
        future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            async with asyncio.timeout(self._settings.deadline):
                return await future
        except TimeoutError:
            raise PollError(
                "timeout",
                f"Entra ID did not answer within {self._settings.deadline:g}s "
                f"(authority {self._settings.authority})",
            ) from None

    # --- blocking helpers, run in worker threads ------------------------------------------------

    def _stamp(self) -> object:
        """Cheap identity of the credential on disk; a change (rotation) means a fresh client."""
        source = self._settings.credential
        if not isinstance(source, ClientSecretFile | ClientCertificateFile):
            return None
        try:
            st = source.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _credential(self) -> Any:
        """The credential in the shape `ConfidentialClientApplication` takes."""
        source = self._settings.credential
        if isinstance(source, ClientSecret):
            return source.value
        if isinstance(source, ClientSecretFile):
            return read_text_file(source.path, "secret file")
        if isinstance(source, ClientCertificateFile):
            cert = load_certificate(source.path, source.password)
            self.credential_expires_at = cert.not_after
            # public_certificate enables subject-name/issuer auth (x5c header); MSAL derives the
            # SHA-256 thumbprint from it.
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

    def _client(self) -> msal.ConfidentialClientApplication:
        stamp = self._stamp()
        unchanged = self._held is not None and stamp == self._credential_stamp
        if self._app is not None and unchanged:
            return self._app
        if unchanged:
            credential = self._held  # the client was let go after its last token
        else:
            try:
                credential = self._credential()
            except CredentialFileError as exc:
                if self._held is None:
                    raise AuthError(f"cannot read the credential: {exc}") from None
                # A Secret being recreated: keep the credential read before (a token we hold
                # may still be valid, and the old credential is most likely still good).
                log.warning(
                    "the credential file cannot be read; using the one read before",
                    extra={"tenant": self._settings.tenant, "problem": str(exc)},
                )
                if self._app is None:
                    self._app = self._build(self._held)
                return self._app
            if self._held is not None:
                log.info(
                    "credential changed on disk; rebuilt the MSAL client",
                    extra={"tenant": self._settings.tenant},
                )
        app = self._build(credential)
        self._app, self._held, self._credential_stamp = app, credential, stamp
        return app

    def _build(self, credential: Any) -> msal.ConfidentialClientApplication:
        settings = self._settings
        authority = settings.authority
        try:
            return msal.ConfidentialClientApplication(
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
            raise PollError(
                "network",
                network_hint(
                    f"cannot reach the authority {authority}: {exc}",
                    self._http_client.proxy,
                    exc.kind,
                ),
            ) from None
        except MsalServiceError as exc:
            # OIDC discovery answered 5xx: an outage at Entra ID, not the credential's fault.
            raise PollError(
                "network", f"the authority {authority} failed OIDC discovery: {exc}"
            ) from None
        except ValueError as exc:
            raise _authority_error(authority, exc) from None

    def _acquire(self) -> tuple[str, float]:
        """A token and the seconds it stays valid."""
        app = self._client()
        self._http_client.forget_last()
        try:
            result: dict[str, Any] = app.acquire_token_for_client(scopes=[self._settings.scope])
        except TransportTimeout:
            raise PollError("timeout", "timed out requesting a token from Entra ID") from None
        except CredentialFileError as exc:  # raised by the federated-token callable
            raise AuthError(f"cannot read the credential: {exc}") from None
        except TransportError as exc:
            raise PollError(
                "network",
                network_hint(
                    f"cannot reach Entra ID's token endpoint: {exc}",
                    self._http_client.proxy,
                    exc.kind,
                ),
            ) from None
        except MsalServiceError as exc:  # the token endpoint answered 5xx
            raise PollError("network", f"Entra ID's token endpoint failed: {exc}") from None
        except ValueError:  # MSAL could not decode the token endpoint's answer
            status, _ = self._http_client.last() or (None, {})
            if status == 429:
                raise PollError(
                    "throttled", "Entra ID's token endpoint throttled the request (HTTP 429)"
                ) from None
            raise PollError(
                "invalid_response",
                "Entra ID's token endpoint answered with something that is not JSON "
                f"(HTTP {status or '?'}; a proxy's page?)",
            ) from None
        token = result.get("access_token")
        if isinstance(token, str) and token:
            expires_in = result.get("expires_in")
            valid = float(expires_in) if isinstance(expires_in, int | float) else 0.0
            self._app = None  # see __init__: `token()` holds the token from here
            return token, valid
        return _token_error(result, self._http_client.last())

    def _forget(self, token: str) -> None:
        if self._app is None:
            return
        cache = self._app.token_cache
        for item in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            if item.get("secret") == token:
                cache.remove_at(item)


def _token_error(
    result: dict[str, Any], last: tuple[int, dict[str, str]] | None
) -> tuple[str, float]:
    """Raise the failure an MSAL error result stands for."""
    status, headers = last or (None, {})
    text, code = describe_entra_error(result)
    reason = entra_reason(result, status)
    if reason == "auth":
        raise AuthError(text, code)
    retry_after = headers.get("retry-after")
    if retry_after:
        text += f"; Entra ID asked to retry after {retry_after}s"
    raise PollError(reason, text)


def _authority_error(authority: str, exc: ValueError) -> PollError:
    """MSAL's ValueError at construction, described by what it says."""
    # OIDC discovery refused (an unknown tenant, say): MSAL wraps Entra's AADSTS text.
    chain = f"{exc} {exc.__context__ or ''} {exc.__cause__ or ''}"
    match = AADSTS_RE.search(chain)
    if match is not None:
        code = int(match.group(1))
        hint = AADSTS_HINTS.get(code, "authority discovery failed")
        return AuthError(
            f"Entra ID rejected the authority {authority}: AADSTS{code} ({hint})", code
        )
    if "OIDC Discovery failed" in chain:
        return AuthError(f"Entra ID rejected the authority {authority} (OIDC discovery failed)")
    # Anything else MSAL refuses (a malformed authority, say): its own first sentence.
    said = " ".join(str(exc).split()).split(". ")[0][:200]
    return AuthError(f"MSAL refused the authority {authority}: {said}")
