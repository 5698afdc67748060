"""The demo's status page (`/`) as a person sees it.

The page has no script, so its HTML is what a browser shows: the tables are checked on the HTML
as served (tenants and credentials listed, problem rows first and marked, Microsoft's links,
the filter). Headless Chromium renders the screenshot, and the test checks where the colours of
the problem rows are in that picture. With UPDATE_STATUS_PAGE_SCREENSHOT=1 the screenshot
replaces docs/status-page.png, the one README shows:

    UPDATE_STATUS_PAGE_SCREENSHOT=1 pytest tests/test_status_page_browser.py
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from exporter import links

from .e2e_support import REPO_ROOT, Exporter, find_binary, http_get, start_demo_exporter

pytestmark = pytest.mark.e2e

CHROMIUM = find_binary("chromium", "chromium-browser")
WINDOW = (1400, 1800)
SCREENSHOT = REPO_ROOT / "docs" / "status-page.png"
CHROMIUM_TIMEOUT = 60.0

RENEW_BY_KIND = {
    "ADE token": links.ADE_RENEW,
    "VPP token": links.VPP_RENEW,
    "APNs certificate": links.APNS_RENEW,
}


@dataclass
class Row:
    classes: set[str]
    cells: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (text, href)


class TableParser(HTMLParser):
    """The body rows of every <table id=...>, with each row's classes, cell texts and links."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[Row]] = {}
        self._table: str | None = None
        self._in_body = False
        self._row: Row | None = None
        self._cell: list[str] | None = None
        self._link: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = attributes.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self._row = Row(set((attributes.get("class") or "").split()))
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")
        elif tag == "a" and self._row is not None:
            self._link = (attributes.get("href") or "", [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "td" and self._row is not None and self._cell is not None:
            self._row.cells.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "a" and self._link is not None and self._row is not None:
            self._row.links.append(("".join(self._link[1]).strip(), self._link[0]))
            self._link = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._link is not None:
            self._link[1].append(data)


def chromium(profile: Path, log: Path, *args: str) -> str:
    """Run headless Chromium once (loopback only, no background traffic); its stdout."""
    assert CHROMIUM is not None
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # runs as root in CI containers
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *args,
    ]
    with log.open("a") as stderr:
        # Its own session, so that a hung browser is ended with all its helper processes.
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
        try:
            stdout, _ = process.communicate(timeout=CHROMIUM_TIMEOUT)
        except subprocess.TimeoutExpired as error:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise AssertionError(
                f"chromium did not finish in {CHROMIUM_TIMEOUT}s:\n{log.read_text()}"
            ) from error
    assert process.returncode == 0, f"chromium exited {process.returncode}:\n{log.read_text()}"
    return stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    exporter = start_demo_exporter(tmp_path_factory.mktemp("status-page"))
    yield exporter
    exporter.process.stop()


@pytest.fixture(scope="module")
def dom(demo: Exporter) -> TableParser:
    status, html = http_get(demo.base_url + "/")
    assert status == 200
    parser = TableParser()
    parser.feed(html)
    assert "<title>Intune Apple token exporter</title>" in html, html[:2000]
    return parser


def _credentials(dom: TableParser) -> dict[tuple[str, str], Row]:
    """The credentials' rows by (tenant, name), in page order (not the tokens' device rows)."""
    rows = {
        (row.cells[0], row.cells[2]): row
        for row in dom.tables["credentials"]
        if len(row.cells) == 9 and row.cells[1] != "ADE devices"
    }
    return rows


def _device_rows(dom: TableParser) -> dict[tuple[str, str], Row]:
    """The rows of the ADE tokens' devices by (tenant, token name), in page order."""
    return {
        (row.cells[0], row.cells[2]): row
        for row in dom.tables["credentials"]
        if len(row.cells) == 9 and row.cells[1] == "ADE devices"
    }


def test_every_tenant_is_listed_with_its_status(dom: TableParser) -> None:
    tenants = {row.cells[0]: row for row in dom.tables["tenants"]}
    configured = ["contoso", "fabrikam", "northwind", "woodgrove", "tailspin"]
    discovered = ["Alpine Ski House", "Litware Inc", "Adatum Corporation"]
    assert list(tenants) == configured + discovered
    for name in ("contoso", "fabrikam", "northwind", "woodgrove", *discovered[:2]):
        assert tenants[name].cells[1] == "up", name
        assert tenants[name].cells[5] == "—", name
    # The Source column: listed in tenants:, or found through the partner's GDAP customers.
    assert [tenants[name].cells[6] for name in configured] == ["config"] * 5
    assert [tenants[name].cells[6] for name in discovered] == ["GDAP discovery"] * 3
    adatum = tenants["Adatum Corporation"]
    assert adatum.cells[1] == "down"
    assert "AADSTS700016" in adatum.cells[5] and "consent" in adatum.cells[5]
    tailspin = tenants["tailspin"]
    assert tailspin.cells[1] == "down"
    assert tailspin.cells[4] == "never"
    assert "AADSTS7000215" in tailspin.cells[5]
    assert (
        "demo-client-secret" not in tailspin.cells[5] and "expired-secret" not in tailspin.cells[5]
    )


def test_every_credential_is_listed_soonest_expiry_first(dom: TableParser) -> None:
    rows = _credentials(dom)
    names = {name for _, name in rows}
    for name in (
        "Contoso iOS", "Contoso Apps", "Fabrikam iPads", "Fabrikam Macs", "Fabrikam Education",
        "Northwind Shared", "Northwind School", "Northwind Loaners", "Northwind Spare",
        "Northwind Retail", "Northwind Kiosk", "Northwind Field", "Woodgrove Apps",
    ):  # fmt: skip
        assert name in names, name
    woodgrove_ade = [
        r for (tenant, _), r in rows.items() if tenant == "woodgrove" and r.cells[1] == "ADE token"
    ]
    assert len(woodgrove_ade) == 45  # three pages of Graph results
    apns = {tenant for (tenant, _), r in rows.items() if r.cells[1] == "APNs certificate"}
    assert apns == {"contoso", "fabrikam", "woodgrove", "Alpine Ski House", "Litware Inc"}
    assert not [key for key in rows if key[0] == "tailspin"]  # never polled successfully
    not_configured = [
        row.cells
        for row in dom.tables["credentials"]
        if row.cells[:2] == ["northwind", "APNs certificate"]
    ]
    assert not_configured == [["northwind", "APNs certificate", "not configured in this tenant"]]
    # Credentials that need attention come first; each group is sorted by days left.
    attention = [row for row in rows.values() if row.cells[7] != "—"]
    calm = [row for row in rows.values() if row.cells[7] == "—"]
    assert list(rows.values()) == attention + calm
    assert [row.cells[2] for row in attention] == [
        "Northwind Shared", "Fabrikam Education", "Fabrikam Macs", "Apple MDM push certificate",
        "Fabrikam iPads", "Northwind Retail", "Northwind Kiosk", "Northwind School",
        "Northwind Loaners", "Northwind Field", "Northwind Spare",
    ]  # fmt: skip
    for group in (attention, calm):
        days = [float(row.cells[4]) for row in group]
        assert days == sorted(days)
    assert rows[("northwind", "Northwind Spare")].cells[6] == "never"
    # A tenant the exporter cannot sign in to says so instead of showing nothing.
    no_data = [row.cells for row in dom.tables["credentials"] if row.cells[0] == "tailspin"]
    assert [cells[1] for cells in no_data] == ["ade", "ade_devices", "vpp", "apns"]
    assert all(cells[2].startswith("no data: auth: ") for cells in no_data)
    assert all("AADSTS7000215" in cells[2] for cells in no_data)


def test_expired_and_expiring_rows_are_marked(dom: TableParser) -> None:
    rows = _credentials(dom)
    expired = sorted(name for (_, name), row in rows.items() if "expired" in row.classes)
    assert expired == ["Fabrikam Education", "Northwind Shared"]
    critical = sorted(name for (_, name), row in rows.items() if "critical" in row.classes)
    assert critical == ["Fabrikam Macs"]
    warning = sorted(
        (tenant, row.cells[1]) for (tenant, _), row in rows.items() if "warning" in row.classes
    )
    assert warning == [("fabrikam", "ADE token"), ("fabrikam", "APNs certificate")]
    for (tenant, name), row in rows.items():
        if tenant in ("contoso", "woodgrove"):
            assert not row.classes, (name, row.classes)
    problems = {name: row.cells[7] for (_, name), row in rows.items() if row.cells[7] != "—"}
    troubled_tenants = {tenant for (tenant, _), row in rows.items() if row.cells[7] != "—"}
    assert problems["Northwind School"].startswith("sync error code 3: new Apple Business")
    assert (
        problems["Northwind Field"] == "last sync failed; no successful sync for 3.0 d"
    )  # past vpp_sync_stale (72h)
    assert problems["Northwind Retail"] == "state invalid"
    assert problems["Northwind Kiosk"] == "state assignedToExternalMDM"
    assert problems["Fabrikam Education"] == "expired 3.0 days ago; state expired"
    assert problems["Northwind Shared"] == "expired 10.0 days ago; no successful sync for 11.0 d"
    assert problems["Fabrikam Macs"] == "expires in under 7 days"
    assert problems["Fabrikam iPads"] == "expires in under 30 days"
    assert problems["Northwind Loaners"] == "no successful sync for 3.0 d"
    assert problems["Northwind Spare"] == "never synced"
    assert troubled_tenants == {"fabrikam", "northwind"}


def test_every_credential_links_its_microsoft_renewal_page(dom: TableParser) -> None:
    for (tenant, name), row in _credentials(dom).items():
        renew = [href for text, href in row.links if text == "renew"]
        assert renew == [RENEW_BY_KIND[row.cells[1]]], (tenant, name, row.links)
    school = _credentials(dom)[("northwind", "Northwind School")]
    assert ("troubleshoot", links.ADE_SYNC_TROUBLESHOOTING) in school.links


def test_the_devices_of_each_token_are_listed_in_words(dom: TableParser) -> None:
    devices = _device_rows(dom)
    problems = {key: row.cells[7] for key, row in devices.items()}
    assert problems == {
        ("fabrikam", "Fabrikam iPads"): "14 devices without an enrollment profile, oldest 3 days; "
        "4 devices failed to enroll",
        ("fabrikam", "Fabrikam Macs"): "6 devices without an enrollment profile, oldest 5 hours; "
        "no default macOS profile; 6 Macs waiting",
        ("northwind", "Northwind Shared"): "25 devices without an enrollment profile, "
        "oldest 9 days",
        ("northwind", "Northwind School"): "no default iOS/iPadOS profile; "
        "10 iPhones and iPads waiting",
        # Healthy: listed, nothing to do.
        ("contoso", "Contoso iOS"): "—",
        ("Alpine Ski House", "Alpine iPads"): "—",
        ("Litware Inc", "Litware Macs"): "—",
    }
    for row in devices.values():
        # Not a credential: no expiry to count down, no Apple ID, no sync of its own.
        assert row.cells[3:7] == ["—", "—", "—", "—"], row.cells
    # The ones with a problem are among those that need attention, before every calm row.
    order = [
        (row.cells[0], row.cells[2], row.cells[7])
        for row in dom.tables["credentials"]
        if len(row.cells) == 9
    ]
    first_calm = next(i for i, (_, _, problem) in enumerate(order) if problem == "—")
    troubled = {key for key, problem in problems.items() if problem != "—"}
    assert {(t, n) for t, n, _ in order[:first_calm]} >= troubled
    ipads = devices[("fabrikam", "Fabrikam iPads")]
    assert ("enrollment profiles", links.ADE_ENROLLMENT_PROFILE) in ipads.links
    assert ("troubleshoot", links.ADE_ENROLLMENT_TROUBLESHOOTING) in ipads.links
    macs = devices[("fabrikam", "Fabrikam Macs")]
    assert ("enrollment profiles", links.ADE_ENROLLMENT_PROFILE_MACOS) in macs.links
    assert [text for text, _ in devices[("contoso", "Contoso iOS")].links] == [
        "enrollment profiles"
    ]


def test_no_serial_number_is_shown(demo: Exporter) -> None:
    with urllib.request.urlopen(demo.base_url + "/", timeout=10) as response:
        page = response.read().decode()
    assert "Fabrikam iPads" in page
    # The demo's made-up serial numbers are DEMO and eight hexadecimal digits.
    assert not re.search(r"DEMO[0-9A-F]{8}", page)


def _png_size_and_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the raw (filtered) scanlines of a PNG, without an imaging library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat, offset = b"", 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            idat += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    return width, height, zlib.decompress(idat)


def _page(demo: Exporter, tmp: Path, query: str = "") -> tuple[str, TableParser]:
    status, html = http_get(demo.base_url + "/" + query)
    assert status == 200
    parser = TableParser()
    parser.feed(html)
    return html, parser


def rows_by_name(rows: list[Row]) -> dict[str, Row]:
    return {row.cells[2]: row for row in rows}


def _headline(html: str) -> str:
    start = html.index('<p id="headline">')
    return " ".join(html[start : html.index("</p>", start)].split())


def test_rows_without_data_come_first_shaded_and_counted(demo: Exporter, tmp_path: Path) -> None:
    html, dom = _page(demo, tmp_path)
    rows = dom.tables["credentials"]
    # The two down tenants' collectors (no data at all), then the APNs certificate northwind
    # never set up, then the credentials needing care; the healthy ones last.
    collectors = ("ade", "ade_devices", "vpp", "apns")
    down = len(collectors) * 2
    first = [(row.cells[0], row.cells[1]) for row in rows[: down + 1]]
    assert sorted(first[:down]) == sorted(
        (tenant, kind) for tenant in ("tailspin", "Adatum Corporation") for kind in collectors
    )
    assert all(row.classes == {"nodata"} for row in rows[:down])
    assert first[down] == ("northwind", "APNs certificate")
    assert rows[down].classes == {"attention"}
    credentials = [row for row in rows if len(row.cells) == 9]
    attention = [row for row in credentials if row.cells[7] != "—"]
    # Counted in the headline: the rows without data, the certificate not set up, and every
    # credential (and ADE token's devices) with a problem.
    notes = down + 1
    assert f"{notes + len(attention)} of {notes + len(credentials)} need attention" in (
        _headline(html)
    )
    # Every row with a problem is shaded: by expiry level, else as needing attention.
    for row in attention:
        assert row.classes & {"expired", "critical", "warning", "attention"}, row.cells
    assert rows_by_name(credentials)["Northwind Retail"].classes == {"attention"}  # state invalid
    assert not [row for row in credentials if row.cells[7] == "—" and row.classes]


def test_the_filter_and_problems_only(demo: Exporter, tmp_path: Path) -> None:
    html, dom = _page(demo, tmp_path, "?q=NORTHWIND")
    assert {row.cells[0] for row in dom.tables["credentials"]} == {"northwind"}
    assert [row.cells[0] for row in dom.tables["tenants"]] == ["northwind"]
    # 4 ADE and 3 VPP tokens, the APNs certificate it never set up, 2 tokens' devices
    assert "Showing 10 of " in _headline(html) and "1 of 8 tenants" in _headline(html)
    assert 'name="q" value="NORTHWIND"' in html
    # By tenant ID too, as the box offers: the tenant and all its rows.
    tenant_id = next(r.cells[2] for r in dom.tables["tenants"] if r.cells[0] == "northwind")
    _, by_id = _page(demo, tmp_path, f"?q={tenant_id.upper()}")
    assert len(by_id.tables["credentials"]) == len(dom.tables["credentials"])

    html, dom = _page(demo, tmp_path, "?problems=1")
    rows = [row for row in dom.tables["credentials"] if len(row.cells) == 9]
    assert rows and all(row.cells[7] != "—" for row in rows)
    assert not [row for row in rows if row.cells[0] in ("contoso", "woodgrove")]
    assert sorted(row.cells[0] for row in dom.tables["tenants"]) == [
        "Adatum Corporation",
        "tailspin",
    ]
    assert "checked" in html.split('name="problems"')[1].split(">")[0]

    # What is typed comes back escaped, never as markup.
    html, dom = _page(demo, tmp_path, "?q=%22%3E%3Cscript%3Ex%3C/script%3E")
    assert "<script>x" not in html
    assert "No row matches the filter." in html


# Row backgrounds of the page's stylesheet (exporter/status_page.py).
SHADES = {
    (0xFD, 0xE2, 0xE1): "red",  # expired, and no data
    (0xFF, 0xF0, 0xE0): "orange",  # critical
    (0xFF, 0xF8, 0xD6): "yellow",  # warning, and any other problem
}


def _shade_bands(shot: Path, x: int) -> list[str]:
    """The row shades down the column at `x`, consecutive pixels of one shade merged (white
    and the grey borders between rows are left out)."""
    from PIL import Image

    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        column = [SHADES.get(rgb.getpixel((x, y))) for y in range(rgb.height)]
    bands: list[str] = []
    for shade in column:
        if shade is not None and (not bands or bands[-1] != shade):
            bands.append(shade)
    return bands


def test_screenshot(demo: Exporter, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium on PATH (apt-get install chromium)")
    shot = tmp_path / "status-page.png"
    chromium(
        tmp_path / "profile", tmp_path / "chromium.log", f"--screenshot={shot}", demo.base_url + "/"
    )
    width, height, pixels = _png_size_and_pixels(shot.read_bytes())
    assert (width, height) == WINDOW
    # Not a blank page: a rendered table has many distinct byte values across its scanlines.
    assert len(set(pixels)) > 50
    # The colours are where they belong: down the first column, the two down tenants' rows
    # without data (red), northwind's missing APNs certificate (yellow), the two expired
    # credentials (red), the one expiring within 7 days (orange), then those within 30 days and
    # the other problems (yellow); nothing shaded after them (the healthy rows are white).
    assert _shade_bands(shot, 30) == ["red", "yellow", "red", "orange", "yellow"]
    if os.environ.get("UPDATE_STATUS_PAGE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)
