"""The devices of every ADE token: `importedAppleDeviceIdentities` and the default enrollment
profiles of each `depOnboardingSetting`, Graph beta only.

These are the symptoms Microsoft's ADE troubleshooting article names (devices that do not sync,
profile assignments that fail, devices that fail to enroll), measured per token, while the `ade`
collector watches the token itself. The collector lists the tokens on its own (id and name), so
that its failure never touches the `ade` metrics and theirs never touches it.

A device's `serialNumber` identifies a person's device: it is never requested, kept, exported,
logged or shown. Nor is a device's id: a record holds one token's counts, nothing per device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from .. import links
from ..graphtime import parse_graph_datetime
from ..metric_spec import MetricSpec
from ..records import JsonObject, Records, Sample
from ..timetext import SECONDS_PER_DAY, SECONDS_PER_HOUR, age_text
from .base import StatusRow, text
from .reader import GraphReader

TOKENS_PATH: Final = "/beta/deviceManagement/depOnboardingSettings"
TOKENS_SELECT: Final = ("id", "tokenName")
# Never `serialNumber`: the exporter has no use for it, and it identifies a person's device.
SELECT: Final = (
    "id",
    "platform",
    "enrollmentState",
    "requestedEnrollmentProfileId",
    "requestedEnrollmentProfileAssignmentDateTime",
    "isDeleted",
    "createdDateTime",
    "lastContactedDateTime",
    "discoverySource",
)
# `enrollmentState` of importedAppleDeviceIdentity (blocked: beta only); another value is kept
# as it comes, next to these.
KNOWN_STATES: Final = ("unknown", "enrolled", "pendingReset", "failed", "notContacted", "blocked")
ENROLLED: Final = "enrolled"
# The platforms a token has a default enrollment profile for (the `platform` label, lower-cased
# as on every metric) and the navigation of `depOnboardingSetting` that holds each.
DEFAULT_NAVIGATIONS: Final = {
    "ios": "defaultIosEnrollmentProfile",
    "macos": "defaultMacOsEnrollmentProfile",
    "tvos": "defaultTvOSEnrollmentProfile",
    "visionos": "defaultVisionOSEnrollmentProfile",
}
# How the status page names a platform and its devices (one, many).
PLATFORM_NAMES: Final = {
    "ios": ("iOS/iPadOS", "iPhone or iPad", "iPhones and iPads"),
    "macos": ("macOS", "Mac", "Macs"),
    "tvos": ("tvOS", "Apple TV", "Apple TVs"),
    "visionos": ("visionOS", "Apple Vision Pro", "Apple Vision Pros"),
}

_L: Final = ("tenant", "token_id", "token_name")


def devices_path(token_id: str) -> str:
    """The imported Apple devices of one ADE token."""
    return f"{TOKENS_PATH}/{token_id}/importedAppleDeviceIdentities"


@dataclass(frozen=True)
class AdeTokenDevices:
    """One ADE token's devices, counted (nothing per device is kept), and its default profiles.

    Every per-platform tuple holds each platform the token has devices of (deleted ones too),
    with zeros, so that a series does not vanish when its count drops to none.
    """

    id: str  # the token's id
    name: str
    # (platform, enrollmentState, devices) of the devices not deleted in Apple Business
    # Manager: every known state, and any other Graph sent.
    states: tuple[tuple[str, str, int], ...]
    # (platform, devices, oldest createdDateTime) of the devices not deleted, not enrolled and
    # without a requested enrollment profile; the oldest is None when there is none.
    without_profile: tuple[tuple[str, int, float | None], ...]
    # (platform, devices) released or removed in Apple Business Manager (isDeleted).
    deleted: tuple[tuple[str, int], ...]
    # (platform, profile id, profile name) of each default enrollment profile that is set.
    defaults: tuple[tuple[str, str, str], ...]
    # For the status page: devices an admin imported by serial number (not synced from Apple),
    # the latest contact of any device, and the oldest profile assignment still not enrolled.
    admin_imported: int = 0
    last_contact_at: float | None = None
    oldest_assignment_at: float | None = None
    # Devices Graph sent without an id (not counted), or waiting without a profile and without
    # createdDateTime (counted, but their wait is unknown).
    incomplete: int = 0


@dataclass(frozen=True, slots=True)
class _Device:
    platform: str
    state: str
    has_profile: bool
    deleted: bool
    created_at: float | None
    assigned_at: float | None
    contacted_at: float | None
    admin_imported: bool


def parse_device(item: JsonObject) -> _Device | None:
    """One `importedAppleDeviceIdentity`, reduced to what is counted; None without an id.

    The serial number is not read, should Graph send it.
    """
    if not text(item, "id"):
        return None
    return _Device(
        platform=text(item, "platform").lower() or "unknown",
        state=text(item, "enrollmentState") or "unknown",
        has_profile=bool(text(item, "requestedEnrollmentProfileId").strip()),
        deleted=item.get("isDeleted") is True,
        created_at=parse_graph_datetime(item.get("createdDateTime")),
        assigned_at=parse_graph_datetime(item.get("requestedEnrollmentProfileAssignmentDateTime")),
        contacted_at=parse_graph_datetime(item.get("lastContactedDateTime")),
        admin_imported=text(item, "discoverySource") == "adminImport",
    )


def parse_defaults(item: JsonObject) -> tuple[tuple[str, str, str], ...]:
    """The default profiles a token has: a navigation that is null, missing or without an id
    is no default."""
    found = []
    for platform, navigation in DEFAULT_NAVIGATIONS.items():
        profile = item.get(navigation)
        if isinstance(profile, dict) and (profile_id := text(profile, "id")):
            found.append((platform, profile_id, text(profile, "displayName") or profile_id))
    return tuple(found)


def _oldest(values: Iterator[float | None]) -> float | None:
    return min((v for v in values if v is not None), default=None)


def count_devices(
    token_id: str,
    name: str,
    items: list[JsonObject],
    defaults: tuple[tuple[str, str, str], ...],
) -> AdeTokenDevices:
    """One token's record from its device items (once per id) and its defaults."""
    unidentified = 0
    by_id: dict[str, _Device] = {}
    for item in items:
        device = parse_device(item)
        if device is None:
            unidentified += 1
        else:
            by_id[text(item, "id")] = device  # an item Graph repeats across pages counts once
    devices = list(by_id.values())
    platforms = sorted({d.platform for d in devices})
    present = [d for d in devices if not d.deleted]
    states: Counter[tuple[str, str]] = Counter((d.platform, d.state) for d in present)
    waiting = [d for d in present if d.state != ENROLLED and not d.has_profile]
    state_rows = []
    for platform in platforms:
        extra = sorted({s for p, s in states if p == platform and s not in KNOWN_STATES})
        for state in (*KNOWN_STATES, *extra):
            state_rows.append((platform, state, states[(platform, state)]))
    return AdeTokenDevices(
        id=token_id,
        name=name,
        states=tuple(state_rows),
        without_profile=tuple(
            (
                platform,
                sum(1 for d in waiting if d.platform == platform),
                _oldest(d.created_at for d in waiting if d.platform == platform),
            )
            for platform in platforms
        ),
        deleted=tuple(
            (platform, sum(1 for d in devices if d.deleted and d.platform == platform))
            for platform in platforms
        ),
        defaults=defaults,
        admin_imported=sum(1 for d in present if d.admin_imported),
        last_contact_at=max(
            (d.contacted_at for d in devices if d.contacted_at is not None), default=None
        ),
        oldest_assignment_at=_oldest(
            d.assigned_at for d in present if d.state != ENROLLED and d.has_profile
        ),
        incomplete=unidentified + sum(1 for d in waiting if d.created_at is None),
    )


def _many(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"


def wait_text(seconds: float) -> str:
    """How long a device has waited, in whole units: "40 minutes", "5 hours", "3 days"."""
    seconds = max(0.0, seconds)
    if seconds < SECONDS_PER_HOUR:
        return _many(int(seconds // 60), "minute", "minutes")
    if seconds < 2 * SECONDS_PER_DAY:
        return _many(int(seconds // SECONDS_PER_HOUR), "hour", "hours")
    return _many(int(seconds // SECONDS_PER_DAY), "day", "days")


def _platform_name(platform: str) -> str:
    return PLATFORM_NAMES[platform][0] if platform in PLATFORM_NAMES else platform


def problems(token: AdeTokenDevices, now: float) -> list[str]:
    """What needs an admin about a token's devices, in words."""
    found = []
    without = sum(count for _, count, _ in token.without_profile)
    if without:
        words = _many(without, "device", "devices") + " without an enrollment profile"
        oldest = _oldest(oldest for _, _, oldest in token.without_profile)
        found.append(words if oldest is None else f"{words}, oldest {wait_text(now - oldest)}")
    waiting: Counter[str] = Counter()
    for platform, state, count in token.states:
        if state != ENROLLED:
            waiting[platform] += count
    has_default = {platform for platform, _, _ in token.defaults}
    for platform, (title, one, many) in PLATFORM_NAMES.items():
        if waiting[platform] and platform not in has_default:
            found.append(
                f"no default {title} profile; {_many(waiting[platform], one, many)} waiting"
            )
    for state, words in (("failed", "failed to enroll"), ("blocked", "blocked from enrolling")):
        count = sum(c for _, s, c in token.states if s == state)
        if count:
            found.append(f"{_many(count, 'device', 'devices')} {words}")
    return found


def detail(token: AdeTokenDevices, now: float) -> str:
    """The token's devices in one line, for the status page's tooltip."""
    by_state: Counter[str] = Counter()
    for _, state, count in token.states:
        by_state[state] += count
    total = sum(by_state.values())
    states = ", ".join(f"{count:,} {state}" for state, count in by_state.items() if count)
    parts = [_many(total, "device", "devices") + (f": {states}" if states else "")]
    deleted = sum(count for _, count in token.deleted)
    if deleted:
        parts.append(f"{deleted:,} deleted in Apple Business Manager")
    if token.admin_imported:
        parts.append(f"{token.admin_imported:,} imported by an admin")
    if token.oldest_assignment_at is not None:
        waited = wait_text(now - token.oldest_assignment_at)
        parts.append(f"oldest profile assignment not yet enrolled: {waited}")
    if token.last_contact_at is not None:
        parts.append(f"last device contact {age_text(token.last_contact_at, now)}")
    names = {platform: name for platform, _, name in token.defaults}
    parts.append(
        "default profiles: "
        + ", ".join(
            f"{_platform_name(p)} {names[p]!r}" if p in names else f"{_platform_name(p)} none"
            for p in DEFAULT_NAVIGATIONS
        )
    )
    return "; ".join(parts)


def _profile_page(token: AdeTokenDevices) -> str:
    """Microsoft's page on enrollment profiles for the token's platform (most of its devices)."""
    by_platform: Counter[str] = Counter()
    for platform, _, count in token.states:
        by_platform[platform] += count
    macs = by_platform["macos"]
    mostly_macs = macs > 0 and macs >= max(by_platform.values())
    return links.ADE_ENROLLMENT_PROFILE_MACOS if mostly_macs else links.ADE_ENROLLMENT_PROFILE


class AdeDevicesKind:
    """The devices and default enrollment profiles of every ADE token."""

    name: Final = "ade_devices"
    title: Final = "ADE devices"
    # Without `$select` Graph sends every property, the serial number too: the parser drops it.
    select_fallback: Final = True
    empty_note: Final = None
    record_type: Final = AdeTokenDevices
    unkept: Final[Mapping[str, Any]] = MappingProxyType({})
    metrics: Final = (
        MetricSpec(
            "intune_ade_devices",
            "gauge",
            "Devices of the ADE token not deleted in Apple Business Manager, by platform and "
            "enrollment state (every state, 0 when none).",
            (*_L, "platform", "enrollment_state"),
        ),
        MetricSpec(
            "intune_ade_devices_without_profile",
            "gauge",
            "Devices of the ADE token not deleted, not enrolled and without an enrollment "
            "profile: they get no ADE setup when switched on.",
            (*_L, "platform"),
        ),
        MetricSpec(
            "intune_ade_devices_without_profile_oldest_timestamp_seconds",
            "gauge",
            "createdDateTime of the oldest device without an enrollment profile, as Unix time; "
            "absent when there is none.",
            (*_L, "platform"),
        ),
        MetricSpec(
            "intune_ade_devices_deleted_in_apple",
            "gauge",
            "Devices of the ADE token released or removed in Apple Business Manager (isDeleted).",
            (*_L, "platform"),
        ),
        MetricSpec(
            "intune_ade_token_default_profile",
            "gauge",
            "1 when the ADE token has a default enrollment profile for the platform (ios, macos, "
            "tvos, visionos), else 0.",
            (*_L, "platform"),
        ),
        MetricSpec(
            "intune_ade_token_default_profile_info",
            "gauge",
            "The ADE token's default enrollment profile for the platform; always 1.",
            (*_L, "platform", "profile_id", "profile_name"),
        ),
    )

    async def fetch(self, graph: GraphReader) -> Records:
        items = await graph.get_collection(TOKENS_PATH, TOKENS_SELECT)
        # Once per id (a token Graph repeats across pages); one without an id cannot be read.
        tokens = {
            token_id: text(item, "tokenName") or token_id
            for item in items
            if (token_id := text(item, "id"))
        }
        records = []
        for token_id, name in tokens.items():
            token = await graph.get_object(
                f"{TOKENS_PATH}/{token_id}", (), expand=tuple(DEFAULT_NAVIGATIONS.values())
            )
            devices = await graph.get_collection(devices_path(token_id), SELECT)
            records.append(count_devices(token_id, name, devices, parse_defaults(token)))
        return tuple(records)

    def samples(self, tenant: str, records: Records) -> Iterator[Sample]:
        token: AdeTokenDevices
        for token in records:
            labels = (tenant, token.id, token.name)
            for platform, state, count in token.states:
                yield "intune_ade_devices", (*labels, platform, state), float(count)
            for platform, count, oldest in token.without_profile:
                yield "intune_ade_devices_without_profile", (*labels, platform), float(count)
                if oldest is not None:
                    yield (
                        "intune_ade_devices_without_profile_oldest_timestamp_seconds",
                        (*labels, platform),
                        oldest,
                    )
            for platform, count in token.deleted:
                yield "intune_ade_devices_deleted_in_apple", (*labels, platform), float(count)
            has_default = {platform for platform, _, _ in token.defaults}
            for platform in DEFAULT_NAVIGATIONS:
                value = 1.0 if platform in has_default else 0.0
                yield "intune_ade_token_default_profile", (*labels, platform), value
            for platform, profile_id, profile_name in token.defaults:
                info = (*labels, platform, profile_id, profile_name)
                yield "intune_ade_token_default_profile_info", info, 1.0

    def status_rows(self, records: Records, now: float) -> list[StatusRow]:
        token: AdeTokenDevices
        rows = []
        for token in records:
            found = problems(token, now)
            if not found and not token.states:
                continue  # a token without devices has nothing to say here
            rows.append(
                StatusRow(
                    kind=self.title,
                    name=token.name,
                    apple_id="",
                    expires_at=None,
                    last_sync_at=None,
                    problem="; ".join(found) or None,
                    renew_url=_profile_page(token),
                    renew_label="enrollment profiles",
                    troubleshooting_url=links.ADE_ENROLLMENT_TROUBLESHOOTING if found else None,
                    detail=detail(token, now),
                    expires=False,
                )
            )
        return rows

    def incomplete(self, records: Records) -> int:
        return sum(record.incomplete for record in records)
