"""Client-side TLS trust shared by aiohttp (Graph) and requests (MSAL).

Verification is always on. Trust is the system store, plus the bundles named by the standard
`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE` and `CURL_CA_BUNDLE` variables, plus a tenant's `ca_file`:
each adds to the others. Plain `verify=ca_file` on a requests session would not do, because
requests lets `REQUESTS_CA_BUNDLE`/`CURL_CA_BUNDLE` override a session's `verify` and the private
CA would silently stop being trusted on hosts that set those variables.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any

import requests
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter

_ENV_BUNDLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def client_ssl_context(ca_file: Path | None = None, ca_data: str | None = None) -> ssl.SSLContext:
    """A verifying client context trusting the system store, env bundles, `ca_file`, `ca_data`."""
    context = ssl.create_default_context()
    for variable in _ENV_BUNDLES:
        bundle = os.environ.get(variable)
        if bundle and os.path.isfile(bundle):
            context.load_verify_locations(cafile=bundle)
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    if ca_data is not None:
        context.load_verify_locations(cadata=ca_data)
    return context


class _SSLContextAdapter(HTTPAdapter):
    """Make urllib3 start from our context; requests' own CA choice can then only add to it.

    It also gives every request a timeout: MSAL ignores its own `timeout` once it is handed an
    http_client, and a token request must never block a worker thread forever.
    """

    def __init__(self, context: ssl.SSLContext, timeout: float, pool_size: int = 10) -> None:
        self._context = context
        self._timeout = timeout
        super().__init__(pool_maxsize=pool_size)

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
        # Trust is our context's alone (it already holds the env bundles). Left set, urllib3
        # loads requests' CA file into the context again for every new connection: ~12 ms of CPU
        # each, which made the first poll of 1,000 tenants CPU-bound.
        conn.ca_certs = None
        conn.ca_cert_dir = None

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> Response:
        return super().send(
            request,
            stream=stream,
            timeout=timeout if timeout is not None else self._timeout,
            verify=verify,
            cert=cert,
            proxies=proxies,
        )

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(proxy, **kwargs)


class TrustStore:
    """Client contexts and MSAL's sessions by `ca_file`, built once and shared by every tenant
    with the same trust: loading the system store costs milliseconds, and a session per tenant
    (with its own connection pool, and a TLS handshake per tenant) costs memory and CPU that add
    up over thousands of tenants."""

    def __init__(self, ca_data: str | None = None, *, pool_size: int = 10) -> None:
        self._ca_data = ca_data
        self._pool_size = pool_size
        self._aiohttp: dict[Path | None, ssl.SSLContext] = {}
        self._requests: dict[Path | None, ssl.SSLContext] = {}
        self._sessions: dict[tuple[Path | None, float], requests.Session] = {}

    def aiohttp_context(self, ca_file: Path | None) -> ssl.SSLContext:
        """The context for Graph requests of tenants with this `ca_file`."""
        if ca_file not in self._aiohttp:
            self._aiohttp[ca_file] = client_ssl_context(ca_file, self._ca_data)
        return self._aiohttp[ca_file]

    def requests_session(self, ca_file: Path | None, timeout: float) -> requests.Session:
        """The requests session (for MSAL) that trusts what `aiohttp_context` trusts.

        Shared by every tenant with this `ca_file`: its pool holds one connection per worker
        thread. It keeps `trust_env`, so corporate `HTTPS_PROXY` settings still apply. It keeps
        no cookies: Entra ID's cookies are for browsers, and tenants must share nothing else.
        """
        key = (ca_file, timeout)
        session = self._sessions.get(key)
        if session is not None:
            return session
        # Separate from the aiohttp contexts: urllib3 loads requests' CA bundle into its context
        # from MSAL's worker threads, and the event loop's contexts should not change under it.
        if ca_file not in self._requests:
            self._requests[ca_file] = client_ssl_context(ca_file, self._ca_data)
        session = requests.Session()
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        session.mount(
            "https://", _SSLContextAdapter(self._requests[ca_file], timeout, self._pool_size)
        )
        self._sessions[key] = session
        return session

    def close(self) -> None:
        """Close every session's connections."""
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()
