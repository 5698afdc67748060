"""The Apple MDM push (APNs) certificate: a singleton, `applePushNotificationCertificate`.

A tenant without a certificate answers 404; that is a state (`configured` 0), not a failure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from .. import links
from ..errors import GraphError
from ..graphtime import parse_graph_datetime
from ..metric_spec import MetricSpec
from ..records import Records, Sample
from ..timetext import date_text
from .base import StatusRow, text
from .reader import GraphReader

PATH: Final = "/beta/deviceManagement/applePushNotificationCertificate"
# `certificate` (the public certificate body) is large and unused; it is not requested.
SELECT: Final = (
    "id",
    "appleIdentifier",
    "topicIdentifier",
    "expirationDateTime",
    "certificateSerialNumber",
    "certificateUploadStatus",
    "lastModifiedDateTime",
)


@dataclass(frozen=True)
class ApnsCertificate:
    """The tenant's Apple MDM push certificate."""

    apple_id: str
    topic_id: str
    serial_number: str
    expires_at: float | None
    upload_status: str
    last_modified_at: float | None


def parse_certificate(item: dict[str, object]) -> ApnsCertificate | None:
    """Map the singleton; None when it carries neither an Apple ID nor an expiry (not set up)."""
    certificate = ApnsCertificate(
        apple_id=text(item, "appleIdentifier"),
        topic_id=text(item, "topicIdentifier"),
        serial_number=text(item, "certificateSerialNumber"),
        expires_at=parse_graph_datetime(item.get("expirationDateTime")),
        upload_status=text(item, "certificateUploadStatus"),
        last_modified_at=parse_graph_datetime(item.get("lastModifiedDateTime")),
    )
    if not certificate.apple_id and certificate.expires_at is None:
        return None
    return certificate


class ApnsCertificateKind:
    """The Apple MDM push certificate."""

    name: Final = "apns"
    title: Final = "APNs certificate"
    select_fallback: Final = True
    empty_note: Final = "not configured in this tenant"
    record_type: Final = ApnsCertificate
    # Never on disk (--storage.path): a serial number identifies one certificate of one
    # customer; a restored record has it empty until the first poll.
    unkept: Final[Mapping[str, Any]] = MappingProxyType({"serial_number": ""})
    metrics: Final = (
        MetricSpec(
            "intune_apns_certificate_configured",
            "gauge",
            "1 when the tenant has an Apple MDM push certificate, 0 when Graph says it has none.",
            ("tenant",),
        ),
        MetricSpec(
            "intune_apns_certificate_info",
            "gauge",
            "Apple MDM push certificate; always 1.",
            ("tenant", "apple_id", "topic_id", "serial_number"),
        ),
        MetricSpec(
            "intune_apns_certificate_expiry_timestamp_seconds",
            "gauge",
            "When the Apple MDM push certificate expires, as Unix time.",
            ("tenant", "apple_id"),
        ),
        MetricSpec(
            "intune_apns_certificate_days_to_expiry",
            "gauge",
            "Days until the Apple MDM push certificate expires; negative once expired.",
            ("tenant", "apple_id"),
            derived="days_until",
        ),
    )

    async def fetch(self, graph: GraphReader) -> Records:
        try:
            item = await graph.get_object(PATH, SELECT)
        except GraphError as exc:
            # Graph's answer for a tenant that never set up a certificate; any other 404 (a
            # wrong endpoint, say) stays an error.
            if exc.status == 404 and exc.code == "ResourceNotFound":
                return ()
            raise
        certificate = parse_certificate(item)
        return () if certificate is None else (certificate,)

    def samples(self, tenant: str, records: Records) -> Iterator[Sample]:
        yield "intune_apns_certificate_configured", (tenant,), 1.0 if records else 0.0
        certificate: ApnsCertificate
        for certificate in records:
            info = (tenant, certificate.apple_id, certificate.topic_id, certificate.serial_number)
            yield "intune_apns_certificate_info", info, 1.0
            if certificate.expires_at is not None:
                labels = (tenant, certificate.apple_id)
                expires = certificate.expires_at
                yield "intune_apns_certificate_expiry_timestamp_seconds", labels, expires
                yield "intune_apns_certificate_days_to_expiry", labels, expires

    def status_rows(self, records: Records, now: float) -> list[StatusRow]:
        return [
            StatusRow(
                kind=self.title,
                name="Apple MDM push certificate",
                detail=f"topic {certificate.topic_id}, serial {certificate.serial_number}, "
                f"uploaded {date_text(certificate.last_modified_at)}",
                apple_id=certificate.apple_id,
                expires_at=certificate.expires_at,
                last_sync_at=None,
                problem=(
                    f"certificate upload status {certificate.upload_status}"
                    if certificate.upload_status.lower() == "failed"
                    else None
                ),
                renew_url=links.APNS_RENEW,
            )
            for certificate in records
        ]

    def incomplete(self, records: Records) -> int:
        return sum(1 for record in records if record.expires_at is None)
