"""The web config file: its schema, its loader, and `WebConfig`, what the server takes from it.

Mirrors the ``Config`` structs and ``getConfig`` of exporter-toolkit's ``web/tls_config.go``.
Problems are located and worded by `exporter.yaml_config`, like those of the main config file.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp.typedefs import Middleware
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..yaml_config import ConfigError, key_path, pydantic_problem, read_yaml
from .basic_auth import BasicAuth, basic_auth_users
from .middleware import TokenBucket, build_middleware, check_headers, normalise_sans
from .tls import (
    CIPHER_SUITES,
    TLS_VERSIONS,
    CertReloader,
    ClientAuthType,
    TLSSettings,
    TLSVersionName,
    build_server_context,
)

# Toolkit keys we deliberately do not implement, with the reason given to the user.
_REJECTED_TLS_KEYS: Final[dict[str, str]] = {
    "cert": "inline certificates are not supported; put the PEM in a file and use cert_file "
    "(files are re-read when they change, so rotation works)",
    "key": "inline keys are not supported; put the PEM in a file and use key_file "
    "(files are re-read when they change, so rotation works)",
    "client_ca": "inline CA certificates are not supported; put the PEM in a file and use "
    "client_ca_file",
    "curve_preferences": "not supported: Python's ssl module cannot set a list of curves; remove "
    "the key to use OpenSSL's default groups (X25519, P-256, P-384, P-521)",
}
_REJECTED_CLIENT_AUTH: Final[dict[str, str]] = {
    "RequireAnyClientCert": "RequireAnyClientCert is not supported: it accepts any certificate, "
    "even self-signed, and Python's ssl module cannot skip verification of a required client "
    "certificate; use RequireAndVerifyClientCert with client_ca_file",
}
_REJECTED_CLIENT_AUTH["RequireClientCert"] = _REJECTED_CLIENT_AUTH["RequireAnyClientCert"]

_GO_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_DURATION_UNITS: Final[dict[str, float]] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str) -> float:
    """Parse a Go ``time.Duration`` string such as ``1s``, ``250ms`` or ``1m30s`` into seconds."""
    if text == "0":
        return 0.0
    pos = 0
    total = 0.0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {text!r} (examples: 1s, 250ms, 1m30s)")
    return total


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _TLSServerModel(_Model):
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    client_auth_type: ClientAuthType = "NoClientCert"
    client_allowed_sans: list[str] | None = None
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    cipher_suites: list[str] | None = None
    prefer_server_cipher_suites: bool = True

    @field_validator("cipher_suites")
    @classmethod
    def _known_ciphers(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if name not in CIPHER_SUITES:
                raise ValueError(
                    f"unknown cipher suite {name!r}; known: {', '.join(sorted(CIPHER_SUITES))}"
                )
        return value


class _HTTPServerModel(_Model):
    # aiohttp speaks HTTP/1.1 only; clients negotiate it through ALPN, so `http2: true` (the Go
    # default) is harmless and accepted to keep existing files working.
    http2: bool = True
    headers: dict[str, str] | None = None

    @field_validator("headers")
    @classmethod
    def _allowed_headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        check_headers(value or {})
        return value


class _RateLimitModel(_Model):
    interval: str = "0s"
    burst: int = 0

    @field_validator("interval")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_go_duration(value)
        return value


class _WebConfigModel(_Model):
    tls_server_config: _TLSServerModel | None = None
    http_server_config: _HTTPServerModel | None = None
    basic_auth_users: dict[str, str] | None = None
    rate_limit: _RateLimitModel | None = None


class WebConfig:
    """A loaded web config. Build it with :func:`load_web_config`."""

    def __init__(
        self,
        path: str,
        tls: TLSSettings | None,
        basic_auth_users: Mapping[str, bytes],
        headers: Mapping[str, str],
        rate_limit: tuple[float, int] | None,
    ) -> None:
        self.path = path
        self.tls = tls
        # user -> bcrypt hash. Hashes are not secrets in the sense of passwords, but they are
        # never logged or put in error messages either.
        self.basic_auth_users: Mapping[str, bytes] = dict(basic_auth_users)
        self.headers: Mapping[str, str] = dict(headers)
        self.rate_limit = rate_limit
        self._reloader: CertReloader | None = None
        self._lock = threading.Lock()

    def summary(self) -> str:
        """One line for ``--check-config`` and start-up logs; contains no secret."""
        parts: list[str] = []
        if self.tls is None:
            parts.append("TLS off")
        else:
            parts.append(
                f"TLS on (min {self.tls.min_version}, client auth {self.tls.client_auth_type})"
            )
        n = len(self.basic_auth_users)
        parts.append(f"basic auth for {n} user{'s' if n != 1 else ''}" if n else "basic auth off")
        if self.rate_limit:
            parts.append(f"rate limit 1 per {self.rate_limit[0]:g}s, burst {self.rate_limit[1]}")
        return ", ".join(parts)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context, or None when the web config does not enable TLS.

        The returned context re-reads the certificate, key and client CA files when they change
        on disk (checked at each TLS handshake): new connections get the new certificate without
        a restart. If the new files are broken, the last good ones keep being served and a
        warning is logged once per change.
        """
        if self.tls is None:
            return None
        with self._lock:
            if self._reloader is None:
                self._reloader = CertReloader(self.path, self.tls)
            return self._reloader.front

    def middleware(self) -> Middleware | None:
        """An aiohttp middleware enforcing basic auth, allowed client SANs, the rate limit and the
        configured headers, or None when the web config asks for none of them."""
        sans = self.tls.client_allowed_sans if self.tls else ()
        if not (self.basic_auth_users or sans or self.headers or self.rate_limit):
            return None
        return build_middleware(
            BasicAuth(self.basic_auth_users) if self.basic_auth_users else None,
            normalise_sans(sans),
            dict(self.headers),
            TokenBucket(*self.rate_limit) if self.rate_limit else None,
        )


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and validate a web config file.

    Raises ConfigError (file, key path, problem) for an unreadable or invalid file, an unknown or
    unsupported key, an unreadable or invalid certificate, key or CA file, or a bad bcrypt hash.
    Relative file paths are resolved against the web config file's directory, as in the toolkit.
    """
    name = os.fspath(path)
    raw = read_yaml(name)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(name, "", "the web config must be a YAML mapping")
    _reject_unsupported(name, raw)
    try:
        model = _WebConfigModel.model_validate(raw)
    except ValidationError as exc:
        # The first problem only: every other check of this file stops at the first, too.
        err = exc.errors()[0]
        raise ConfigError(
            name, key_path(tuple(err["loc"])), pydantic_problem(_WebConfigModel, err)
        ) from None

    base = Path(name).resolve().parent
    tls = _tls_settings(name, base, model.tls_server_config)
    users = basic_auth_users(name, model.basic_auth_users or {})
    headers = (model.http_server_config.headers or {}) if model.http_server_config else {}
    rate_limit: tuple[float, int] | None = None
    if model.rate_limit is not None:
        interval = parse_go_duration(model.rate_limit.interval)
        if interval > 0:
            if model.rate_limit.burst < 1:
                raise ConfigError(name, "rate_limit.burst", "must be at least 1 with an interval")
            rate_limit = (interval, model.rate_limit.burst)
    config = WebConfig(name, tls, users, headers, rate_limit)
    if tls is not None:
        # Fail at start-up (and in --check-config) rather than at the first handshake.
        build_server_context(name, tls)
    return config


def _reject_unsupported(name: str, raw: dict[Any, Any]) -> None:
    tls = raw.get("tls_server_config")
    if not isinstance(tls, dict):
        return
    for key, reason in _REJECTED_TLS_KEYS.items():
        if key in tls:
            raise ConfigError(name, f"tls_server_config.{key}", reason)
    auth = tls.get("client_auth_type")
    if isinstance(auth, str) and auth in _REJECTED_CLIENT_AUTH:
        raise ConfigError(name, "tls_server_config.client_auth_type", _REJECTED_CLIENT_AUTH[auth])


def _tls_settings(name: str, base: Path, model: _TLSServerModel | None) -> TLSSettings | None:
    if model is None or (
        # The toolkit serves plain HTTP when no TLS file is given at all.
        model.cert_file is None and model.key_file is None and model.client_ca_file is None
    ):
        if model is not None and model.client_auth_type != "NoClientCert":
            raise ConfigError(
                name, "tls_server_config.client_auth_type", "requires cert_file and key_file"
            )
        return None
    cert_file, key_file = model.cert_file, model.key_file
    if not cert_file:
        raise ConfigError(name, "tls_server_config.cert_file", "missing (TLS needs both files)")
    if not key_file:
        raise ConfigError(name, "tls_server_config.key_file", "missing (TLS needs both files)")
    if model.client_ca_file and model.client_auth_type == "NoClientCert":
        raise ConfigError(
            name,
            "tls_server_config.client_auth_type",
            "client_ca_file is set but client_auth_type is NoClientCert; set "
            "RequireAndVerifyClientCert to require client certificates",
        )
    if not model.client_ca_file and model.client_auth_type in (
        "VerifyClientCertIfGiven",
        "RequireAndVerifyClientCert",
    ):
        raise ConfigError(
            name,
            "tls_server_config.client_ca_file",
            f"required with client_auth_type {model.client_auth_type}",
        )
    if model.client_allowed_sans and model.client_auth_type != "RequireAndVerifyClientCert":
        raise ConfigError(
            name,
            "tls_server_config.client_allowed_sans",
            "requires client_auth_type RequireAndVerifyClientCert",
        )
    if TLS_VERSIONS[model.max_version] < TLS_VERSIONS[model.min_version]:
        raise ConfigError(name, "tls_server_config.max_version", "is lower than min_version")
    ciphers = tuple(
        dict.fromkeys(c for n in model.cipher_suites or [] if (c := CIPHER_SUITES[n]) is not None)
    )
    return TLSSettings(
        cert_file=base / cert_file,
        key_file=base / key_file,
        client_ca_file=base / model.client_ca_file if model.client_ca_file else None,
        client_auth_type=model.client_auth_type,
        client_allowed_sans=tuple(model.client_allowed_sans or ()),
        min_version=model.min_version,
        max_version=model.max_version,
        openssl_ciphers=ciphers,
        prefer_server_cipher_suites=model.prefer_server_cipher_suites,
    )
