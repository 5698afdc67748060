"""Configuration: YAML loading, ${VAR} substitution and validation.

`load_config(path)` returns a validated `ExporterConfig` or raises `ConfigError` naming the file,
the key path (``tenants[2].client_id``) and the problem. Secret values never appear in an error.
"""

from __future__ import annotations

import logging
import math
import os
import re
import ssl
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .clouds import CLOUDS, CloudName
from .collector_names import COLLECTOR_NAMES, DEFAULT_COLLECTORS
from .credentials import CredentialFileError, load_certificate, read_text_file
from .yaml_config import ConfigError, key_path, pydantic_problem, read_yaml

log = logging.getLogger(__name__)


CREDENTIAL_KEYS: Final = (
    "client_secret",
    "client_secret_file",
    "client_certificate_file",
    "federated_token_file",
)
# A tenant that names any of these brings its own credential and inherits none from `defaults`.
_CREDENTIAL_GROUP: Final = (*CREDENTIAL_KEYS, "client_certificate_password")

MIN_SANE_POLL_INTERVAL: Final = 60.0


_DURATION_RE: Final = re.compile(
    r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?(?:(?P<ms>\d+)ms)?$"
)
_NUMBER_RE: Final = re.compile(r"^\d+(?:\.\d+)?$")
_UNIT_SECONDS: Final = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: object) -> float:
    """Parse a Prometheus-style duration ("90s", "10m", "1h30m", "500ms") or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("is not a duration")
    if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        value = float(value)  # "120" from ${VAR} is a number of seconds, as 120 would be
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value.strip())) and value.strip():
        seconds = sum(
            float(amount) * _UNIT_SECONDS[unit]
            for unit, amount in match.groupdict().items()
            if amount is not None
        )
    else:
        raise ValueError(
            f"{value!r} is not a duration; write it like 30s, 10m, 1h30m or a number of seconds"
        )
    if not math.isfinite(seconds):
        raise ValueError("must be a finite duration")
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _known_collectors(value: object) -> object:
    if isinstance(value, list | tuple):
        known = ", ".join(COLLECTOR_NAMES)
        if not value:
            raise ValueError(f"must name at least one collector ({known})")
        for name in value:
            if name not in COLLECTOR_NAMES:
                raise ValueError(f"unknown collector {name!r}; choose from {known}")
        return tuple(dict.fromkeys(value))
    return value


Collectors = Annotated[tuple[str, ...], BeforeValidator(_known_collectors)]

_GUID_RE: Final = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def _guid(value: object) -> object:
    if isinstance(value, str) and not _GUID_RE.match(value):
        raise ValueError(f"{value!r} is not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return value.lower() if isinstance(value, str) else value


Guid = Annotated[str, BeforeValidator(_guid)]


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


Count = Annotated[int, BeforeValidator(_not_bool)]


def _https_base(value: str, key: str) -> str:
    """Normalise a host or https URL to ``https://host[:port]`` with no path."""
    text = value.strip()
    if "://" not in text:
        text = "https://" + text
    text = text.rstrip("/")
    parts = urlsplit(text)
    if "@" in parts.netloc:
        # Never echo the value: the part before "@" is a user name and probably a password.
        raise ValueError(
            f"{key} must not hold a user name or password (user:pass@host); "
            "the exporter authenticates with the tenant's credential, not in the URL"
        )
    if parts.scheme != "https":
        raise ValueError(f"{key} must use https, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host name")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"{value!r} must be a bare https://host[:port], without a path")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return f"https://{parts.netloc}"


class TenantConfig(BaseModel):
    """One Entra tenant to poll, with exactly one app credential."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    tenant_id: Guid
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

    @field_validator("name")
    @classmethod
    def _name_is_a_clean_label(cls, value: str) -> str:
        if value != value.strip() or any(ord(ch) < 32 for ch in value):
            raise ValueError("must not have leading/trailing spaces or control characters")
        return value

    @field_validator("authority_host")
    @classmethod
    def _authority_is_https(cls, value: str | None) -> str | None:
        return None if value is None else _https_base(value, "authority_host")

    @field_validator("graph_endpoint")
    @classmethod
    def _graph_is_https(cls, value: str | None) -> str | None:
        return None if value is None else _https_base(value, "graph_endpoint")

    @field_validator("client_secret")
    @classmethod
    def _secret_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty")
        return value

    @model_validator(mode="after")
    def _exactly_one_credential(self) -> TenantConfig:
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
        """``https://host[:port]`` of the Entra authority for this tenant."""
        return self.authority_host or f"https://{CLOUDS[self.cloud].authority_host}"

    @property
    def graph_url(self) -> str:
        """``https://host[:port]`` of Microsoft Graph for this tenant."""
        return self.graph_endpoint or CLOUDS[self.cloud].graph_endpoint

    @property
    def credential_kind(self) -> str:
        """Which credential the tenant uses (the key name), for logs."""
        return next(key for key in CREDENTIAL_KEYS if getattr(self, key) is not None)


class ExporterConfig(BaseModel):
    """The whole configuration file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    poll_interval: Duration = 600.0
    request_timeout: Duration = 30.0
    max_concurrency: Count = Field(default=16, ge=1, le=1024)
    collect: Collectors = DEFAULT_COLLECTORS
    tenants: tuple[TenantConfig, ...] = Field(min_length=1)

    def collectors_for(self, tenant: TenantConfig) -> tuple[str, ...]:
        """The collectors that run for a tenant: its own list, else the top-level one."""
        return tenant.collect if tenant.collect is not None else self.collect


# --- loading ---------------------------------------------------------------------------------

_ENV_RE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute_env(node: Any, loc: tuple[int | str, ...], file: str) -> Any:
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            value = os.environ.get(name)
            if value is None:
                raise ConfigError(file, key_path(loc), f"environment variable {name} is not set")
            return value

        return _ENV_RE.sub(replace, node)
    if isinstance(node, dict):
        return {k: _substitute_env(v, (*loc, str(k)), file) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, (*loc, i), file) for i, v in enumerate(node)]
    return node


def _merge_defaults(raw: dict[str, Any], file: str) -> tuple[dict[str, Any], dict[int, set[str]]]:
    """Give every tenant the `defaults` keys it does not set; remember which keys were inherited."""
    defaults = raw.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        raise ConfigError(file, "defaults", "must be a mapping of tenant keys")
    for key in defaults:
        if key in ("name", "tenant_id") or key not in TenantConfig.model_fields:
            problem = (
                "unknown key" if key not in TenantConfig.model_fields else "cannot be a default"
            )
            raise ConfigError(file, f"defaults.{key}", problem)
    default_credentials = [key for key in CREDENTIAL_KEYS if key in defaults]
    if len(default_credentials) > 1:
        raise ConfigError(
            file,
            "defaults",
            f"two credentials given ({' and '.join(default_credentials)}); keep exactly one",
        )
    tenants = raw.get("tenants")
    inherited: dict[int, set[str]] = {}
    if not isinstance(tenants, list):
        return raw, inherited
    merged = []
    for index, tenant in enumerate(tenants):
        if not isinstance(tenant, dict):
            raise ConfigError(file, f"tenants[{index}]", "must be a mapping")
        own_credential = any(key in tenant for key in _CREDENTIAL_GROUP)
        take = {
            key: value
            for key, value in defaults.items()
            if key not in tenant and not (own_credential and key in _CREDENTIAL_GROUP)
        }
        inherited[index] = set(take)
        merged.append({**take, **tenant})
    return {**raw, "tenants": merged}, inherited


def _check_files(config: ExporterConfig, file: str, inherited: dict[int, set[str]]) -> None:
    """Fail at start on credential and CA files that cannot be used, not at the first poll."""
    for index, tenant in enumerate(config.tenants):

        def where(key: str, index: int = index) -> str:
            if key in inherited.get(index, ()):
                return f"defaults.{key} (inherited by tenants[{index}])"
            return f"tenants[{index}].{key}"

        try:
            if tenant.client_secret_file is not None:
                read_text_file(tenant.client_secret_file, "secret file")
            if tenant.federated_token_file is not None:
                read_text_file(tenant.federated_token_file, "federated token file")
        except CredentialFileError as exc:
            key = "client_secret_file" if tenant.client_secret_file else "federated_token_file"
            raise ConfigError(file, where(key), str(exc)) from None
        if tenant.client_certificate_file is not None:
            password = tenant.client_certificate_password
            try:
                load_certificate(
                    tenant.client_certificate_file,
                    password.get_secret_value() if password else None,
                )
            except CredentialFileError as exc:
                raise ConfigError(file, where("client_certificate_file"), str(exc)) from None
        if tenant.ca_file is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                    cafile=str(tenant.ca_file)
                )
            except ssl.SSLError:
                raise ConfigError(
                    file, where("ca_file"), f"{str(tenant.ca_file)!r} holds no PEM CA certificate"
                ) from None
            except OSError as exc:
                reason = exc.strerror or "cannot be read"
                raise ConfigError(
                    file, where("ca_file"), f"{str(tenant.ca_file)!r} cannot be loaded: {reason}"
                ) from None


PATH_KEYS: Final = (
    "client_secret_file",
    "client_certificate_file",
    "federated_token_file",
    "ca_file",
)


def _resolve_paths(raw: dict[str, Any], base_dir: Path) -> None:
    """Relative file paths are relative to the config file's folder, as in Prometheus."""
    sections = [raw.get("defaults")]
    tenants = raw.get("tenants")
    if isinstance(tenants, list):
        sections.extend(tenants)
    for section in sections:
        if not isinstance(section, dict):
            continue
        for key in PATH_KEYS:
            value = section.get(key)
            if isinstance(value, str) and value and not os.path.isabs(value):
                section[key] = str(base_dir / value)


def parse_config(raw: object, file: str, base_dir: Path | None = None) -> ExporterConfig:
    """Validate an already-parsed YAML document.

    `file` names the source in error messages; relative file paths are taken from `base_dir`
    (the config file's folder) when given, else from the working directory.
    """
    if raw is None:
        raise ConfigError(file, "", "the file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(file, "", "the top level must be a mapping of keys")
    substituted = _substitute_env(raw, (), file)
    if base_dir is not None:
        _resolve_paths(substituted, base_dir)
    merged, inherited = _merge_defaults(substituted, file)
    try:
        config = ExporterConfig.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        key = key_path(loc)
        if (
            len(loc) >= 3
            and loc[0] == "tenants"
            and isinstance(loc[1], int)
            and str(loc[2]) in inherited.get(loc[1], ())
        ):
            key = f"defaults.{loc[2]} (inherited by tenants[{loc[1]}])"
        raise ConfigError(file, key, pydantic_problem(ExporterConfig, error)) from None
    seen: dict[str, int] = {}
    for index, tenant in enumerate(config.tenants):
        if tenant.name in seen:
            raise ConfigError(
                file,
                f"tenants[{index}].name",
                f"duplicate tenant name {tenant.name!r} (also tenants[{seen[tenant.name]}])",
            )
        seen[tenant.name] = index
    _check_files(config, file, inherited)
    return config


def load_config(path: str | os.PathLike[str]) -> ExporterConfig:
    """Read, substitute and validate the YAML config file at `path`."""
    file = os.fspath(path)
    config = parse_config(read_yaml(file), file, Path(file).resolve().parent)
    if config.poll_interval < MIN_SANE_POLL_INTERVAL:
        log.warning(
            "poll_interval is under a minute; Apple tokens change daily at most, and Intune "
            "throttles per app and tenant",
            extra={"file": file, "poll_interval_seconds": config.poll_interval},
        )
    return config
