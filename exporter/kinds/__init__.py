"""The registry of credential kinds, by their `collect:` name."""

from __future__ import annotations

from typing import Final

from .ade import AdeTokenKind
from .ade_devices import AdeDevicesKind
from .apns import ApnsCertificateKind
from .base import CredentialKind
from .vpp import VppTokenKind

KINDS: Final[dict[str, CredentialKind]] = {
    kind.name: kind
    for kind in (AdeTokenKind(), AdeDevicesKind(), VppTokenKind(), ApnsCertificateKind())
}

__all__ = ["KINDS", "CredentialKind"]
