"""The HTML status page at `/`: every tenant and every credential, for a person to read."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from html import escape
from typing import Final

from . import __version__
from .collectors.base import SECONDS_PER_DAY, CredentialCollector, StatusRow
from .snapshot import StoreView, TenantState

WARNING_DAYS: Final = 30.0
CRITICAL_DAYS: Final = 7.0

_STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.up{color:#1a7f37;font-weight:600}.down{color:#c62828;font-weight:600}
tr.expired td{background:#fde2e1}tr.critical td{background:#fff0e0}
tr.warning td{background:#fff8d6}tr.problem td.problem{color:#c62828;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}
footer{margin-top:2rem;color:#666;font-size:.8rem}
"""


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _age(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    seconds = max(0.0, now - timestamp)
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * SECONDS_PER_DAY:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / SECONDS_PER_DAY:.1f} d ago"


def _row_class(row: StatusRow, now: float) -> str:
    classes = []
    if row.expires_at is not None:
        days = (row.expires_at - now) / SECONDS_PER_DAY
        if days <= 0:
            classes.append("expired")
        elif days < CRITICAL_DAYS:
            classes.append("critical")
        elif days < WARNING_DAYS:
            classes.append("warning")
    if row.problem:
        classes.append("problem")
    return " ".join(classes)


def _tenant_row(tenant: TenantState) -> str:
    if not tenant.polled:
        status = '<span class="down">pending</span>'
    elif tenant.up:
        status = '<span class="up">up</span>'
    else:
        status = '<span class="down">down</span>'
    errors = [
        f"{escape(name)}: {escape(state.last_error.reason)}: {escape(state.last_error.message)}"
        for name, state in tenant.collectors.items()
        if state.last_error is not None and not state.up
    ]
    return (
        f"<tr><td>{escape(tenant.name)}</td><td>{status}</td>"
        f"<td>{escape(tenant.tenant_id)}</td><td>{escape(tenant.cloud)}</td>"
        f"<td>{_when(tenant.last_success_at)}</td>"
        f"<td>{'<br>'.join(errors) or '—'}</td></tr>"
    )


def _credential_row(tenant: str, row: StatusRow, now: float) -> str:
    if row.expires_at is None:
        days = "unknown"
    else:
        days = f"{(row.expires_at - now) / SECONDS_PER_DAY:.1f}"
    links = [f'<a href="{escape(row.renew_url)}" rel="noreferrer">renew</a>']
    if row.troubleshooting_url:
        links.append(
            f'<a href="{escape(row.troubleshooting_url)}" rel="noreferrer">troubleshoot</a>'
        )
    return (
        f'<tr class="{_row_class(row, now)}"><td>{escape(tenant)}</td><td>{escape(row.kind)}</td>'
        f"<td>{escape(row.name)}</td><td>{escape(row.apple_id) or '—'}</td>"
        f'<td class="num">{days}</td><td>{_when(row.expires_at)}</td>'
        f"<td>{_age(row.last_sync_at, now) if row.kind != 'APNs certificate' else '—'}</td>"
        f'<td class="problem">{escape(row.problem or "—")}</td>'
        f"<td>{' · '.join(links)}</td></tr>"
    )


def render_status_page(
    view: StoreView, collectors: Mapping[str, CredentialCollector], now: float
) -> str:
    """The whole page. Every value from Graph or config is escaped; no secret is ever shown."""
    tenant_rows = "".join(_tenant_row(tenant) for tenant in view.tenants)
    rows: list[tuple[float, str]] = []
    for tenant in view.tenants:
        for name, state in tenant.collectors.items():
            collector = collectors.get(name)
            if collector is None or state.records is None:
                continue
            for row in collector.status_rows(state.records):
                order = row.expires_at if row.expires_at is not None else float("inf")
                rows.append((order, _credential_row(tenant.name, row, now)))
        apns = tenant.collectors.get("apns")
        if apns is not None and apns.records == ():
            rows.append(
                (
                    float("inf"),
                    f"<tr><td>{escape(tenant.name)}</td><td>APNs certificate</td>"
                    '<td colspan="7">not configured in this tenant</td></tr>',
                )
            )
    rows.sort(key=lambda pair: pair[0])
    credential_rows = "".join(html for _, html in rows) or (
        '<tr><td colspan="9">No data yet: the first poll has not finished.</td></tr>'
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="60">
<title>Intune Apple token exporter</title><style>{_STYLE}</style></head>
<body>
<h1>Intune Apple token exporter</h1>
<p>Apple credentials of every configured Intune tenant, soonest expiry first.
<a href="/metrics">Metrics</a> · <a href="/-/ready">Readiness</a></p>
<h2>Tenants</h2>
<table id="tenants"><thead><tr><th>Tenant</th><th>Status</th><th>Tenant ID</th><th>Cloud</th>
<th>Last successful poll</th><th>Last error</th></tr></thead>
<tbody>{tenant_rows}</tbody></table>
<h2>Apple credentials</h2>
<table id="credentials"><thead><tr><th>Tenant</th><th>Kind</th><th>Name</th><th>Apple ID</th>
<th>Days left</th><th>Expires</th><th>Last successful sync</th><th>Problem</th><th>Docs</th></tr>
</thead><tbody>{credential_rows}</tbody></table>
<footer>intune-apple-token-exporter {escape(__version__)} · rendered {_when(now)}</footer>
</body></html>
"""
