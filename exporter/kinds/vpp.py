"""Apple VPP (Apps and Books) tokens: `vppTokens` from Graph beta.

The `token` property of a vppToken is the secret token itself. It is never requested ($select
leaves it out) and never kept (the parser ignores it, should Graph send it anyway).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from .. import links
from ..graphtime import parse_graph_datetime
from ..metric_spec import MetricSpec
from ..records import Records, Sample
from .base import StatusRow, fetch_collection, text
from .reader import GraphReader

PATH: Final = "/beta/deviceAppManagement/vppTokens"
SELECT: Final = (
    "id",
    "displayName",
    "organizationName",
    "appleId",
    "vppTokenAccountType",
    "locationName",
    "expirationDateTime",
    "lastSyncDateTime",
    "state",
    "lastSyncStatus",
)
KNOWN_STATES: Final = (
    "unknown",
    "valid",
    "expired",
    "invalid",
    "assignedToExternalMDM",
    "duplicateLocationId",
)

_L: Final = ("tenant", "token_id", "token_name")


@dataclass(frozen=True)
class VppToken:
    """One VPP token, without its secret."""

    id: str
    name: str
    organization_name: str
    apple_id: str
    account_type: str
    location_name: str
    expires_at: float | None
    last_sync_at: float | None
    state: str
    last_sync_status: str


def parse_token(item: dict[str, object]) -> VppToken | None:
    """Map one `vppToken` (ignoring its `token`); None when it has no id."""
    token_id = text(item, "id")
    if not token_id:
        return None
    organization = text(item, "organizationName")
    return VppToken(
        id=token_id,
        name=text(item, "displayName") or organization or token_id,
        organization_name=organization,
        apple_id=text(item, "appleId"),
        account_type=text(item, "vppTokenAccountType"),
        location_name=text(item, "locationName"),
        expires_at=parse_graph_datetime(item.get("expirationDateTime")),
        last_sync_at=parse_graph_datetime(item.get("lastSyncDateTime")),
        state=text(item, "state") or "unknown",
        last_sync_status=text(item, "lastSyncStatus") or "none",
    )


class VppTokenKind:
    """VPP (Apps and Books) location tokens."""

    name: Final = "vpp"
    title: Final = "VPP token"
    select_fallback: Final = False
    empty_note: Final = None
    record_type: Final = VppToken
    unkept: Final[Mapping[str, Any]] = MappingProxyType({})
    metrics: Final = (
        MetricSpec(
            "intune_vpp_token_info",
            "gauge",
            "VPP (Apps and Books) token; always 1.",
            (*_L, "apple_id", "organization_name", "account_type", "location_name"),
        ),
        MetricSpec(
            "intune_vpp_token_expiry_timestamp_seconds",
            "gauge",
            "When the VPP token expires, as Unix time.",
            _L,
        ),
        MetricSpec(
            "intune_vpp_token_days_to_expiry",
            "gauge",
            "Days until the VPP token expires; negative once expired.",
            _L,
            derived="days_until",
        ),
        MetricSpec(
            "intune_vpp_token_state",
            "gauge",
            "State set of the VPP token: 1 on its current state, 0 on the others.",
            (*_L, "state"),
        ),
        MetricSpec(
            "intune_vpp_token_sync_error",
            "gauge",
            "1 when the last VPP sync with Apple failed, else 0.",
            _L,
        ),
        MetricSpec(
            "intune_vpp_token_last_sync_timestamp_seconds",
            "gauge",
            "Last VPP sync with Apple as Unix time; absent when never synced.",
            _L,
        ),
        MetricSpec(
            "intune_vpp_token_last_sync_age_seconds",
            "gauge",
            "Seconds since the last VPP sync with Apple; absent when never synced.",
            _L,
            derived="seconds_since",
        ),
    )

    async def fetch(self, graph: GraphReader) -> Records:
        return await fetch_collection(graph, PATH, SELECT, parse_token)

    def samples(self, tenant: str, records: Records) -> Iterator[Sample]:
        token: VppToken
        for token in records:
            labels = (tenant, token.id, token.name)
            info = (token.apple_id, token.organization_name, token.account_type)
            yield "intune_vpp_token_info", (*labels, *info, token.location_name), 1.0
            if token.expires_at is not None:
                yield "intune_vpp_token_expiry_timestamp_seconds", labels, token.expires_at
                yield "intune_vpp_token_days_to_expiry", labels, token.expires_at
            states = KNOWN_STATES if token.state in KNOWN_STATES else (*KNOWN_STATES, token.state)
            for state in states:
                value = 1.0 if state == token.state else 0.0
                yield "intune_vpp_token_state", (*labels, state), value
            failed = token.last_sync_status == "failed"
            yield "intune_vpp_token_sync_error", labels, 1.0 if failed else 0.0
            if token.last_sync_at is not None:
                yield "intune_vpp_token_last_sync_timestamp_seconds", labels, token.last_sync_at
                yield "intune_vpp_token_last_sync_age_seconds", labels, token.last_sync_at

    def status_rows(self, records: Records, now: float) -> list[StatusRow]:
        token: VppToken
        rows = []
        for token in records:
            problems = []
            if token.state != "valid":
                problems.append(f"state {token.state}")
            if token.last_sync_status == "failed":
                problems.append("last sync failed")
            rows.append(
                StatusRow(
                    kind=self.title,
                    name=token.name,
                    apple_id=token.apple_id,
                    expires_at=token.expires_at,
                    last_sync_at=token.last_sync_at,
                    problem="; ".join(problems) or None,
                    renew_url=links.VPP_RENEW,
                    stale_after="vpp_sync_stale",
                )
            )
        return rows

    def incomplete(self, records: Records) -> int:
        return sum(1 for record in records if record.expires_at is None)
