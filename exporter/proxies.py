"""Which proxy a connection goes through: `HTTPS_PROXY` and `NO_PROXY`, read once.

aiohttp's and requests' `trust_env` read the environment and `~/.netrc` again on every request
(aiohttp in two thread hops); at thousands of tenants that is a large share of the CPU. The
exporter decides when a tenant's clients are built, with the same rules, from one reading of the
environment per exporter (reading it per tenant walked all of `os.environ` 20,000 times for
10,000 tenants: seconds of start-up).
"""

from __future__ import annotations

from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass


class Proxies:
    """The environment's proxy settings as of construction, answered per host from a cache."""

    def __init__(self) -> None:
        self._proxies = getproxies_environment()
        self._decided: dict[tuple[str, str], str | None] = {}

    def for_url(self, url: str) -> str | None:
        """The proxy URL for requests to `url`, or None (none set, or `NO_PROXY` exempts it)."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._decided:
            self._decided[key] = self._decide(parts.scheme, parts.hostname or "")
        return self._decided[key]

    def _decide(self, scheme: str, host: str) -> str | None:
        if scheme not in self._proxies or proxy_bypass(host):  # once per host
            return None
        return self._proxies[scheme] or None


def proxy_for(url: str) -> str | None:
    """The proxy URL for requests to `url`, from the environment as it is now."""
    return Proxies().for_url(url)
