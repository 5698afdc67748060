"""The config's shape: tenants, their app credential, thresholds, intervals and GDAP discovery.

Models validate one value at a time and the shape of a section; what spans sections (defaults,
inherited keys, files on disk, an interval against `poll_interval`) is checked by `loading`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ..clouds import CLOUDS, CloudName
from ..collector_names import DEFAULT_COLLECTORS
from ..thresholds import DEFAULT_THRESHOLDS, Thresholds
from .durations import Duration
from .fields import Collectors, Count, Guid, Pattern, https_base, known_collector

CREDENTIAL_KEYS: Final = (
    "client_secret",
    "client_secret_file",
    "client_certificate_file",
    "federated_token_file",
)
# A section that names any of these brings its own credential and inherits none from `defaults`.
CREDENTIAL_GROUP: Final = (*CREDENTIAL_KEYS, "client_certificate_password")
# Devices change slowly and their lists are long: they are read hourly unless configured.
DEFAULT_COLLECTOR_INTERVALS: Final = {"ade_devices": 3600.0}
MIN_DISCOVERY_INTERVAL: Final = 300.0


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThresholdSettings(_Model):
    """`thresholds:` at top level, in `defaults` or in a tenant; unset keys are inherited."""

    expiry_warning: Duration | None = None
    expiry_critical: Duration | None = None
    ade_sync_stale: Duration | None = None
    vpp_sync_stale: Duration | None = None

    def over(self, base: Thresholds) -> Thresholds:
        """`base` with the keys set here replaced."""
        given = {key: value for key, value in self.model_dump().items() if value is not None}
        return Thresholds(**{**dict(base.items()), **given})


def _intervals(value: Any) -> Any:
    if isinstance(value, dict):
        for name in value:
            known_collector(str(name))
    return value


class _AppCredential(_Model):
    """The app registration, one credential and where to reach Entra ID and Graph."""

    client_id: Guid
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    client_certificate_file: Path | None = None
    client_certificate_password: SecretStr | None = None
    federated_token_file: Path | None = None
    cloud: CloudName = "global"
    authority_host: str | None = None
    graph_endpoint: str | None = None
    ca_file: Path | None = None
    collect: Collectors | None = None
    thresholds: ThresholdSettings | None = None
    collector_intervals: dict[str, Duration] | None = None

    _check_intervals = field_validator("collector_intervals", mode="before")(_intervals)

    @field_validator("authority_host")
    @classmethod
    def _authority_is_https(cls, value: str | None) -> str | None:
        return None if value is None else https_base(value, "authority_host")

    @field_validator("graph_endpoint")
    @classmethod
    def _graph_is_https(cls, value: str | None) -> str | None:
        return None if value is None else https_base(value, "graph_endpoint")

    @field_validator("client_secret")
    @classmethod
    def _secret_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty")
        return value

    @model_validator(mode="after")
    def _exactly_one_credential(self) -> Any:
        given = [key for key in CREDENTIAL_KEYS if getattr(self, key) is not None]
        if not given:
            raise ValueError(
                "no credential: set one of client_secret, client_secret_file, "
                "client_certificate_file or federated_token_file"
            )
        if len(given) > 1:
            raise ValueError(f"two credentials given ({' and '.join(given)}); keep exactly one")
        if self.client_certificate_password is not None and self.client_certificate_file is None:
            raise ValueError("client_certificate_password is set without client_certificate_file")
        return self

    @property
    def authority_url(self) -> str:
        """``https://host[:port]`` of the Entra authority."""
        return self.authority_host or f"https://{CLOUDS[self.cloud].authority_host}"

    @property
    def graph_url(self) -> str:
        """``https://host[:port]`` of Microsoft Graph."""
        return self.graph_endpoint or CLOUDS[self.cloud].graph_endpoint

    @property
    def credential_kind(self) -> str:
        """Which credential is used (the key name), for logs."""
        return next(key for key in CREDENTIAL_KEYS if getattr(self, key) is not None)


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


class TenantConfig(_AppCredential):
    """One Entra tenant to poll, with exactly one app credential."""

    name: str = Field(min_length=1, max_length=128)
    tenant_id: Guid
    source: str = Field(default="config", exclude=True)  # "config" or "gdap"; not a config key

    @field_validator("name")
    @classmethod
    def _name_is_a_clean_label(cls, value: str) -> str:
        if value != value.strip() or _CONTROL.search(value):
            raise ValueError("must not have leading/trailing spaces or control characters")
        return value


class GdapDiscovery(_AppCredential):
    """`discovery.gdap`: the partner tenant whose GDAP customers become tenants."""

    partner_tenant_id: Guid
    refresh_interval: Duration = 6 * 3600.0
    include: tuple[Pattern, ...] = ()
    exclude: tuple[Pattern, ...] = ()

    @field_validator("refresh_interval")
    @classmethod
    def _at_least_five_minutes(cls, value: float) -> float:
        if value < MIN_DISCOVERY_INTERVAL:
            raise ValueError("must be at least 5m (GDAP relationships change slowly)")
        return value

    def wanted(self, display_name: str) -> bool:
        """A customer kept by `include` (any, when empty) and not dropped by `exclude`."""
        if self.include and not any(p.search(display_name) for p in self.include):
            return False
        return not any(p.search(display_name) for p in self.exclude)

    def tenant(self, tenant_id: str, name: str) -> TenantConfig:
        """A discovered customer as a tenant: this block's credential and settings."""
        keys = set(_AppCredential.model_fields)
        fields = {key: value for key, value in self if key in keys}
        return TenantConfig(**fields, name=name, tenant_id=tenant_id, source="gdap")

    @property
    def partner(self) -> TenantConfig:
        """The partner tenant, as a tenant to authenticate to (its customers are listed there)."""
        # A name no listed tenant can clash with in the request counters (brackets).
        return self.tenant(self.partner_tenant_id, "[GDAP partner]")


class DiscoveryConfig(_Model):
    """`discovery:`; GDAP is the one source of tenants there is."""

    gdap: GdapDiscovery | None = None


class ExporterConfig(_Model):
    """The whole configuration file."""

    poll_interval: Duration = 600.0
    request_timeout: Duration = 30.0
    max_concurrency: Count = Field(default=16, ge=1, le=1024)
    collect: Collectors = DEFAULT_COLLECTORS
    thresholds: ThresholdSettings = ThresholdSettings()
    collector_intervals: dict[str, Duration] = Field(default_factory=dict)
    discovery: DiscoveryConfig | None = None
    tenants: tuple[TenantConfig, ...] = ()

    _check_intervals = field_validator("collector_intervals", mode="before")(_intervals)

    @property
    def gdap(self) -> GdapDiscovery | None:
        return self.discovery.gdap if self.discovery else None

    def collectors_for(self, tenant: TenantConfig) -> tuple[str, ...]:
        """The collectors that run for a tenant: its own list, else the top-level one."""
        return tenant.collect if tenant.collect is not None else self.collect

    def thresholds_for(self, tenant: TenantConfig) -> Thresholds:
        """Defaults, then the top-level `thresholds`, then the tenant's own."""
        return self.effective_thresholds(tenant.thresholds)

    def effective_thresholds(self, own: ThresholdSettings | None) -> Thresholds:
        """Defaults, then the top-level `thresholds`, then `own`."""
        base = self.thresholds.over(DEFAULT_THRESHOLDS)
        return own.over(base) if own is not None else base

    def intervals_for(self, tenant: TenantConfig) -> dict[str, float]:
        """How often each of the tenant's collectors runs (never more often than a poll)."""
        own = {**DEFAULT_COLLECTOR_INTERVALS, **self.collector_intervals}
        own.update(tenant.collector_intervals or {})
        return {
            name: max(own.get(name, self.poll_interval), self.poll_interval)
            for name in self.collectors_for(tenant)
        }
