"""MSAL's HTTP client: urllib3 with our TLS context, one pool shared by many tenants.

MSAL accepts any object with its small `get`/`post` interface (`msal.oauth2cli.http`). Ours is
written on urllib3 instead of using a requests session, for two reasons:

- CPU. A cold token costs MSAL two requests (OIDC discovery, then the token); requests' session
  machinery around each (environment and netrc merge, hooks, cookies, request preparation) was
  about 40% of that CPU, measured: 3.6-4.7 ms per tenant with requests, 2.5 ms with urllib3. At
  thousands of tenants on one event loop, that is the difference between reaching the poll
  round's bound or not.
- Trust. requests lets `REQUESTS_CA_BUNDLE` and `CURL_CA_BUNDLE` replace a session's `verify`,
  which would silently drop a tenant's `ca_file`; urllib3 takes our SSL context and reads
  nothing from the environment. The proxy is given, decided once (`exporter.proxies`).

Failures are raised as `TransportError` (or its `TransportTimeout`), so the token provider can
tell a network problem from a refused credential.
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import unquote, urlencode, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, NameResolutionError, NewConnectionError, ProxyError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

# How a connection failed (exporter.errors.network_hint names the likely cause of each).
NetworkKind = Literal["dns", "tls", "proxy", "refused"]


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


def _proxy_manager(proxy: str, context: ssl.SSLContext, pool_size: int) -> urllib3.ProxyManager:
    parts = urlsplit(proxy)
    headers = {}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers = urllib3.make_headers(proxy_basic_auth=credentials)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib3.ProxyManager(
        f"{parts.scheme}://{netloc}",
        proxy_headers=headers,
        ssl_context=context,
        maxsize=pool_size,
        retries=False,
    )


class MsalHttpClient:
    """`get` and `post` for MSAL over one urllib3 pool manager (thread-safe)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        timeout: float,
        *,
        pool_size: int = 10,
        proxy: str | None = None,
    ) -> None:
        self._timeout = urllib3.Timeout(total=timeout)
        self.proxy = proxy  # for the hint in a network failure's text (shown without credentials)
        # The last answer each worker thread got: MSAL hands Entra's errors back as a dict
        # without the HTTP status or Retry-After, which tell throttling from a bad credential.
        self._local = threading.local()
        self._pool: urllib3.PoolManager = (
            _proxy_manager(proxy, context, pool_size)
            if proxy
            else urllib3.PoolManager(ssl_context=context, maxsize=pool_size, retries=False)
        )

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
        self._pool.clear()

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
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        request_headers = dict(headers or {})
        body: str | None = None
        if data is not None:
            body = data if isinstance(data, str) else urlencode(data)
            request_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        try:
            response = self._pool.request(
                method, url, body=body, headers=request_headers, timeout=self._timeout
            )
        except NewConnectionError as exc:  # urllib3 files it under timeouts; it is not one
            raise TransportError(
                f"cannot connect: {type(exc).__name__}{_os_reason(exc)}", _kind(exc)
            ) from None
        except Urllib3Timeout:
            raise TransportTimeout("no answer within the timeout") from None
        except (HTTPError, OSError) as exc:
            raise TransportError(f"{type(exc).__name__}{_os_reason(exc)}", _kind(exc)) from None
        headers = {name.lower(): value for name, value in response.headers.items()}
        self._local.last = (response.status, headers)
        return HttpResponse(
            response.status, response.data.decode("utf-8", errors="replace"), headers
        )


_OS_REASON: Final = re.compile(r"\[Errno -?\d+\] ([A-Za-z][A-Za-z ,']*[A-Za-z])")


def _os_reason(exc: BaseException) -> str:
    """The operating system's words for a failed connection ("Connection refused", "Name or
    service not known"), which tell DNS from a firewall. Only those words: urllib3's full text
    can hold a proxy URL with its credentials."""
    match = _OS_REASON.search(str(exc))
    return f" ({match.group(1)})" if match else ""


def _kind(exc: BaseException) -> NetworkKind | None:
    """What kind of failure urllib3 reports, from its exception types and the OS error."""
    if isinstance(exc, NameResolutionError):
        return "dns"
    if isinstance(exc, ProxyError):
        return "proxy"
    if isinstance(exc, Urllib3SSLError | ssl.SSLError):
        return "tls"
    if "Connection refused" in _os_reason(exc):
        return "refused"
    return None
