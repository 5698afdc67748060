"""MSAL's HTTP client: its requests sent on the event loop, through the exporter's aiohttp session.

MSAL accepts any object with its small `get`/`post` interface (`msal.oauth2cli.http`) and calls
it from the worker thread that runs MSAL. Ours hands each request to the event loop and waits
for the answer, for three reasons:

- CPU. A cold token costs MSAL two requests (OIDC discovery, then the token). Sent from the
  worker with urllib3, http.client's pure-Python response parsing (`email.parser`) and
  urllib3's pool machinery held the GIL about 0.76 ms per request (py-spy, GIL samples, over a
  cold round of 1,000 tenants); on the loop with aiohttp's C parser, 0.31 ms. The waiting
  thread holds no GIL while the loop does the work.
- One pool. Entra ID's requests share the session's connection pool (and TLS sessions) with
  Graph's, as the issue asks of every tenant with the same trust.
- Trust. aiohttp takes our SSL context and, with `trust_env` off, reads nothing from the
  environment: `REQUESTS_CA_BUNDLE` cannot replace a tenant's `ca_file`. The proxy is given,
  decided once (`exporter.proxies`).

Failures are raised as `TransportError` (or its `TransportTimeout`), so the token provider can
tell a network problem from a refused credential.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
from aiohttp.helpers import strip_auth_from_url
from yarl import URL

from .aiohttp_failures import NetworkKind, connection_failure

# The largest answer read from Entra ID: discovery documents and token answers are a few KiB.
MAX_BODY: Final = 1 << 20
# How much longer than the request's own timeout the worker waits for the loop's answer, so
# that a loop stopped mid-request (shutdown) cannot hold a worker thread forever.
_GRACE: Final = 5.0


class TransportError(Exception):
    """No HTTP answer: connection, TLS, proxy or protocol failure. The text names the kind."""

    def __init__(self, message: str, kind: NetworkKind | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class TransportTimeout(TransportError):
    """No answer within the request timeout."""


@dataclass(frozen=True)
class HttpResponse:
    """The response shape MSAL reads: status code, text, headers."""

    status_code: int
    text: str = field(repr=False)
    headers: Mapping[str, str]

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise TransportError(f"HTTP {self.status_code}")


class MsalHttpClient:
    """`get` and `post` for MSAL (thread-safe), sent on `session`'s event loop.

    Built on the event loop's thread; called only from other threads (MSAL's workers): a call
    on the loop's own thread would wait for itself, and raises instead.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        context: ssl.SSLContext,
        timeout: float,
        *,
        proxy: str | None = None,
    ) -> None:
        self._session = session
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._ssl = context
        self._timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self.proxy = proxy  # for the hint in a network failure's text (shown without credentials)
        self._proxy: URL | None = None
        self._proxy_headers: dict[str, str] | None = None
        if proxy is not None:
            self._proxy, auth = strip_auth_from_url(URL(proxy))
            if auth is not None:
                self._proxy_headers = {"Proxy-Authorization": auth.encode()}
        # The last answer each worker thread got: MSAL hands Entra's errors back as a dict
        # without the HTTP status or Retry-After, which tell throttling from a bad credential.
        self._local = threading.local()

    def get(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> HttpResponse:
        return self._send("GET", url, params, None, headers)

    def post(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> HttpResponse:
        return self._send("POST", url, params, data, headers)

    def close(self) -> None:
        """Nothing to close: the connections are the session's."""

    def forget_last(self) -> None:
        """Forget this thread's last answer (before an MSAL call)."""
        self._local.last = None

    def last(self) -> tuple[int, dict[str, str]] | None:
        """(status, lower-cased headers) of this thread's last answer since `forget_last`."""
        last: tuple[int, dict[str, str]] | None = getattr(self._local, "last", None)
        return last

    def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | str | None,
        headers: Mapping[str, str] | None,
    ) -> HttpResponse:
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("MSAL's HTTP client was called on the event loop's thread")
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        request_headers = dict(headers or {})
        body: str | None = None
        if data is not None:
            body = data if isinstance(data, str) else urlencode(data)
            request_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        future = asyncio.run_coroutine_threadsafe(
            self._request(method, url, body, request_headers), self._loop
        )
        try:
            status, answer_headers, text = future.result(self._timeout + _GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TransportTimeout("no answer within the timeout") from None
        except concurrent.futures.CancelledError:
            raise TransportError("the request was cancelled (shutting down)") from None
        self._local.last = (status, answer_headers)
        return HttpResponse(status, text, answer_headers)

    async def _request(
        self, method: str, url: str, body: str | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], str]:
        try:
            async with self._session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=self._client_timeout,
                ssl=self._ssl,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
                allow_redirects=False,
            ) as response:
                data = bytearray()
                async for chunk in response.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > MAX_BODY:
                        raise TransportError(f"the answer is larger than {MAX_BODY >> 20} MiB")
                answer_headers = {name.lower(): value for name, value in response.headers.items()}
                return response.status, answer_headers, data.decode("utf-8", errors="replace")
        except TimeoutError:
            raise TransportTimeout("no answer within the timeout") from None
        except aiohttp.ClientError as exc:
            detail, kind = connection_failure(exc)
            raise TransportError(detail, kind) from None
