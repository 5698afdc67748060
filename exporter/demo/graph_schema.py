"""What the simulated Graph accepts and how it words its answers, after Microsoft's pages.

Every resource type the exporter reads has its properties listed here, as its Graph reference
page lists them. A `$select` (or `$expand`) naming anything else is answered as Graph answers
it: `400 BadRequest`, "Could not find a property named '…' on type '…'". That makes a typo or a
withdrawn beta property in the exporter's queries fail a test instead of a customer's poll.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

NAMESPACE: Final = "microsoft.graph"

# Structural properties, from each resource type's page in the Graph reference (beta).
PROPERTIES: Final[dict[str, tuple[str, ...]]] = {
    "depOnboardingSetting": (
        "id",
        "appleIdentifier",
        "tokenExpirationDateTime",
        "lastModifiedDateTime",
        "lastSuccessfulSyncDateTime",
        "lastSyncTriggeredDateTime",
        "shareTokenWithSchoolDataSyncService",
        "lastSyncErrorCode",
        "tokenType",
        "tokenName",
        "syncedDeviceCount",
        "dataSharingConsentGranted",
        "roleScopeTagIds",
    ),
    "vppToken": (
        "id",
        "organizationName",
        "vppTokenAccountType",
        "appleId",
        "expirationDateTime",
        "lastSyncDateTime",
        "token",
        "lastModifiedDateTime",
        "state",
        "tokenActionResults",
        "lastSyncStatus",
        "automaticallyUpdateApps",
        "countryOrRegion",
        "dataSharingConsentGranted",
        "displayName",
        "locationName",
        "claimTokenManagementFromExternalMdm",
        "roleScopeTagIds",
    ),
    "applePushNotificationCertificate": (
        "id",
        "appleIdentifier",
        "topicIdentifier",
        "lastModifiedDateTime",
        "expirationDateTime",
        "certificateUploadStatus",
        "certificateUploadFailureReason",
        "certificateSerialNumber",
        "certificate",
    ),
    "importedAppleDeviceIdentity": (
        "id",
        "serialNumber",
        "requestedEnrollmentProfileId",
        "requestedEnrollmentProfileAssignmentDateTime",
        "isSupervised",
        "discoverySource",
        "isDeleted",
        "createdDateTime",
        "lastContactedDateTime",
        "description",
        "enrollmentState",
        "platform",
    ),
    "delegatedAdminCustomer": ("id", "tenantId", "displayName"),
    "enrollmentProfile": (
        "id",
        "displayName",
        "description",
        "requiresUserAuthentication",
        "configurationEndpointUrl",
        "enableAuthenticationViaCompanyPortal",
        "requireCompanyPortalOnSetupAssistantEnrolledDevices",
    ),
}

# Navigation properties that `$expand` may name.
NAVIGATIONS: Final[dict[str, tuple[str, ...]]] = {
    "depOnboardingSetting": (
        "defaultIosEnrollmentProfile",
        "defaultMacOsEnrollmentProfile",
        "defaultTvOSEnrollmentProfile",
        "defaultVisionOSEnrollmentProfile",
        "enrollmentProfiles",
        "importedAppleDeviceIdentities",
    ),
}


class QueryError(Exception):
    """A query option Graph would refuse; `body` is Graph's error JSON."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.body = graph_error_body("BadRequest", message)


def unknown_property(name: str, resource: str) -> QueryError:
    return QueryError(f"Could not find a property named '{name}' on type '{NAMESPACE}.{resource}'.")


def parse_select(value: str | None, resource: str, withdrawn: frozenset[str]) -> tuple[str, ...]:
    """The properties a `$select` names (canonical case); raises QueryError on an unknown one."""
    if value is None:
        return ()
    known = {name.lower(): name for name in PROPERTIES[resource] if name not in withdrawn}
    chosen = []
    for raw in value.split(","):
        name = raw.strip()
        if not name:
            continue
        canonical = known.get(name.lower())
        if canonical is None:
            raise unknown_property(name, resource)
        chosen.append(canonical)
    return tuple(chosen)


def parse_expand(value: str | None, resource: str) -> tuple[str, ...]:
    """The navigations an `$expand` names (canonical case); raises QueryError on an unknown one."""
    if value is None:
        return ()
    known = {name.lower(): name for name in NAVIGATIONS.get(resource, ())}
    chosen = []
    for raw in value.split(","):
        canonical = known.get(raw.strip().lower())
        if canonical is None:
            raise unknown_property(raw.strip(), resource)
        chosen.append(canonical)
    return tuple(chosen)


def project(
    item: Mapping[str, Any],
    resource: str,
    selected: tuple[str, ...],
    withdrawn: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """An item as Graph returns it: the selected properties (all without `$select`), `id`
    and `@odata.type` always, and nothing Graph no longer serves."""
    keep = set(selected) | {"id"} if selected else set(PROPERTIES[resource]) - withdrawn
    return {
        key: value
        for key, value in item.items()
        if key in keep or key == "@odata.type" or key in NAVIGATIONS.get(resource, ())
    }


def iso(timestamp: float | None) -> str | None:
    """Unix time as Graph writes it (UTC, `Z`, 7 fractional digits); None stays None."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def graph_error_body(code: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """Graph's error JSON."""
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id or str(uuid.uuid4()),
                "client-request-id": str(uuid.uuid4()),
            },
        }
    }


def intune_nested_message(message: str) -> str:
    """The JSON document Intune puts, as a string, inside Graph's `error.message`."""
    return json.dumps(
        {
            "_version": 3,
            "Message": message,
            "CustomApiErrorPhrase": "",
            "RetryAfter": None,
            "ErrorSourceService": "",
            "HttpHeaders": "{}",
        },
        indent=2,
    ).replace("\n", "\r\n")


INTUNE_FORBIDDEN_MESSAGE: Final = (
    "Application is not authorized to perform this operation. Application must have one of the "
    "following scopes: DeviceManagementServiceConfig.Read.All, "
    "DeviceManagementServiceConfig.ReadWrite.All - Operation ID (for customer support): "
    "00000000-0000-0000-0000-000000000000 - Activity ID: 4ee7b1c2-63b5-4d06-9f32-29e0d3d7a9c1"
)
