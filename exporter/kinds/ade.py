"""Automated Device Enrollment (ADE/DEP) tokens: `depOnboardingSettings`, Graph beta only."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from .. import links
from ..graphtime import parse_graph_datetime
from ..metric_spec import MetricSpec
from ..records import Records, Sample
from .base import StatusRow, fetch_collection, integer, text
from .reader import GraphReader

PATH: Final = "/beta/deviceManagement/depOnboardingSettings"
SELECT: Final = (
    "id",
    "tokenName",
    "appleIdentifier",
    "tokenType",
    "tokenExpirationDateTime",
    "lastSuccessfulSyncDateTime",
    "lastSyncTriggeredDateTime",
    "lastSyncErrorCode",
    "syncedDeviceCount",
)

# Apple's codes are undocumented; 3 is the one meaning admins and tools agree on.
SYNC_ERROR_HINTS: Final = {
    3: "new Apple Business/School Manager terms and conditions must be accepted",
}

_L: Final = ("tenant", "token_id", "token_name")
# Intune runs a delta sync every 12 hours; three missed ones is a problem (as in the alert rule).


@dataclass(frozen=True)
class AdeToken:
    """One ADE token as Graph reports it."""

    id: str
    name: str
    apple_id: str
    token_type: str
    expires_at: float | None
    last_successful_sync_at: float | None
    last_sync_triggered_at: float | None
    last_sync_error_code: int
    synced_devices: int | None


def parse_token(item: dict[str, object]) -> AdeToken | None:
    """Map one `depOnboardingSetting`; None when it has no id to identify it by."""
    token_id = text(item, "id")
    if not token_id:
        return None
    return AdeToken(
        id=token_id,
        name=text(item, "tokenName") or token_id,
        apple_id=text(item, "appleIdentifier"),
        token_type=text(item, "tokenType") or "none",
        expires_at=parse_graph_datetime(item.get("tokenExpirationDateTime")),
        last_successful_sync_at=parse_graph_datetime(item.get("lastSuccessfulSyncDateTime")),
        last_sync_triggered_at=parse_graph_datetime(item.get("lastSyncTriggeredDateTime")),
        last_sync_error_code=integer(item, "lastSyncErrorCode") or 0,
        synced_devices=integer(item, "syncedDeviceCount"),
    )


def sync_error_text(code: int) -> str:
    """What an ADE `lastSyncErrorCode` means, as far as anyone knows."""
    hint = SYNC_ERROR_HINTS.get(code)
    return (
        f"sync error code {code}: {hint}" if hint else f"sync error code {code} reported by Apple"
    )


class AdeTokenKind:
    """ADE/DEP enrollment program tokens."""

    name: Final = "ade"
    title: Final = "ADE token"
    select_fallback: Final = True
    empty_note: Final = None
    record_type: Final = AdeToken
    unkept: Final[Mapping[str, Any]] = MappingProxyType({})
    metrics: Final = (
        MetricSpec(
            "intune_ade_token_info",
            "gauge",
            "ADE (DEP) enrollment program token; always 1.",
            (*_L, "apple_id", "token_type"),
        ),
        MetricSpec(
            "intune_ade_token_expiry_timestamp_seconds",
            "gauge",
            "When the ADE token expires, as Unix time.",
            _L,
        ),
        MetricSpec(
            "intune_ade_token_days_to_expiry",
            "gauge",
            "Days until the ADE token expires; negative once expired.",
            _L,
            derived="days_until",
        ),
        MetricSpec(
            "intune_ade_token_sync_error",
            "gauge",
            "1 when Apple reported an error on the last ADE sync, else 0.",
            _L,
        ),
        MetricSpec(
            "intune_ade_token_last_sync_error_code",
            "gauge",
            "lastSyncErrorCode of the ADE token as Graph returns it; 0 is no error.",
            _L,
        ),
        MetricSpec(
            "intune_ade_token_last_successful_sync_timestamp_seconds",
            "gauge",
            "Last successful sync with Apple as Unix time; absent when never synced.",
            _L,
        ),
        MetricSpec(
            "intune_ade_token_last_successful_sync_age_seconds",
            "gauge",
            "Seconds since the last successful sync with Apple; absent when never synced.",
            _L,
            derived="seconds_since",
        ),
        MetricSpec(
            "intune_ade_token_last_sync_triggered_timestamp_seconds",
            "gauge",
            "Last time a sync with Apple was triggered, as Unix time; absent when never.",
            _L,
        ),
        MetricSpec(
            "intune_ade_token_synced_devices",
            "gauge",
            "Devices synced from Apple Business/School Manager with this token.",
            _L,
        ),
    )

    async def fetch(self, graph: GraphReader) -> Records:
        return await fetch_collection(graph, PATH, SELECT, parse_token)

    def samples(self, tenant: str, records: Records) -> Iterator[Sample]:
        token: AdeToken
        for token in records:
            labels = (tenant, token.id, token.name)
            yield "intune_ade_token_info", (*labels, token.apple_id, token.token_type), 1.0
            if token.expires_at is not None:
                yield "intune_ade_token_expiry_timestamp_seconds", labels, token.expires_at
                yield "intune_ade_token_days_to_expiry", labels, token.expires_at
            code = token.last_sync_error_code
            yield "intune_ade_token_sync_error", labels, 1.0 if code else 0.0
            yield "intune_ade_token_last_sync_error_code", labels, float(code)
            if token.last_successful_sync_at is not None:
                synced = token.last_successful_sync_at
                yield "intune_ade_token_last_successful_sync_timestamp_seconds", labels, synced
                yield "intune_ade_token_last_successful_sync_age_seconds", labels, synced
            if token.last_sync_triggered_at is not None:
                triggered = token.last_sync_triggered_at
                yield "intune_ade_token_last_sync_triggered_timestamp_seconds", labels, triggered
            if token.synced_devices is not None:
                yield "intune_ade_token_synced_devices", labels, float(token.synced_devices)

    def status_rows(self, records: Records, now: float) -> list[StatusRow]:
        token: AdeToken
        rows = []
        for token in records:
            code = token.last_sync_error_code
            rows.append(
                StatusRow(
                    kind=self.title,
                    name=token.name,
                    apple_id=token.apple_id,
                    expires_at=token.expires_at,
                    last_sync_at=token.last_successful_sync_at,
                    problem=sync_error_text(code) if code else None,
                    renew_url=links.ADE_RENEW,
                    troubleshooting_url=links.ADE_SYNC_TROUBLESHOOTING if code else None,
                    stale_after="ade_sync_stale",
                )
            )
        return rows

    def incomplete(self, records: Records) -> int:
        return sum(1 for record in records if record.expires_at is None)
