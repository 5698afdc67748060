"""Why a poll failed, as a fixed set of reasons that label `intune_tenant_poll_errors_total`."""

from __future__ import annotations

from typing import Final, Literal
from urllib.parse import urlsplit

Reason = Literal[
    "auth",
    "forbidden",
    "not_found",
    "throttled",
    "timeout",
    "network",
    "http",
    "invalid_response",
]


class PollError(Exception):
    """A failure of one collector's poll. Its text is safe to log and to show on the status page."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message


class AuthError(PollError):
    """Entra ID refused to issue a token (bad secret, unknown app or tenant, missing consent...)."""

    def __init__(self, message: str, aadsts_code: int | None = None) -> None:
        super().__init__("auth", message)
        self.aadsts_code = aadsts_code


class GraphError(PollError):
    """Graph answered with an HTTP error: Graph's error `code`, `message` and request id."""

    def __init__(
        self,
        reason: Reason,
        status: int,
        code: str,
        message: str,
        request_id: str | None,
    ) -> None:
        text = f"HTTP {status} {code}: {message}"
        if request_id:
            text += f" (request-id {request_id})"
        super().__init__(reason, text)
        self.status = status
        self.code = code
        self.graph_message = message
        self.request_id = request_id


# By how a connection failed, as the client library tells it (a `NetworkKind`); never guessed
# from an error's text, which holds URLs and host names.
_CAUSES: Final[dict[str, str]] = {
    "dns": "DNS (the host does not resolve here), or a network that only reaches the internet "
    "through a proxy (set HTTPS_PROXY)",
    "tls": "TLS inspection by a proxy or firewall presenting its own certificate "
    "(set ca_file to its CA)",
    "proxy": "the proxy refused or failed the connection (is it up, does it need credentials?)",
    "refused": "nothing accepts connections there "
    "(a firewall, or a wrong authority_host/graph_endpoint)",
}
_ANY_CAUSE: Final = (
    "DNS, a proxy (HTTPS_PROXY, NO_PROXY), a firewall on outbound HTTPS (443) or TLS inspection"
)


def shown_proxy(proxy: str | None) -> str | None:
    """A proxy URL as it may be shown: scheme, host and port, never its credentials."""
    if proxy is None:
        return None
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def network_hint(detail: str, proxy: str | None, kind: str | None = None) -> str:
    """`detail` (what was tried, and how it failed) with the likely cause, for the log and the
    status page: a network failure without a hint is the first hour's most common dead end."""
    via = f"through the proxy {shown_proxy(proxy)}" if proxy else "directly (no HTTPS_PROXY)"
    cause = _CAUSES.get(kind or "", _ANY_CAUSE)
    return f"{detail} [connecting {via}; likely cause: {cause}]"
