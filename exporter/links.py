"""Microsoft's renewal and troubleshooting pages, kept in one place.

The status page and the runbook use these; `tests/test_links.py` checks that the alert rules,
dashboards and runbook only link pages listed here, so a moved page is found in one edit.
"""

from typing import Final

ADE_RENEW: Final = "https://learn.microsoft.com/intune/device-enrollment/apple/setup-apple-token"
ADE_RENEW_SEED: Final = (
    "https://learn.microsoft.com/mem/intune/enrollment/device-enrollment-program-enroll-ios"
    "#renew-an-automated-device-enrollment-token"
)
ADE_SYNC_TROUBLESHOOTING: Final = (
    "https://learn.microsoft.com/troubleshoot/mem/intune/device-enrollment/"
    "troubleshoot-ios-enrollment-errors#sync-token-errors-between-intune-and-ade"
)
# ADE enrollment profiles (create one, assign it to devices, set a token's default) and the
# troubleshooting article for devices that do not enroll.
ADE_ENROLLMENT_PROFILE: Final = (
    "https://learn.microsoft.com/mem/intune/enrollment/device-enrollment-program-enroll-ios"
)
ADE_ENROLLMENT_PROFILE_MACOS: Final = (
    "https://learn.microsoft.com/mem/intune/enrollment/device-enrollment-program-enroll-macos"
)
ADE_ENROLLMENT_TROUBLESHOOTING: Final = (
    "https://learn.microsoft.com/troubleshoot/mem/intune/device-enrollment/"
    "troubleshoot-ios-enrollment-errors"
)
VPP_RENEW: Final = "https://learn.microsoft.com/mem/intune/apps/vpp-apps-ios"
APNS_RENEW: Final = (
    "https://learn.microsoft.com/mem/intune/enrollment/apple-mdm-push-certificate-get"
)

# The exporter's own credential and permission in Entra ID (runbooks of its health alerts).
ENTRA_ADD_CREDENTIALS: Final = (
    "https://learn.microsoft.com/entra/identity-platform/how-to-add-credentials"
)
ENTRA_ADMIN_CONSENT: Final = (
    "https://learn.microsoft.com/entra/identity/enterprise-apps/grant-admin-consent"
)

# The exporter's own runbook (docs/runbook.md), the base of every runbook_url that is not one of
# Microsoft's pages: the one place to point the rules at a fork or a wiki. After changing it, run
# `python scripts/gen_prometheusrule.py`, which rewrites the runbook_url of every exporter alert
# in prometheus/alerts.yaml (and its unit tests) and the PrometheusRule; a test checks them.
RUNBOOK_BASE: Final = (
    "https://github.com/intune-apple-token-exporter/intune-apple-token-exporter/blob/main/"
    "docs/runbook.md"
)

ALL: Final = (
    ADE_RENEW,
    ADE_RENEW_SEED,
    ADE_SYNC_TROUBLESHOOTING,
    ADE_ENROLLMENT_PROFILE,
    ADE_ENROLLMENT_PROFILE_MACOS,
    ADE_ENROLLMENT_TROUBLESHOOTING,
    VPP_RENEW,
    APNS_RENEW,
    ENTRA_ADD_CREDENTIALS,
    ENTRA_ADMIN_CONSENT,
)
