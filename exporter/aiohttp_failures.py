"""How an aiohttp request failed, in words safe to show and with the kind of failure.

Shared by Graph's client and MSAL's: both send through the exporter's one aiohttp session.
"""

from __future__ import annotations

import errno
import socket
from typing import Literal

import aiohttp

# How a connection failed (exporter.errors.network_hint names the likely cause of each).
NetworkKind = Literal["dns", "tls", "proxy", "refused"]


def connection_failure(exc: aiohttp.ClientError) -> tuple[str, NetworkKind | None]:
    """What failed, in words without aiohttp's SSLContext repr (nor a proxy's credentials),
    and its kind for the hint."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS failure: {name}", "tls"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"{name}: cannot connect to the proxy", "proxy"
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = f"{exc.host}:{exc.port}"
        reason = exc.strerror or type(exc.os_error).__name__
        dns = getattr(aiohttp, "ClientConnectorDNSError", None)  # aiohttp 3.10 and later
        if (dns is not None and isinstance(exc, dns)) or isinstance(exc.os_error, socket.gaierror):
            return f"{name}: cannot resolve {where} ({reason})", "dns"
        if exc.errno == errno.ECONNREFUSED:
            return f"{name}: cannot connect to {where} (connection refused)", "refused"
        return f"{name}: cannot connect to {where} ({reason})", None
    return f"{name}: {exc}", None
