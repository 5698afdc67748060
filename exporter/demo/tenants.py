"""`--demo`: a few simulated tenants whose Apple credentials cover the interesting states.

Everything from MSAL and the Graph client upwards is the real code path: the demo only swaps
Microsoft's cloud for the simulator on loopback.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Final

from ..config import ExporterConfig, parse_config
from .simulator import SimApp, SimTenant, SimulatedCloud, iso

DEMO_POLL_INTERVAL: Final = 15.0
DEMO_CLIENT_ID: Final = "5b1f9b5e-7d6c-4c7f-9a4e-2f1d8c3b6a01"
DEMO_SECRET: Final = "demo-client-secret-not-a-real-one"  # the simulator accepts it; not a secret
_NAMESPACE: Final = uuid.UUID("0b8e7c7e-4a43-4f0e-8f3c-7c0a7e6d7a10")
DAY: Final = 86400.0
HOUR: Final = 3600.0


def _id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def _ade(
    tenant: str,
    name: str,
    now: float,
    *,
    expires_in_days: float,
    synced_ago: float | None = HOUR,
    error_code: int = 0,
    devices: int = 120,
    token_type: str = "dep",  # noqa: S107 - an enum value, not a password,
) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.depOnboardingSetting",
        "id": _id(tenant, "ade", name),
        "appleIdentifier": f"abm-admin@{tenant}.example",
        "tokenName": name,
        "tokenType": token_type,
        "tokenExpirationDateTime": iso(now + expires_in_days * DAY),
        "lastModifiedDateTime": iso(now - 200 * DAY),
        "lastSuccessfulSyncDateTime": iso(now - synced_ago)
        if synced_ago is not None
        else "0001-01-01T00:00:00Z",
        "lastSyncTriggeredDateTime": iso(now - 10 * 60),
        "lastSyncErrorCode": error_code,
        "syncedDeviceCount": devices,
        "shareTokenWithSchoolDataSyncService": False,
        "dataSharingConsentGranted": True,
        "roleScopeTagIds": ["0"],
    }


def _vpp(
    tenant: str,
    name: str,
    now: float,
    *,
    expires_in_days: float,
    state: str = "valid",
    sync_status: str = "completed",
    synced_ago: float = 6 * HOUR,
    account_type: str = "business",
) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.vppToken",
        "id": _id(tenant, "vpp", name),
        "organizationName": f"{tenant.capitalize()} Ltd",
        "vppTokenAccountType": account_type,
        "appleId": f"vpp@{tenant}.example",
        "expirationDateTime": iso(now + expires_in_days * DAY),
        "lastSyncDateTime": iso(now - synced_ago),
        "token": f"SECRET-VPP-TOKEN-{uuid.uuid4()}",  # the real secret; the exporter must drop it
        "lastModifiedDateTime": iso(now - 100 * DAY),
        "state": state,
        "tokenActionResults": [],
        "lastSyncStatus": sync_status,
        "automaticallyUpdateApps": True,
        "countryOrRegion": "us",
        "dataSharingConsentGranted": True,
        "displayName": name,
        "locationName": f"{name} location",
        "claimTokenManagementFromExternalMdm": False,
        "roleScopeTagIds": ["0"],
    }


def _apns(tenant: str, now: float, *, expires_in_days: float) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.applePushNotificationCertificate",
        "id": _id(tenant, "apns"),
        "appleIdentifier": f"mdm-push@{tenant}.example",
        "topicIdentifier": f"com.apple.mgmt.External.{_id(tenant, 'topic')}",
        "lastModifiedDateTime": iso(now - 100 * DAY),
        "expirationDateTime": iso(now + expires_in_days * DAY),
        "certificateUploadStatus": "Succeeded",
        "certificateUploadFailureReason": None,
        "certificateSerialNumber": _id(tenant, "serial").replace("-", "")[:16].upper(),
    }


def _devices(
    tenant: str,
    token: str,
    now: float,
    count: int,
    *,
    platform: str = "ios",
    state: str = "enrolled",
    profile: str | None = "default",
    created_ago: float = 60 * DAY,
    spread: float = 0.0,
    deleted: bool = False,
) -> list[dict[str, Any]]:
    """`count` imported Apple devices of one token; the n-th was created `n * spread / count`
    seconds after the oldest (`created_ago`), and a profile name stands for its id."""
    items = []
    for n in range(count):
        key = f"{token}/{platform}/{state}/{profile}/{deleted}/{n}"
        created = now - created_ago + (spread * n / count if count else 0.0)
        enrolled = state == "enrolled"
        items.append(
            {
                "@odata.type": "#microsoft.graph.importedAppleDeviceIdentity",
                "id": _id(tenant, "device", key),
                # A made-up serial: the exporter must never show it.
                "serialNumber": "DEMO" + _id(tenant, "serial", key).replace("-", "")[:8].upper(),
                "requestedEnrollmentProfileId": _id(tenant, "profile", token, profile)
                if profile
                else None,
                "requestedEnrollmentProfileAssignmentDateTime": iso(created + HOUR)
                if profile
                else "0001-01-01T00:00:00Z",
                "isSupervised": True,
                "discoverySource": "deviceEnrollmentProgram",
                "isDeleted": deleted,
                "createdDateTime": iso(created),
                "lastContactedDateTime": iso(now - 6 * HOUR) if enrolled else None,
                "description": None,
                "enrollmentState": state,
                "platform": platform,
            }
        )
    return items


def _profile(tenant: str, token: str, name: str) -> dict[str, Any]:
    """An enrollment profile, as a default-profile navigation of a token expands it."""
    return {
        "@odata.type": "#microsoft.graph.depIOSEnrollmentProfile",
        "id": _id(tenant, "profile", token, "default"),
        "displayName": name,
        "description": None,
        "requiresUserAuthentication": True,
    }


def _device_data(now: float) -> dict[str, dict[str, Any]]:
    """Per tenant: `devices` and `default_profiles` of its tokens (SimTenant's fields)."""
    data: dict[str, dict[str, Any]] = {}

    def token(
        tenant: str,
        name: str,
        devices: list[list[dict[str, Any]]],
        defaults: dict[str, str | None],
    ) -> None:
        token_id = _id(tenant, "ade", name)
        entry = data.setdefault(tenant, {"devices": {}, "default_profiles": {}})
        entry["devices"][token_id] = [item for group in devices for item in group]
        entry["default_profiles"][token_id] = {
            platform: None if profile is None else _profile(tenant, name, profile)
            for platform, profile in defaults.items()
        }

    # Contoso: healthy, every device enrolled with the default profile.
    token(
        "contoso",
        "Contoso iOS",
        [_devices("contoso", "Contoso iOS", now, 120)],
        {"ios": "Contoso iPhone and iPad"},
    )
    # Fabrikam iPads: thousands of devices (three pages of Graph's 1,000), 14 of them waiting
    # without a profile for up to 3 days, a few failed enrollments, some released in Apple
    # Business Manager.
    ipads = "Fabrikam iPads"
    token(
        "fabrikam",
        ipads,
        [
            _devices("fabrikam", ipads, now, 2540),
            _devices("fabrikam", ipads, now, 30, state="notContacted", created_ago=2 * DAY),
            _devices(
                "fabrikam",
                ipads,
                now,
                14,
                state="notContacted",
                profile=None,
                created_ago=3 * DAY + 5 * HOUR,
                spread=2 * DAY,
            ),
            _devices("fabrikam", ipads, now, 4, state="failed", created_ago=5 * DAY),
            _devices("fabrikam", ipads, now, 12, deleted=True, created_ago=400 * DAY),
        ],
        {"ios": "Fabrikam iPad", "macos": None, "tvos": None, "visionos": None},
    )
    # Fabrikam Macs: no default macOS profile, so the 6 Macs Apple assigned this morning wait.
    macs = "Fabrikam Macs"
    token(
        "fabrikam",
        macs,
        [
            _devices("fabrikam", macs, now, 42, platform="macOS"),
            _devices(
                "fabrikam",
                macs,
                now,
                6,
                platform="macOS",
                state="notContacted",
                profile=None,
                created_ago=5 * HOUR,
                spread=HOUR,
            ),
        ],
        {"ios": None, "macos": None},
    )
    # Northwind: the symptoms of tokens in trouble, which the token alerts outrank: devices of
    # the expired token wait without a profile, the school's iPads have no default profile.
    shared = "Northwind Shared"
    token(
        "northwind",
        shared,
        [
            _devices("northwind", shared, now, 180),
            _devices(
                "northwind",
                shared,
                now,
                25,
                state="notContacted",
                profile=None,
                created_ago=9 * DAY,
                spread=8 * DAY,
            ),
        ],
        {"ios": "Northwind Shared iPad"},
    )
    school = "Northwind School"
    token(
        "northwind",
        school,
        [
            _devices("northwind", school, now, 300, profile="classroom"),
            _devices("northwind", school, now, 10, state="notContacted", profile="classroom"),
        ],
        {"ios": None},
    )
    # Found through GDAP: healthy.
    token(
        "alpine",
        "Alpine iPads",
        [_devices("alpine", "Alpine iPads", now, 120)],
        {"ios": "Alpine iPad"},
    )
    token(
        "litware",
        "Litware Macs",
        [_devices("litware", "Litware Macs", now, 120, platform="macOS")],
        {"macos": "Litware Mac"},
    )
    return data


def demo_tenants(now: float) -> dict[str, SimTenant]:
    """The demo's tenants, by name, with data relative to `now`."""
    app = SimApp(DEMO_CLIENT_ID, secret=DEMO_SECRET)
    tenants = {
        "contoso": SimTenant(
            _id("contoso"),
            ade_tokens=[_ade("contoso", "Contoso iOS", now, expires_in_days=200)],
            vpp_tokens=[_vpp("contoso", "Contoso Apps", now, expires_in_days=300)],
            apns_certificate=_apns("contoso", now, expires_in_days=250),
        ),
        "fabrikam": SimTenant(
            _id("fabrikam"),
            ade_tokens=[
                _ade("fabrikam", "Fabrikam iPads", now, expires_in_days=20, devices=2600),
                _ade("fabrikam", "Fabrikam Macs", now, expires_in_days=5, devices=48),
            ],
            vpp_tokens=[
                _vpp(
                    "fabrikam",
                    "Fabrikam Education",
                    now,
                    expires_in_days=-3,
                    state="expired",
                    account_type="education",
                ),
            ],
            apns_certificate=_apns("fabrikam", now, expires_in_days=12),
        ),
        "northwind": SimTenant(
            _id("northwind"),
            ade_tokens=[
                _ade(
                    "northwind", "Northwind Shared", now, expires_in_days=-10, synced_ago=11 * DAY
                ),
                _ade(
                    "northwind",
                    "Northwind School",
                    now,
                    expires_in_days=150,
                    error_code=3,
                    token_type="appleSchoolManager",
                ),
                _ade(
                    "northwind", "Northwind Loaners", now, expires_in_days=180, synced_ago=3 * DAY
                ),
                _ade(
                    "northwind",
                    "Northwind Spare",
                    now,
                    expires_in_days=300,
                    synced_ago=None,
                    devices=0,
                ),
            ],
            vpp_tokens=[
                _vpp("northwind", "Northwind Retail", now, expires_in_days=90, state="invalid"),
                _vpp(
                    "northwind",
                    "Northwind Kiosk",
                    now,
                    expires_in_days=120,
                    state="assignedToExternalMDM",
                ),
                _vpp(
                    "northwind",
                    "Northwind Field",
                    now,
                    expires_in_days=200,
                    sync_status="failed",
                    synced_ago=3 * DAY,
                ),
            ],
            apns_certificate=None,
        ),
        "woodgrove": SimTenant(
            _id("woodgrove"),
            ade_tokens=[
                _ade("woodgrove", f"Woodgrove Branch {n:02d}", now, expires_in_days=100 + n * 3)
                for n in range(1, 46)
            ],
            vpp_tokens=[_vpp("woodgrove", "Woodgrove Apps", now, expires_in_days=280)],
            apns_certificate=_apns("woodgrove", now, expires_in_days=300),
            page_size=20,
        ),
        # Consented, but the exporter is given a wrong secret for it (AADSTS7000215).
        "tailspin": SimTenant(
            _id("tailspin"),
            ade_tokens=[_ade("tailspin", "Tailspin iOS", now, expires_in_days=60)],
            apns_certificate=_apns("tailspin", now, expires_in_days=200),
        ),
    }
    for tenant in tenants.values():
        tenant.apps[app.client_id] = app
    # The MSP's own tenant: its GDAP customers are the configured contoso (the configured entry
    # wins), two healthy customers found only through GDAP, and one that never consented.
    tenants["lucerne"] = SimTenant(
        _id("lucerne"),
        customers=[
            _customer("contoso", "Contoso Ltd"),
            _customer("alpine", "Alpine Ski House"),
            _customer("litware", "Litware Inc"),
            _customer("adatum", "Adatum Corporation"),
        ],
    )
    tenants["lucerne"].apps[app.client_id] = app
    tenants["alpine"] = SimTenant(
        _id("alpine"),
        ade_tokens=[_ade("alpine", "Alpine iPads", now, expires_in_days=140)],
        vpp_tokens=[_vpp("alpine", "Alpine Apps", now, expires_in_days=230)],
        apns_certificate=_apns("alpine", now, expires_in_days=180),
    )
    tenants["alpine"].apps[app.client_id] = app
    tenants["litware"] = SimTenant(
        _id("litware"),
        ade_tokens=[_ade("litware", "Litware Macs", now, expires_in_days=260)],
        apns_certificate=_apns("litware", now, expires_in_days=310),
    )
    tenants["litware"].apps[app.client_id] = app
    # Adatum is a GDAP customer whose admin never consented: no service principal (AADSTS700016).
    tenants["adatum"] = SimTenant(_id("adatum"))
    for name, data in _device_data(now).items():
        tenants[name].devices = data["devices"]
        tenants[name].default_profiles = data["default_profiles"]
    return tenants


def _customer(key: str, display_name: str) -> dict[str, Any]:
    """A `delegatedAdminCustomer` as Graph lists it (its id is the customer's tenant ID)."""
    return {"id": _id(key), "tenantId": _id(key), "displayName": display_name}


def demo_config(base_url: str) -> ExporterConfig:
    """The config a user would write for the demo tenants on the simulator at `base_url`."""
    raw: dict[str, Any] = {
        "poll_interval": DEMO_POLL_INTERVAL,
        "request_timeout": 10,
        "defaults": {
            "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_SECRET,
            "authority_host": base_url,
            "graph_endpoint": base_url,
        },
        "tenants": [
            {"name": name, "tenant_id": _id(name)}
            for name in ("contoso", "fabrikam", "northwind", "woodgrove")
        ]
        + [{"name": "tailspin", "tenant_id": _id("tailspin"), "client_secret": "expired-secret"}],
        # The partner's customers become tenants too (`source="gdap"` on intune_tenant_info).
        "discovery": {"gdap": {"partner_tenant_id": _id("lucerne"), "refresh_interval": "1h"}},
    }
    return parse_config(raw, "<demo>")


async def start_demo_cloud() -> SimulatedCloud:
    """Start the simulator with the demo tenants on a free loopback port."""
    cloud = SimulatedCloud()
    for tenant in demo_tenants(time.time()).values():
        cloud.add_tenant(tenant)
    await cloud.start()
    return cloud
