"""The registry of Apple-credential collectors, by their `collect:` name."""

from __future__ import annotations

from typing import Final

from .ade import AdeCollector
from .apns import ApnsCollector
from .base import CredentialCollector
from .vpp import VppCollector

COLLECTORS: Final[dict[str, CredentialCollector]] = {
    collector.name: collector for collector in (AdeCollector(), VppCollector(), ApnsCollector())
}

__all__ = ["COLLECTORS", "CredentialCollector"]
