"""Prometheus exporter for the Apple credentials (ADE, VPP, APNs) of Microsoft Intune tenants."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("intune-apple-token-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
