"""Reading a tenant's app credential from disk: secret files, certificate PEMs, federated tokens.

Errors raised here say what is wrong with the file, never what is in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


class CredentialFileError(ValueError):
    """A credential file cannot be used; the message names the problem, not the content."""


@dataclass(frozen=True)
class CertificateCredential:
    """A private key and its certificate, as PEM, ready for MSAL."""

    private_key_pem: str = field(repr=False)
    certificate_pem: str
    passphrase: str | None = field(default=None, repr=False)
    not_after: float | None = None  # the leaf certificate's notAfter (Unix time)


def read_text_file(path: Path, what: str) -> str:
    """Read a small UTF-8 file, stripped; an empty or unreadable file is an error."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CredentialFileError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise CredentialFileError(f"{what} {str(path)!r} is a directory") from None
    except PermissionError:
        raise CredentialFileError(
            f"{what} {str(path)!r} is not readable (permission denied)"
        ) from None
    except UnicodeDecodeError:
        raise CredentialFileError(f"{what} {str(path)!r} is not UTF-8 text") from None
    except OSError as exc:
        raise CredentialFileError(f"{what} {str(path)!r} cannot be read: {exc.strerror}") from None
    if not text:
        raise CredentialFileError(f"{what} {str(path)!r} is empty")
    return text


def key_matches_certificate(key: PrivateKeyTypes, certificate: x509.Certificate) -> bool:
    """True if `certificate` holds the public half of `key`.

    Compared as DER SubjectPublicKeyInfo, which is the same for a key of any type; also used by
    the web config for its TLS server certificate.
    """
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*spki) == certificate.public_key().public_bytes(*spki)


def load_certificate(path: Path, password: str | None) -> CertificateCredential:
    """Load a PEM holding the private key and the certificate (chain) for certificate auth."""
    pem = read_text_file(path, "certificate file")
    data = pem.encode()
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:
        # cryptography says TypeError for "encrypted but no password" and the reverse.
        if password:
            raise CredentialFileError(
                f"the private key in {str(path)!r} is not encrypted, "
                "but client_certificate_password is set"
            ) from None
        raise CredentialFileError(
            f"the private key in {str(path)!r} is encrypted; set client_certificate_password"
        ) from None
    except ValueError:
        if password and b"ENCRYPTED" in data:
            raise CredentialFileError(
                f"cannot decrypt the private key in {str(path)!r}: "
                "wrong client_certificate_password"
            ) from None
        raise CredentialFileError(f"{str(path)!r} holds no readable PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        # Entra ID accepts RSA certificates only for app authentication (MSAL signs with PS256).
        raise CredentialFileError(
            f"the private key in {str(path)!r} is not RSA; Entra ID needs an RSA certificate"
        )
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CredentialFileError(f"{str(path)!r} holds no PEM certificate") from None
    if not key_matches_certificate(key, certs[0]):
        raise CredentialFileError(
            f"the first certificate in {str(path)!r} does not match its private key"
        )
    # Sending the whole chain (x5c) is what subject-name/issuer authentication needs.
    chain = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)
    return CertificateCredential(
        private_key_pem=pem,
        certificate_pem=chain,
        passphrase=password,
        not_after=certs[0].not_valid_after_utc.timestamp(),
    )
