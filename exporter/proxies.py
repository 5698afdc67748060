"""Which proxy a connection goes through: `HTTPS_PROXY` and `NO_PROXY`, read once per host.

aiohttp's and requests' `trust_env` read the environment and `~/.netrc` again on every request
(aiohttp in two thread hops); at thousands of tenants that is a large share of the CPU. The
exporter decides once, when a tenant's clients are built, with the same rules.
"""

from __future__ import annotations

from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass


def proxy_for(url: str) -> str | None:
    """The proxy URL for requests to `url`, or None (no proxy set, or `NO_PROXY` exempts it)."""
    parts = urlsplit(url)
    proxies = getproxies_environment()
    if parts.scheme not in proxies or proxy_bypass(parts.hostname or ""):
        return None
    return proxies[parts.scheme] or None
