"""A small Microsoft Graph client: bearer auth, OData paging, retries, and readable errors.

`GraphClient` satisfies the credential kinds' `GraphReader` protocol.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import SplitResult, urlsplit

import aiohttp
from aiohttp.helpers import strip_auth_from_url
from yarl import URL

from . import __version__
from .aiohttp_failures import connection_failure
from .errors import GraphError, PollError, Reason, network_hint
from .records import JsonObject


class TokenProvider(Protocol):
    """Gives bearer tokens for one tenant's Graph (`exporter.auth` has MSAL's)."""

    async def token(self) -> str:
        """A valid access token; raises `PollError` (reason auth, timeout, network)."""
        ...

    async def invalidate(self, token: str) -> None:
        """Forget `token` (Graph said 401) so that the next `token()` fetches a fresh one."""
        ...


RETRYABLE_STATUSES: Final = frozenset({429, 503, 504})
# The largest body read from Graph: a page of any collection read here is far smaller (1,000
# devices are under 1 MiB); more is a broken proxy or a wrong endpoint, not data.
MAX_BODY: Final = 32 * 1024 * 1024
_DEFAULT_PORTS: Final = {"https": 443, "http": 80}


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return -1  # an invalid port matches no origin


def _origin(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port made explicit: `:443` is https."""
    scheme = scheme.lower()
    return scheme, (host or "").lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


# Tens of thousands of devices fit in far fewer pages; more means a nextLink loop.
MAX_PAGES: Final = 10_000
_MAX_MESSAGE: Final = 400


@dataclass(frozen=True)
class RetryPolicy:
    """How throttled (429) and unavailable (503, 504) responses are retried.

    The defaults follow Microsoft's Graph SDKs: a 3 s first delay, capped at 180 s, with a bound
    on attempts and on the total time spent waiting for one request.
    """

    max_attempts: int = 4
    base_delay: float = 3.0
    max_delay: float = 180.0
    max_total_wait: float = 240.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from `Retry-After`: delta seconds (decimals allowed) or an HTTP date."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT by definition
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _reason_for(status: int) -> Reason:
    if status == 401:
        return "auth"
    if status == 403:
        return "forbidden"
    if status == 404:
        return "not_found"
    if status == 429:
        return "throttled"
    return "http"


def parse_graph_error(status: int, body: bytes, headers: Mapping[str, str]) -> GraphError:
    """Build a `GraphError` from Graph's error JSON, unwrapping the document Intune nests in it."""
    code = ""
    message = ""
    request_id = headers.get("request-id") or headers.get("client-request-id")
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "")
        message = str(error.get("message") or "")
        inner = error.get("innerError") or error.get("innererror")
        if isinstance(inner, dict) and inner.get("request-id"):
            request_id = str(inner["request-id"])
        # Intune puts a second JSON document, as a string, inside error.message.
        if message.lstrip().startswith("{"):
            try:
                nested = json.loads(message)
            except ValueError:
                nested = None
            if isinstance(nested, dict) and nested.get("Message"):
                message = str(nested["Message"])
    else:
        content_type = headers.get("Content-Type", "unknown content type")
        message = f"no Graph error body ({content_type}, {len(body)} bytes)"
    return GraphError(
        _reason_for(status), status, code or "unknown", _one_line(message), request_id
    )


class GraphClient:
    """GET requests against one tenant's Graph, with its token provider."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        tokens: TokenProvider,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        retry: RetryPolicy | None = None,
        on_response: Callable[[int], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        proxy: str | None = None,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        base = urlsplit(self._base)
        self._origin = _origin(base.scheme, base.hostname, _port(base))
        self._tokens = tokens
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl: ssl.SSLContext | bool = ssl_context or True
        self._retry = retry or RetryPolicy()
        self._on_response = on_response or (lambda status: None)
        self._sleep = sleep
        self._proxy: URL | None = None
        self._shown_proxy: str | None = None  # credentials stripped: safe in an error's text
        self._proxy_headers: dict[str, str] | None = None
        if proxy is not None:
            self._proxy, auth = strip_auth_from_url(URL(proxy))
            self._shown_proxy = str(self._proxy)
            if auth is not None:
                self._proxy_headers = {"Proxy-Authorization": auth.encode()}

    def _url(self, path: str, query: Mapping[str, str]) -> URL:
        url = URL(f"{self._base}{path}")
        return url.with_query(dict(query)) if query else url

    async def get_collection(
        self,
        path: str,
        select: Sequence[str],
        *,
        query: Mapping[str, str] | None = None,
    ) -> list[JsonObject]:
        """Every item of a collection, following `@odata.nextLink` to the end.

        An empty `select` sends no `$select` (the whole objects). `query` adds options such as
        `$top`.
        """
        options = {"$select": ",".join(select)} if select else {}
        url: URL | None = self._url(path, {**options, **(query or {})})
        items: list[JsonObject] = []
        seen: set[str] = set()
        while url is not None:
            page = await self._get_json(url)
            value = page.get("value")
            if not isinstance(value, list):
                raise PollError("invalid_response", f"{path}: the response has no 'value' list")
            if not all(isinstance(item, dict) for item in value):
                raise PollError("invalid_response", f"{path}: 'value' holds a non-object item")
            items.extend(value)
            next_link = page.get("@odata.nextLink")
            if next_link is None:
                return items
            if not isinstance(next_link, str) or not next_link:
                raise PollError("invalid_response", f"{path}: '@odata.nextLink' is not a string")
            if next_link in seen or len(seen) >= MAX_PAGES:
                raise PollError(
                    "invalid_response",
                    f"{path}: Graph repeats a page (or gave over {MAX_PAGES} pages); a paging loop",
                )
            seen.add(next_link)
            url = self._checked_next_link(path, next_link)
        return items

    async def get_object(
        self, path: str, select: Sequence[str], *, expand: Sequence[str] = ()
    ) -> JsonObject:
        """A single entity (the APNs certificate singleton, one ADE token with its defaults)."""
        options = {"$select": ",".join(select)} if select else {}
        if expand:
            options["$expand"] = ",".join(expand)
        return await self._get_json(self._url(path, options))

    def _checked_next_link(self, path: str, link: str) -> URL:
        """The nextLink to follow, exactly as Graph wrote it (not re-encoded, as Microsoft
        documents: its skip token is opaque), if it points at our Graph endpoint."""
        parts = urlsplit(link)
        # Never send the bearer token to a host other than the configured Graph endpoint.
        if _origin(parts.scheme, parts.hostname, _port(parts)) != self._origin:
            raise PollError(
                "invalid_response", f"{path}: '@odata.nextLink' points outside {self._base}"
            )
        return URL(link, encoded=True)

    async def _get_json(self, url: URL) -> JsonObject:
        attempt = 0
        waited = 0.0
        token_refreshed = False
        while True:
            attempt += 1
            token = await self._tokens.token()
            status, headers, body = await self._send(url, token)
            if status == 200:
                return self._decode(url, body)
            if status == 401 and not token_refreshed:
                # The token may have expired or been revoked early: fetch a fresh one, once.
                token_refreshed = True
                await self._tokens.invalidate(token)
                continue
            if status in RETRYABLE_STATUSES and attempt < self._retry.max_attempts:
                delay = self._delay(attempt, headers.get("Retry-After"))
                # A server's Retry-After is never shortened: longer than we may wait, give up.
                if delay <= self._retry.max_delay and waited + delay <= self._retry.max_total_wait:
                    await self._sleep(delay)
                    waited += delay
                    continue
            raise parse_graph_error(status, body, headers)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        asked = parse_retry_after(retry_after)
        if asked is not None:
            return asked
        ceiling = min(self._retry.max_delay, self._retry.base_delay * 2.0 ** (attempt - 1))
        # Half fixed, half random: spreads retries of many tenants without retrying at once.
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto

    async def _send(self, url: URL, token: str) -> tuple[int, Mapping[str, str], bytes]:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "client-request-id": str(uuid.uuid4()),
            "User-Agent": f"intune-apple-token-exporter/{__version__}",
        }
        try:
            async with self._session.get(
                url,
                headers=headers,
                timeout=self._timeout,
                ssl=self._ssl,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
            ) as response:
                body = await _read_capped(response, url)
                self._on_response(response.status)
                return response.status, response.headers, body
        except TimeoutError:
            raise PollError(
                "timeout", f"GET {url.path}: no answer within {self._timeout.total:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            detail, kind = connection_failure(exc)
            raise PollError(
                "network", network_hint(f"GET {url.path}: {detail}", self._shown_proxy, kind)
            ) from None

    @staticmethod
    def _decode(url: URL, body: bytes) -> JsonObject:
        try:
            document = json.loads(body)
        except ValueError:
            raise PollError("invalid_response", f"GET {url.path}: the body is not JSON") from None
        if not isinstance(document, dict):
            raise PollError("invalid_response", f"GET {url.path}: the body is not a JSON object")
        return document


async def _read_capped(response: aiohttp.ClientResponse, url: URL) -> bytes:
    """The body, refused past MAX_BODY (announced or not) before it fills memory."""
    cap = f"{MAX_BODY / 2**20:g} MiB" if MAX_BODY >= 2**20 else f"{MAX_BODY:,} bytes"
    too_large = PollError(
        "invalid_response",
        f"GET {url.path}: the answer is larger than {cap}, far more than a page of Graph",
    )
    if response.content_length is not None and response.content_length > MAX_BODY:
        raise too_large
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > MAX_BODY:
            raise too_large
    return bytes(body)
