"""The TLS server context of the web config, and its rotation when the files change on disk.

Mirrors exporter-toolkit's ``web/tls_config.go``: the TLS versions and cipher suites by their Go
names, the validated ``tls_server_config`` (`TLSSettings`), and the server context built from it
(the toolkit's ``ConfigToTLSConfig``, with ``GetCertificate`` re-reading the files).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..credentials import key_matches_certificate
from ..yaml_config import ConfigError

log = logging.getLogger(__name__)

TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
ClientAuthType = Literal[
    "NoClientCert", "RequestClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"
]

TLS_VERSIONS: Final[dict[str, ssl.TLSVersion]] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's crypto/tls names (tls.CipherSuites(), which is what the toolkit accepts) to OpenSSL names.
# The TLS 1.3 suites map to None: like Go, TLS 1.3 suites are not configurable.
CIPHER_SUITES: Final[dict[str, str | None]] = {
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


def build_server_context(name: str, tls: TLSSettings) -> ssl.SSLContext:
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
    if not key_matches_certificate(key, certs[0]):
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
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
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


class CertReloader:
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
        self.front = build_server_context(name, tls)
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
                    self._current = build_server_context(self._name, self._tls)
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
