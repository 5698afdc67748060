"""The ``--web.config.file`` of the Prometheus exporter-toolkit: TLS, basic auth, headers, limits.

The file format is the one every Go exporter shares, so an existing web config can be reused. Keys
this exporter cannot honour are rejected with a message saying why, never silently ignored: a
security setting that is accepted but not applied is worse than an error.

Supported::

    tls_server_config:
      cert_file, key_file            # re-read when they change on disk (cert-manager rotation)
      client_ca_file                 # re-read too
      client_auth_type               # NoClientCert | RequestClientCert | VerifyClientCertIfGiven |
                                     # RequireAndVerifyClientCert
      client_allowed_sans, min_version, max_version, cipher_suites, prefer_server_cipher_suites
    http_server_config:
      http2                          # accepted; this server speaks HTTP/1.1 only
      headers                        # the five headers the toolkit allows
    basic_auth_users: {user: bcrypt hash}
    rate_limit: {interval, burst}

Rejected with a reason: inline ``cert``/``key``/``client_ca`` (use the ``*_file`` keys, which
rotate), ``curve_preferences`` (Python's ssl module cannot set a curve list), and
``client_auth_type: RequireAnyClientCert`` (Python's ssl module cannot accept an unverified client
certificate; that mode is insecure anyway).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import ssl
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from exporter.yaml_config import ConfigError, read_yaml

log = logging.getLogger(__name__)

# Paths that never need credentials: liveness probes (kubelet, Docker HEALTHCHECK) carry none.
OPEN_PATHS: Final = frozenset({"/-/healthy"})

REALM: Final = "intune-apple-token-exporter"

TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
ClientAuthType = Literal[
    "NoClientCert", "RequestClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"
]

_TLS_VERSIONS: Final[dict[str, ssl.TLSVersion]] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's crypto/tls names (tls.CipherSuites(), which is what the toolkit accepts) to OpenSSL names.
# The TLS 1.3 suites map to None: like Go, TLS 1.3 suites are not configurable.
_CIPHER_SUITES: Final[dict[str, str | None]] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}

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

# The only headers the toolkit lets a web config set, with the values it allows (None: any).
_ALLOWED_HEADERS: Final[dict[str, frozenset[str] | None]] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}

_BCRYPT_HASH: Final = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
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

# Bounds of the bcrypt caches and of the queue of requests waiting for a bcrypt check.
_SUCCESS_CACHE_SIZE: Final = 256
_FAILURE_CACHE_SIZE: Final = 1024
_MAX_PENDING_BCRYPT: Final = 8


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
            if name not in _CIPHER_SUITES:
                raise ValueError(
                    f"unknown cipher suite {name!r}; known: {', '.join(sorted(_CIPHER_SUITES))}"
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
        for name, header_value in (value or {}).items():
            if name not in _ALLOWED_HEADERS:
                raise ValueError(
                    f"header {name!r} cannot be configured; allowed: {', '.join(_ALLOWED_HEADERS)}"
                )
            allowed = _ALLOWED_HEADERS[name]
            if allowed is not None and header_value.lower() not in allowed:
                raise ValueError(
                    f"invalid value for header {name!r}; allowed: {', '.join(sorted(allowed))}"
                )
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


@dataclass(frozen=True)
class TLSSettings:
    """The validated ``tls_server_config``, with file paths made absolute."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    client_auth_type: ClientAuthType
    client_allowed_sans: tuple[str, ...]
    min_version: TLSVersionName
    max_version: TLSVersionName
    openssl_ciphers: tuple[str, ...]
    prefer_server_cipher_suites: bool

    def files(self) -> tuple[Path, ...]:
        """The files the TLS context is built from, watched for rotation."""
        extra = (self.client_ca_file,) if self.client_ca_file else ()
        return (self.cert_file, self.key_file, *extra)


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
        self._reloader: _CertReloader | None = None
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
                self._reloader = _CertReloader(self.path, self.tls)
            return self._reloader.front

    def middleware(self) -> Middleware | None:
        """An aiohttp middleware enforcing basic auth, allowed client SANs, the rate limit and the
        configured headers, or None when the web config asks for none of them."""
        sans = self.tls.client_allowed_sans if self.tls else ()
        if not (self.basic_auth_users or sans or self.headers or self.rate_limit):
            return None
        return _build_middleware(
            _BasicAuth(self.basic_auth_users) if self.basic_auth_users else None,
            _normalise_sans(sans),
            dict(self.headers),
            _TokenBucket(*self.rate_limit) if self.rate_limit else None,
        )


# ---------------------------------------------------------------------------------------------
# Loading and validation


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
        err = exc.errors()[0]
        raise ConfigError(name, _key_path(err["loc"]), _problem(err)) from None

    base = Path(name).resolve().parent
    tls = _tls_settings(name, base, model.tls_server_config)
    users = _basic_auth_users(name, model.basic_auth_users or {})
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
        _build_server_context(name, tls)
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


def _key_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _problem(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    loc = err["loc"]
    if kind == "extra_forbidden":
        model: type[BaseModel] = _WebConfigModel
        for part in loc[:-1]:
            annotation = model.model_fields[str(part)].annotation
            model = next(
                a
                for a in getattr(annotation, "__args__", ())
                if isinstance(a, type) and issubclass(a, BaseModel)
            )
        return f"unknown key (valid keys: {', '.join(model.model_fields)})"
    if kind == "value_error":
        # Our own validators: the message is ours and carries no secret.
        return str(err["ctx"]["error"])
    # Pydantic's message, without the input value: basic_auth_users values are hashes.
    return str(err["msg"])


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
    if _TLS_VERSIONS[model.max_version] < _TLS_VERSIONS[model.min_version]:
        raise ConfigError(name, "tls_server_config.max_version", "is lower than min_version")
    ciphers = tuple(
        dict.fromkeys(c for n in model.cipher_suites or [] if (c := _CIPHER_SUITES[n]) is not None)
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


def _basic_auth_users(name: str, users: Mapping[str, str]) -> dict[str, bytes]:
    result: dict[str, bytes] = {}
    for user, hashed in users.items():
        key = f"basic_auth_users.{user}"
        if not user or ":" in user:
            raise ConfigError(name, key, "a user name must be non-empty and contain no ':'")
        if not _BCRYPT_HASH.fullmatch(hashed):
            raise ConfigError(
                name,
                key,
                "not a bcrypt hash (expected $2y$/$2b$/$2a$, a cost from 04 to 31 and 53 "
                "characters; make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')",
            )
        result[user] = hashed.encode("ascii")
    return result


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _read(name: str, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(name, key, f"cannot read {path}: {_describe_os_error(exc)}") from None


def _no_password() -> bytes:
    return b""


def _build_server_context(name: str, tls: TLSSettings) -> ssl.SSLContext:
    """Build a server context from the files as they are now; ConfigError if any is bad."""
    cert_pem = _read(name, "tls_server_config.cert_file", tls.cert_file)
    key_pem = _read(name, "tls_server_config.key_file", tls.key_file)
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(
            name, "tls_server_config.cert_file", f"{tls.cert_file} holds no PEM certificate"
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # Never echo the file's content: it is a private key (or meant to be).
        raise ConfigError(
            name,
            "tls_server_config.key_file",
            f"{tls.key_file} holds no unencrypted PEM private key",
        ) from None
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != certs[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ConfigError(
            name,
            "tls_server_config.key_file",
            f"{tls.key_file} does not match the certificate in {tls.cert_file}",
        )
    ca_pem: bytes | None = None
    if tls.client_ca_file is not None:
        ca_pem = _read(name, "tls_server_config.client_ca_file", tls.client_ca_file)
        try:
            ok = bool(x509.load_pem_x509_certificates(ca_pem))
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(
                name,
                "tls_server_config.client_ca_file",
                f"{tls.client_ca_file} holds no PEM certificate",
            )

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        if tls.openssl_ciphers:
            ctx.set_ciphers(":".join(tls.openssl_ciphers))
        # load_cert_chain only takes paths; the files were just checked, and a change in between
        # is caught by the SSLError handler below.
        # The password callback makes an encrypted key fail instead of prompting on a terminal.
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
        if ca_pem is not None:
            ctx.load_verify_locations(cadata=ca_pem.decode("ascii", errors="replace"))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(name, "tls_server_config", f"OpenSSL rejected the files: {exc}") from None
    ctx.verify_mode = {
        "NoClientCert": ssl.CERT_NONE,
        # Go's RequestClientCert asks for a certificate but accepts any or none and never checks
        # it: for access control that is the same as not asking, which is what we do.
        "RequestClientCert": ssl.CERT_NONE,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }[tls.client_auth_type]
    return ctx


# ---------------------------------------------------------------------------------------------
# Certificate rotation


def _file_signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int, int, int], ...] | None:
    # os.stat follows symlinks, so the atomic "..data" symlink swap of a Kubernetes Secret
    # volume shows up as a new inode.
    try:
        return tuple(
            (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)
            for s in (os.stat(p) for p in paths)
        )
    except OSError:
        return None


class _CertReloader:
    """Serves the newest good context through an SNI callback on a fixed front context.

    aiohttp binds one SSLContext to the listening socket. OpenSSL calls the servername callback
    on every ClientHello (with server_name None when the client sends no SNI), and assigning
    ``ssl_object.context`` there switches that connection to another context's certificate.
    Every context is built by the same function, so verify mode and versions stay identical.
    """

    def __init__(self, name: str, tls: TLSSettings) -> None:
        self._name = name
        self._tls = tls
        self._signature = _file_signature(tls.files())
        self.front = _build_server_context(name, tls)
        self._current = self.front
        self._lock = threading.Lock()
        self.front.sni_callback = self._on_client_hello

    def _on_client_hello(
        self, ssl_object: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        current = self.current()
        if current is not ctx:
            ssl_object.context = current

    def current(self) -> ssl.SSLContext:
        """The context built from the newest good files; rebuilt when a file changed."""
        signature = _file_signature(self._tls.files())
        if signature is None or signature == self._signature:
            return self._current
        with self._lock:
            if signature != self._signature:
                # Remember the signature even on failure: one warning per change, not one per
                # handshake; the next write to any of the files triggers a new attempt.
                self._signature = signature
                try:
                    self._current = _build_server_context(self._name, self._tls)
                    log.info("web config: TLS certificate files changed, reloaded them")
                except ConfigError as exc:
                    log.warning(
                        "web config: TLS files changed but cannot be used, still serving the "
                        "previous certificate: %s: %s",
                        exc.key,
                        exc.problem,
                    )
                except Exception as exc:
                    # Raised inside OpenSSL's callback it would abort the handshake; keep serving.
                    log.warning(
                        "web config: reloading the TLS files failed, still serving the previous "
                        "certificate: %s",
                        type(exc).__name__,
                    )
            return self._current


# ---------------------------------------------------------------------------------------------
# Middleware: SAN check, rate limit, basic auth, headers


class _TokenBucket:
    """The toolkit's rate limiter: one request per interval on average, bursts up to ``burst``."""

    def __init__(self, interval: float, burst: int) -> None:
        self._interval = interval
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class _LRU:
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, key: bytes) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


class _TooBusy(Exception):
    pass


class _BasicAuth:
    """Checks basic-auth credentials against bcrypt hashes without paying bcrypt on every request.

    - Cache: a verified (user, password) pair is remembered as an HMAC of the pair under a
      random per-process key (so memory never holds the password or a fast unsalted hash of it),
      mapped to the bcrypt hash it matched. A hit is valid only while that hash is the one in
      force, and concurrent requests with the same credentials share one in-flight check, so a
      scrape storm with good credentials costs one bcrypt in total.
    - Wrong passwords: the same (user, password) pair that failed is remembered in a bounded
      failure cache, so a misconfigured scraper retrying the same bad password costs one bcrypt.
      Fresh wrong passwords (guessing) cannot be cached away; instead bcrypt runs in a worker
      thread one at a time (at most one core, and the event loop keeps serving /-/healthy and
      cached scrapes), and when 8 distinct checks are already queued the request is refused
      with 429 without any bcrypt work. CPU spent on guessing is therefore bounded by one core,
      and memory by the two caches and the queue bound.
    - Timing: the user name is compared against every configured user with compare_digest, and
      an unknown user still pays one bcrypt against a dummy hash, so responses do not reveal
      which users exist. bcrypt.checkpw compares in constant time itself.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = [(u.encode("utf-8"), h) for u, h in users.items()]
        self._mac_key = secrets.token_bytes(32)
        self._ok = _LRU(_SUCCESS_CACHE_SIZE)
        self._failed = _LRU(_FAILURE_CACHE_SIZE)
        self._max_cost = max(int(h[4:6]) for _, h in self._users)
        # Made on first use, in the worker thread: at a high cost it takes a second or more.
        self._dummy_hash: bytes | None = None
        self._inflight: dict[bytes, asyncio.Future[bool]] = {}
        self._bcrypt_lock: asyncio.Lock | None = None

    def _lookup(self, user: bytes) -> bytes | None:
        found: bytes | None = None
        for name, hashed in self._users:
            if hmac.compare_digest(name, user):
                found = hashed
        return found

    def _cache_key(self, user: bytes, password: bytes) -> bytes:
        message = struct.pack(">I", len(user)) + user + password
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()

    def _cached(self, key: bytes, hashed: bytes | None) -> bool | None:
        ok = self._ok.get(key)
        if ok is not None and hashed is not None and hmac.compare_digest(ok, hashed):
            return True
        if self._failed.get(key) == (hashed or b""):
            return False
        return None

    async def check(self, user: bytes, password: bytes) -> bool:
        """True if the credentials are right. Raises _TooBusy when too many checks are queued."""
        hashed = self._lookup(user)
        key = self._cache_key(user, password)
        cached = self._cached(key, hashed)
        if cached is not None:
            return cached
        # Concurrent requests with the same credentials (a scrape storm right after start-up)
        # share one check instead of queueing one each.
        inflight = self._inflight.get(key)
        if inflight is not None:
            return await asyncio.shield(inflight)
        if len(self._inflight) >= _MAX_PENDING_BCRYPT:
            raise _TooBusy
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            ok = await self._bcrypt(password, hashed)
        except BaseException as exc:
            # Waiters of a cancelled check are told to retry (429) rather than seeing the
            # cancellation; the exception is marked retrieved because there may be no waiter.
            future.set_exception(exc if isinstance(exc, Exception) else _TooBusy())
            future.exception()
            raise
        finally:
            del self._inflight[key]
        if ok and hashed is not None:
            self._ok.put(key, hashed)
        else:
            self._failed.put(key, hashed or b"")
        future.set_result(ok)
        return ok

    async def _bcrypt(self, password: bytes, hashed: bytes | None) -> bool:
        if self._bcrypt_lock is None:
            self._bcrypt_lock = asyncio.Lock()
        async with self._bcrypt_lock:
            ok = await asyncio.to_thread(self._checkpw, password, hashed)
        return ok and hashed is not None

    def _checkpw(self, password: bytes, hashed: bytes | None) -> bool:
        if hashed is None:
            if self._dummy_hash is None:
                salt = bcrypt.gensalt(self._max_cost)
                self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), salt)
            hashed = self._dummy_hash
        return bcrypt.checkpw(password, hashed)


def _parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user, password


def _normalise_sans(sans: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_normalise_san(s) for s in sans)


def _normalise_san(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


def _peer_sans(request: web.Request) -> set[str]:
    if request.transport is None:
        return set()
    ssl_object = request.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return set()
    cert = ssl_object.getpeercert()
    if not cert:
        return set()
    entries = cert.get("subjectAltName", ())
    return {_normalise_san(str(value)) for _kind, value in entries}


def _build_middleware(
    auth: _BasicAuth | None,
    allowed_sans: frozenset[str],
    headers: dict[str, str],
    bucket: _TokenBucket | None,
) -> Middleware:
    def plain(status: int, text: str, extra: Mapping[str, str] | None = None) -> web.Response:
        response = web.Response(status=status, text=text + "\n")
        response.headers.update(extra or {})
        return response

    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if allowed_sans and not (_peer_sans(request) & allowed_sans):
            # The toolkit ends the handshake here; Python's ssl has no hook for that, so the
            # request is refused instead, on every path.
            return plain(403, "Forbidden: client certificate SAN not allowed")
        if request.path in OPEN_PATHS:
            return await handler(request)
        if bucket is not None and not bucket.take():
            return plain(429, "Too Many Requests")
        if auth is not None:
            credentials = _parse_basic(request.headers.get("Authorization"))
            try:
                ok = credentials is not None and await auth.check(*credentials)
            except _TooBusy:
                return plain(429, "Too Many Requests", {"Retry-After": "1"})
            if not ok:
                return plain(
                    401,
                    "Unauthorized",
                    {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
                )
        return await handler(request)

    @web.middleware
    async def web_config_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await guard(request, handler)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        # A prepared (streamed) response has sent its headers already.
        if not response.prepared:
            response.headers.update(headers)
        return response

    return web_config_middleware
