"""Graph resources in the documented shapes, for the simulated tenants of the tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

from exporter.demo.simulator import iso

DAY = 86400.0
NOW = time.time()


def ade_item(
    name: str,
    *,
    expires_in_days: float = 200,
    synced_ago: float | None = 3600,
    triggered_ago: float | None = 600,
    error_code: int = 0,
    devices: int = 42,
    token_type: str = "dep",
    token_id: str | None = None,
    apple_id: str = "abm@contoso.example",
) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.depOnboardingSetting",
        "id": token_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"ade/{name}")),
        "appleIdentifier": apple_id,
        "tokenExpirationDateTime": iso(NOW + expires_in_days * DAY),
        "lastModifiedDateTime": iso(NOW - 100 * DAY),
        "lastSuccessfulSyncDateTime": iso(NOW - synced_ago) if synced_ago is not None else None,
        "lastSyncTriggeredDateTime": iso(NOW - triggered_ago)
        if triggered_ago is not None
        else "0001-01-01T00:00:00Z",
        "shareTokenWithSchoolDataSyncService": False,
        "lastSyncErrorCode": error_code,
        "tokenType": token_type,
        "tokenName": name,
        "syncedDeviceCount": devices,
        "dataSharingConsentGranted": True,
        "roleScopeTagIds": ["0"],
    }


VPP_SECRET_PREFIX = "VPP-SECRET-TOKEN-"


def vpp_item(
    name: str,
    *,
    expires_in_days: float = 300,
    state: str = "valid",
    sync_status: str = "completed",
    synced_ago: float | None = 7200,
    organization: str = "Contoso Ltd",
    display_name: str | None = None,
    account_type: str = "business",
    location: str = "Contoso HQ",
) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.vppToken",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"vpp/{name}")),
        "organizationName": organization,
        "vppTokenAccountType": account_type,
        "appleId": "vpp@contoso.example",
        "expirationDateTime": iso(NOW + expires_in_days * DAY),
        "lastSyncDateTime": iso(NOW - synced_ago) if synced_ago is not None else None,
        # The secret VPP token itself; Graph may send it, the exporter must drop it.
        "token": f"{VPP_SECRET_PREFIX}{name}",
        "lastModifiedDateTime": iso(NOW - 10 * DAY),
        "state": state,
        "tokenActionResults": [],
        "lastSyncStatus": sync_status,
        "automaticallyUpdateApps": True,
        "countryOrRegion": "us",
        "dataSharingConsentGranted": True,
        "displayName": name if display_name is None else display_name,
        "locationName": location,
        "claimTokenManagementFromExternalMdm": False,
        "roleScopeTagIds": ["0"],
    }


def apns_item(*, expires_in_days: float = 250) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.applePushNotificationCertificate",
        "id": "4dfd7e2c-8f1b-4d0e-9d3c-1f6a8a9b0c11",
        "appleIdentifier": "push@contoso.example",
        "topicIdentifier": "com.apple.mgmt.External.1234abcd",
        "lastModifiedDateTime": iso(NOW - 115 * DAY),
        "expirationDateTime": iso(NOW + expires_in_days * DAY),
        "certificateUploadStatus": "Succeeded",
        "certificateUploadFailureReason": None,
        "certificateSerialNumber": "6A1B2C3D4E5F6071",
        "certificate": "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----",
    }


SERIAL_PREFIX = "SERIAL-"  # distinctive, so tests can search output for serial numbers


def device_item(
    serial: str,
    *,
    platform: str | None = "ios",
    state: str | None = "enrolled",
    profile_id: str | None = "profile-ios",
    deleted: bool = False,
    created_ago: float | None = 10 * DAY,
    assigned_ago: float | None = 9 * DAY,
    contacted_ago: float | None = DAY,
    source: str = "deviceEnrollmentProgram",
) -> dict[str, Any]:
    """An importedAppleDeviceIdentity; `platform` and `state` are Graph's enum values."""
    item: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.importedAppleDeviceIdentity",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"device/{serial}")),
        "serialNumber": f"{SERIAL_PREFIX}{serial}",
        "requestedEnrollmentProfileId": profile_id,
        "requestedEnrollmentProfileAssignmentDateTime": iso(NOW - assigned_ago)
        if assigned_ago is not None and profile_id
        else "0001-01-01T00:00:00Z",
        "isSupervised": True,
        "discoverySource": source,
        "isDeleted": deleted,
        "createdDateTime": iso(NOW - created_ago) if created_ago is not None else None,
        "lastContactedDateTime": iso(NOW - contacted_ago) if contacted_ago is not None else None,
        "description": f"device {serial}",
        "enrollmentState": state,
        "platform": platform,
    }
    return item


def profile(name: str) -> dict[str, Any]:
    """An enrollment profile as a default-profile navigation expands it."""
    return {
        "@odata.type": "#microsoft.graph.depIOSEnrollmentProfile",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"profile/{name}")),
        "displayName": name,
        "description": "",
        "requiresUserAuthentication": True,
        "configurationEndpointUrl": "https://appleconfigurator2.manage.microsoft.com/",
        "enableAuthenticationViaCompanyPortal": False,
        "requireCompanyPortalOnSetupAssistantEnrolledDevices": False,
    }
