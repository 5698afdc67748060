"""Types shared by the layers: parsed Graph records and the samples rendered from them.

A leaf module: the snapshot store, the exposition and the credential kinds all use these
without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The parsed result of one successful fetch; each credential kind knows its own record type.
Records = tuple[Any, ...]
# (metric name, label values in the spec's order, value). For a time-derived family (see
# `MetricSpec.derived`) the value is the timestamp the scrape's clock is measured against.
Sample = tuple[str, tuple[str, ...], float]
# A JSON object as Graph returns it.
JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Fetched:
    """One collector's successful fetch: its records, and what was odd about getting them (for
    example a property Graph no longer accepts), for the log and the status page."""

    records: Records
    notes: tuple[str, ...] = ()
