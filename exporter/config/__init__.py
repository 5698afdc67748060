"""The configuration file: its model, and loading it with every problem located and named.

A leaf of the exporter: it imports no layer above it (the collector names come from a leaf
list, not from the collectors).
"""

from .durations import Duration, parse_duration
from .loading import MIN_SANE_POLL_INTERVAL, load_config, parse_config
from .model import (
    CREDENTIAL_KEYS,
    DEFAULT_COLLECTOR_INTERVALS,
    DiscoveryConfig,
    ExporterConfig,
    GdapDiscovery,
    TenantConfig,
    ThresholdSettings,
)

__all__ = [
    "CREDENTIAL_KEYS",
    "DEFAULT_COLLECTOR_INTERVALS",
    "MIN_SANE_POLL_INTERVAL",
    "DiscoveryConfig",
    "Duration",
    "ExporterConfig",
    "GdapDiscovery",
    "TenantConfig",
    "ThresholdSettings",
    "load_config",
    "parse_config",
    "parse_duration",
]
