"""Pure functions: timestamps, Retry-After, Graph error bodies, schedule slots, log lines."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest

from exporter.demo.simulator import (
    INTUNE_FORBIDDEN_MESSAGE,
    graph_error_body,
    intune_nested_message,
)
from exporter.graph import parse_graph_error, parse_retry_after
from exporter.graphtime import parse_graph_datetime
from exporter.logs import configure_logging
from exporter.scheduler import next_slot, slot_offsets

BASE = datetime(2026, 11, 25, 1, 0, 2, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T01:00:02Z", BASE),
        ("2026-11-25T01:00:02.1Z", BASE + 0.1),
        ("2026-11-25T01:00:02.12Z", BASE + 0.12),
        ("2026-11-25T01:00:02.120883Z", BASE + 0.120883),
        ("2026-11-25T01:00:02.0916369Z", BASE + 0.091636),  # 7 digits, as Graph writes
        ("2026-11-25T03:00:02+02:00", BASE),
        ("2026-11-24T20:00:02.5-05:00", BASE + 0.5),
        ("2026-11-25T01:00:02", BASE),  # no offset: read as UTC
    ],
)
def test_graph_datetimes(text: str, expected: float) -> None:
    assert parse_graph_datetime(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "value", [None, "", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00.0000000Z", "soon", 12, []]
)
def test_never_and_unknown_datetimes(value: object) -> None:
    assert parse_graph_datetime(value) is None


def test_retry_after_seconds_dates_and_garbage() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("0.75") == 0.75
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("Wed, 25 Nov 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 25 Nov 2026 11:59:00 GMT", now=now) == 0.0


def test_graph_error_with_intune_nested_message() -> None:
    body = json.dumps(
        graph_error_body(
            "Forbidden", intune_nested_message(INTUNE_FORBIDDEN_MESSAGE), request_id="abc-123"
        )
    ).encode()
    error = parse_graph_error(403, body, {})
    assert (error.reason, error.status, error.code) == ("forbidden", 403, "Forbidden")
    assert error.graph_message == INTUNE_FORBIDDEN_MESSAGE
    assert error.request_id == "abc-123"
    assert str(error) == f"HTTP 403 Forbidden: {INTUNE_FORBIDDEN_MESSAGE} (request-id abc-123)"


@pytest.mark.parametrize(
    ("status", "reason"), [(401, "auth"), (404, "not_found"), (429, "throttled"), (500, "http")]
)
def test_graph_error_reasons(status: int, reason: str) -> None:
    body = json.dumps(graph_error_body("SomeCode", "plain message")).encode()
    error = parse_graph_error(status, body, {})
    assert error.reason == reason and error.graph_message == "plain message"


def test_graph_error_without_json_body_uses_the_header_request_id() -> None:
    error = parse_graph_error(
        502, b"<html>bad gateway</html>", {"Content-Type": "text/html", "request-id": "r-9"}
    )
    assert error.code == "unknown" and error.request_id == "r-9"
    assert "text/html" in error.graph_message and "<html>" not in str(error)


def test_slots_are_spread_evenly() -> None:
    assert slot_offsets(4, 600) == [0, 150, 300, 450]
    assert slot_offsets(1, 600) == [0]
    assert slot_offsets(0, 600) == []


def test_next_slot_skips_missed_slots_instead_of_piling_up() -> None:
    assert next_slot(due=100, now=50, interval=60) == 100
    assert next_slot(due=100, now=100, interval=60) == 160
    assert next_slot(due=100, now=230, interval=60) == 280


def test_logfmt_quotes_and_carries_extra_fields() -> None:
    stream = io.StringIO()
    configure_logging("info", "logfmt", stream)
    try:
        logging.getLogger("exporter.test").warning(
            'poll failed: "quoted" text', extra={"tenant": "contoso ltd", "aadsts": 7000215}
        )
        logging.getLogger("exporter.test").debug("hidden at info")
    finally:
        configure_logging("info", "logfmt")
    line = stream.getvalue().strip()
    assert "\n" not in line
    assert 'level=warn logger=exporter.test msg="poll failed: \\"quoted\\" text"' in line
    assert 'tenant="contoso ltd" aadsts=7000215' in line
