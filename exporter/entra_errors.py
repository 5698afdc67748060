"""What Entra ID's token-endpoint answers mean: the AADSTS codes, and whose fault a failure is.

MSAL returns Entra's errors as a result dict (`error`, `error_description` starting
`AADSTSnnnnnnn:`, `error_codes`), not as exceptions. A refused credential or a missing consent
is `auth` (the exporter's own credential needs fixing: `IntuneExporterAuthFailing`); throttling
and Entra's own outages (`temporarily_unavailable`, `server_error`, HTTP 429 and 5xx) are not
the credential's fault and must not page as if they were.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from .errors import Reason

# What the AADSTS codes an operator is likely to meet mean, for log lines and the status page.
AADSTS_HINTS: Final[dict[int, str]] = {
    7000215: "invalid client secret",
    7000222: "the client secret has expired",
    700016: "application not found in the tenant: wrong client_id, or admin consent is "
    "missing in that tenant",
    90002: "tenant not found",
    700027: "client assertion rejected (certificate not registered on the app?)",
    65001: "admin consent is missing in that tenant",
    650052: "admin consent is missing in that tenant (the app needs a service principal and "
    "consent there)",
    700024: "federated token is expired or not yet valid",
    70021: "no federated identity credential matches the token",
    7000112: "the application is disabled",
    500011: "the resource is not found in the tenant (wrong cloud?)",
    1002012: "the scope is not valid (wrong graph_endpoint or cloud?)",
    90033: "a transient error at Entra ID",
    50196: "Entra ID is throttling the requests",
}
# The codes that mean the app has no consent (no service principal) in the tenant.
CONSENT_CODES: Final = frozenset({700016, 65001, 650052})
# Errors that are Entra's, not the credential's: throttling and outages.
_THROTTLED: Final = frozenset({"temporarily_unavailable"})
_OUTAGE: Final = frozenset({"server_error"})
_TRANSIENT_CODES: Final = frozenset({90033, 50196})

AADSTS_RE: Final = re.compile(r"AADSTS(\d+)")


def aadsts_code(result: Mapping[str, Any]) -> int | None:
    """The AADSTS code of an error result (`error_codes`, else the description's text)."""
    codes = result.get("error_codes") or []
    if codes and str(codes[0]).isdigit():
        return int(codes[0])
    match = AADSTS_RE.search(str(result.get("error_description") or ""))
    return int(match.group(1)) if match else None


def entra_reason(result: Mapping[str, Any], status: int | None) -> Reason:
    """`auth` for a refused credential; `throttled` or `network` for Entra's own trouble."""
    error = str(result.get("error") or "")
    code = aadsts_code(result)
    if status == 429 or error in _THROTTLED or code == 50196:
        return "throttled"
    if (status is not None and status >= 500) or error in _OUTAGE or code in _TRANSIENT_CODES:
        return "network"
    return "auth"


def describe_entra_error(result: Mapping[str, Any]) -> tuple[str, int | None]:
    """Turn an MSAL error result into a log-friendly sentence and its AADSTS code."""
    description = str(result.get("error_description") or "")
    code = aadsts_code(result)
    # Entra's description is one sentence, then "Trace ID: ..." lines; keep the sentence.
    first = description.splitlines()[0].strip() if description else ""
    first = first.split(" Trace ID:")[0]
    hint = AADSTS_HINTS.get(code or 0)
    error = str(result.get("error") or "error")
    text = f"Entra ID refused the token request: {error}"
    if code is not None:
        text += f" AADSTS{code}"
    if hint:
        text += f" ({hint})"
    if first and not hint:
        text += f": {first.removeprefix(f'AADSTS{code}: ' if code else '')}"
    return text, code
