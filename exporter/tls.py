"""Client-side TLS trust, shared by Graph's and MSAL's requests (both sent through aiohttp).

Verification is always on. Trust is the system store, plus the bundles named by the standard
`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE` and `CURL_CA_BUNDLE` variables, plus a tenant's `ca_file`:
each adds to the others, so a `ca_file` stays trusted on hosts that set those variables (with
requests, `REQUESTS_CA_BUNDLE` would have replaced it; see `exporter.msal_http`).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import aiohttp

from .msal_http import MsalHttpClient

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


class TrustStore:
    """Client contexts and MSAL's HTTP clients by `ca_file`, built once and shared by every
    tenant with the same trust: loading the system store costs milliseconds, and a pool per
    tenant (with a TLS handshake per tenant) costs memory and CPU that add up over thousands of
    tenants. The connections themselves are the one aiohttp session's."""

    def __init__(self, ca_data: str | None = None) -> None:
        self._ca_data = ca_data
        self._contexts: dict[Path | None, ssl.SSLContext] = {}
        self._msal: dict[tuple[Path | None, float, str | None], MsalHttpClient] = {}

    def aiohttp_context(self, ca_file: Path | None) -> ssl.SSLContext:
        """The context for the requests of tenants with this `ca_file`, Graph's and MSAL's."""
        if ca_file not in self._contexts:
            self._contexts[ca_file] = client_ssl_context(ca_file, self._ca_data)
        return self._contexts[ca_file]

    def msal_client(
        self,
        session: aiohttp.ClientSession,
        ca_file: Path | None,
        timeout: float,
        proxy: str | None = None,
    ) -> MsalHttpClient:
        """MSAL's HTTP client for tenants with this `ca_file` and proxy, shared by all of them.

        Call it on the event loop's thread: the client sends its requests on that loop.
        """
        key = (ca_file, timeout, proxy)
        client = self._msal.get(key)
        if client is None:
            client = MsalHttpClient(session, self.aiohttp_context(ca_file), timeout, proxy=proxy)
            self._msal[key] = client
        return client

    def close(self) -> None:
        """Forget the clients (their connections are the session's, closed with it)."""
        self._msal.clear()
