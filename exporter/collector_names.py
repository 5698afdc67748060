"""The names of the collectors: the `collect:` config values and the `collector` label.

A leaf, so that config can validate names without importing the collectors (and with them the
Graph reader, MSAL and aiohttp). `tests/test_layers.py` checks it equals the registry's keys.
"""

from __future__ import annotations

from typing import Final

COLLECTOR_NAMES: Final = ("ade", "ade_devices", "vpp", "apns")
# What runs when the config names none.
DEFAULT_COLLECTORS: Final = COLLECTOR_NAMES
