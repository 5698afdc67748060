"""Every https address in the alerting files and the runbook is one of `exporter.links.ALL`.

Microsoft moves its pages now and then; keeping their addresses in exporter/links.py makes a move
one edit, and this test finds any address that bypasses it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter import links

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "docs" / "runbook.md"
FILES = [
    ROOT / "prometheus" / "alerts.yaml",
    ROOT / "prometheus" / "alerts_test.yaml",
    ROOT / "alertmanager" / "alertmanager.example.yaml",
    *sorted((ROOT / "alertmanager" / "templates").glob("*.tmpl")),
    RUNBOOK,
]
# An address ends at whitespace, a quote, or Markdown's closing bracket/parenthesis.
URL = re.compile(r"https://[^\s'\"<>()\[\]]+")


def _urls(path: Path) -> list[str]:
    return URL.findall(path.read_text())


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_https_addresses_come_from_links_module(path: Path) -> None:
    assert path.exists()
    # Our own runbook's sections are linked under its one base (docs/runbook.md#anchor).
    ours = {url for url in _urls(path) if url.startswith(links.RUNBOOK_BASE + "#")}
    unknown = sorted(set(_urls(path)) - set(links.ALL) - ours)
    assert unknown == [], f"{path.name} links pages missing from exporter/links.py"


def test_runbook_links_every_microsoft_page() -> None:
    assert set(_urls(RUNBOOK)) == set(links.ALL)


def test_url_pattern_catches_a_stray_address() -> None:
    text = "see [x](https://learn.microsoft.com/mem/intune/apps/vpp-apps-ios#renew) or <https://example.com/a>."
    assert URL.findall(text) == [
        "https://learn.microsoft.com/mem/intune/apps/vpp-apps-ios#renew",
        "https://example.com/a",
    ]
