"""Graph's DateTimeOffset values as Unix time."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_graph_datetime(value: object) -> float | None:
    """Unix time of an ISO 8601 timestamp; None for null, missing, unparsable or 0001-01-01.

    Graph writes 0 to 7 fractional digits and a `Z` or `±hh:mm` offset, and uses
    `0001-01-01T00:00:00Z` for "never".
    """
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.year <= 1:
        return None
    if parsed.tzinfo is None:  # Graph always sends an offset; read a bare one as UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
