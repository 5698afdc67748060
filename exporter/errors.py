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


_DNS_SIGNS: Final = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "failed to resolve",
    "no address associated",
    "getaddrinfo failed",
    "cannot connect to host",  # aiohttp's wording for a failed resolve or connect
)


def shown_proxy(proxy: str | None) -> str | None:
    """A proxy URL as it may be shown: scheme, host and port, never its credentials."""
    if proxy is None:
        return None
    parts = urlsplit(proxy)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def network_hint(detail: str, proxy: str | None) -> str:
    """`detail` (what was tried, and how it failed) with the likely causes, for the log and the
    status page: a network failure without a hint is the first hour's most common dead end."""
    low = detail.lower()
    via = f"through the proxy {shown_proxy(proxy)}" if proxy else "directly (no HTTPS_PROXY)"
    if proxy and "proxy" in low:
        cause = "the proxy refused or failed the connection (is it up, does it need credentials?)"
    elif "certificate" in low or "tls" in low or "ssl" in low:
        cause = (
            "TLS inspection by a proxy or firewall presenting its own certificate "
            "(set ca_file to its CA)"
        )
    elif "refused" in low:
        cause = (
            "nothing accepts connections there "
            "(a firewall, or a wrong authority_host/graph_endpoint)"
        )
    elif any(sign in low for sign in _DNS_SIGNS):
        cause = (
            "DNS (the host does not resolve here), a firewall blocking outbound HTTPS (443), "
            "or a proxy that must be set in HTTPS_PROXY"
        )
    else:
        cause = (
            "DNS, a proxy (HTTPS_PROXY, NO_PROXY), a firewall on outbound HTTPS (443) "
            "or TLS inspection"
        )
    return f"{detail} [connecting {via}; likely cause: {cause}]"
