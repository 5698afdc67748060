"""Why a poll failed, as a fixed set of reasons that label `intune_tenant_poll_errors_total`."""

from __future__ import annotations

from typing import Literal

Reason = Literal[
    "auth",
    "forbidden",
    "not_found",
    "throttled",
    "timeout",
    "network",
    "http",
    "invalid_response",
]


class PollError(Exception):
    """A failure of one collector's poll. Its text is safe to log and to show on the status page."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message


class AuthError(PollError):
    """Entra ID refused to issue a token (bad secret, unknown app or tenant, missing consent...)."""

    def __init__(self, message: str, aadsts_code: int | None = None) -> None:
        super().__init__("auth", message)
        self.aadsts_code = aadsts_code


class GraphError(PollError):
    """Graph answered with an HTTP error: Graph's error `code`, `message` and request id."""

    def __init__(
        self,
        reason: Reason,
        status: int,
        code: str,
        message: str,
        request_id: str | None,
    ) -> None:
        text = f"HTTP {status} {code}: {message}"
        if request_id:
            text += f" (request-id {request_id})"
        super().__init__(reason, text)
        self.status = status
        self.code = code
        self.graph_message = message
        self.request_id = request_id
