"""Microsoft national clouds: where to authenticate and where Graph lives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

CloudName = Literal["global", "usgov", "usgov-dod", "china"]


@dataclass(frozen=True)
class Cloud:
    """Default Entra authority host and Graph endpoint of one cloud."""

    authority_host: str
    graph_endpoint: str


CLOUDS: Final[dict[str, Cloud]] = {
    "global": Cloud("login.microsoftonline.com", "https://graph.microsoft.com"),
    "usgov": Cloud("login.microsoftonline.us", "https://graph.microsoft.us"),
    "usgov-dod": Cloud("login.microsoftonline.us", "https://dod-graph.microsoft.us"),
    "china": Cloud("login.partner.microsoftonline.cn", "https://microsoftgraph.chinacloudapi.cn"),
}
