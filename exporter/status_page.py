"""The HTML status page at `/`: every tenant and every credential, for a person to read."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from html import escape
from typing import Final

from . import __version__
from .errors import PollError
from .kinds import CredentialKind
from .kinds.base import StatusRow
from .snapshot import StoreView, TenantState
from .thresholds import Thresholds
from .timetext import SECONDS_PER_DAY, age_text, date_text, datetime_text, days_until, span_text

_STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.up{color:#1a7f37;font-weight:600}.down{color:#c62828;font-weight:600}
tr.expired td{background:#fde2e1}tr.critical td{background:#fff0e0}
tr.warning td{background:#fff8d6}tr.nodata td{background:#fde2e1}tr.attention td{background:#fff8d6}
td.problem{color:#c62828;font-weight:600}
form{margin:1rem 0}input[type=search]{width:20rem;max-width:100%}
.num{text-align:right;font-variant-numeric:tabular-nums}.nowrap{white-space:nowrap}
footer{margin-top:2rem;color:#666;font-size:.8rem}
"""


@dataclass(frozen=True)
class _Assessed:
    """A credential row with what the page concludes about it at `now`."""

    tenant: str
    row: StatusRow
    days: float | None
    level: str  # "expired", "critical", "warning" or ""
    problems: tuple[str, ...]

    @property
    def needs_attention(self) -> bool:
        return bool(self.level or self.problems)


def _assess(tenant: str, row: StatusRow, now: float, thresholds: Thresholds) -> _Assessed:
    """What the page concludes of a row, by the tenant's own thresholds (as the alerts do)."""
    critical_days = thresholds.expiry_critical / SECONDS_PER_DAY
    warning_days = thresholds.expiry_warning / SECONDS_PER_DAY
    days = None if row.expires_at is None else days_until(row.expires_at, now)
    problems: list[str] = []
    level = ""
    if days is None and row.expires:
        # Never dropped: a credential Graph sent without its expiry date is still one to renew.
        problems.append("expiry unknown: Graph sent no expiry date")
    elif days is not None:
        if days <= 0:
            level = "expired"
            problems.append(f"expired {-days:.1f} days ago")
        elif days < critical_days:
            level = "critical"
            problems.append(f"expires in under {critical_days:g} days")
        elif days < warning_days:
            level = "warning"
            problems.append(f"expires in under {warning_days:g} days")
    if row.problem:
        problems.append(row.problem)
    if row.stale_after is not None:
        if row.last_sync_at is None:
            problems.append("never synced")
        elif now - row.last_sync_at > getattr(thresholds, row.stale_after):
            problems.append(f"no successful sync for {span_text(now - row.last_sync_at)}")
    return _Assessed(tenant, row, days, level, tuple(problems))


def _merged_errors(tenant: TenantState) -> dict[str, list[str]]:
    """Failed collectors grouped by their error text (one token failure fails them all)."""
    errors: dict[str, list[str]] = {}
    for name, state in tenant.collectors.items():
        if state.last_error is not None and not state.up:
            error: PollError = state.last_error
            errors.setdefault(f"{error.reason}: {error.message}", []).append(name)
    return errors


def _tenant_row(tenant: TenantState) -> str:
    if not tenant.polled:
        status = '<span class="down">pending</span>'
    elif tenant.up:
        status = '<span class="up">up</span>'
    else:
        status = '<span class="down">down</span>'
    kept = (
        ["served from kept state (an earlier process's last good records) until its first poll"]
        if tenant.restored
        else []
    )
    errors = (
        kept
        + [
            f"{escape(', '.join(names))}: {escape(text)}"
            for text, names in _merged_errors(tenant).items()
        ]
        + [
            f"{escape(name)}: {escape(note)}"
            for name, state in tenant.collectors.items()
            for note in state.notes
        ]
    )
    return (
        f"<tr><td>{escape(tenant.name)}</td><td>{status}</td>"
        f"<td>{escape(tenant.tenant_id)}</td><td>{escape(tenant.cloud)}</td>"
        f'<td class="nowrap">{datetime_text(tenant.last_success_at)}</td>'
        f"<td>{'<br>'.join(errors) or '—'}</td>"
        f"<td>{'GDAP discovery' if tenant.source == 'gdap' else 'config'}</td></tr>"
    )


def _credential_row(item: _Assessed, now: float) -> str:
    row = item.row
    days = "unknown" if item.days is None else f"{item.days:.1f}"
    expires = date_text(row.expires_at)
    if not row.expires:
        days = expires = "—"
    links = [f'<a href="{escape(row.renew_url)}" rel="noreferrer">{escape(row.renew_label)}</a>']
    if row.troubleshooting_url:
        links.append(
            f'<a href="{escape(row.troubleshooting_url)}" rel="noreferrer">troubleshoot</a>'
        )
    name = escape(row.name)
    if row.detail:
        name = f'<span title="{escape(row.detail)}">{name}</span>'
    synced = (
        "—"
        if row.last_sync_at is None and row.stale_after is None
        else age_text(row.last_sync_at, now)
    )
    problem = "; ".join(escape(p) for p in item.problems) or "—"
    # Shaded by severity: expired, critical, warning by expiry; any other problem "attention".
    css = item.level or ("attention" if item.problems else "")
    return (
        f'<tr class="{css}"><td>{escape(item.tenant)}</td><td>{escape(row.kind)}</td>'
        f'<td>{name}</td><td class="nowrap">{escape(row.apple_id) or "—"}</td>'
        f'<td class="num">{days}</td><td class="nowrap">{expires}</td>'
        f'<td class="nowrap">{synced}</td>'
        f'<td class="{"problem" if item.problems else ""}">{problem}</td>'
        f"<td>{' · '.join(links)}</td></tr>"
    )


@dataclass(frozen=True)
class _Note:
    """A row without a credential: a collector with no data, or a credential not set up."""

    tenant: str
    kind: str
    text: str
    level: str  # "nodata" (the tenant's data is missing) or "attention" (nothing configured)

    def html(self) -> str:
        return (
            f'<tr class="{self.level}"><td>{escape(self.tenant)}</td><td>{escape(self.kind)}</td>'
            f'<td colspan="7" class="problem">{escape(self.text)}</td></tr>'
        )

    def matches(self, query: str, tenant_id: str) -> bool:
        return query in f"{self.tenant}\n{tenant_id}\n{self.kind}\n{self.text}".casefold()


def _matches(item: _Assessed, query: str, tenant_id: str) -> bool:
    """A case-insensitive substring of what a person would search a row by."""
    row = item.row
    text = "\n".join((item.tenant, tenant_id, row.kind, row.name, row.apple_id, *item.problems))
    return query in text.casefold()


def _tenant_matches(tenant: TenantState, query: str) -> bool:
    return query in f"{tenant.name}\n{tenant.tenant_id}\n{tenant.source}".casefold()


def _tenant_has_problem(tenant: TenantState) -> bool:
    return not tenant.polled or not tenant.up or bool(_merged_errors(tenant))


def _filter_form(query: str, problems_only: bool) -> str:
    checked = " checked" if problems_only else ""
    return (
        '<form method="get" action="/" role="search">'
        f'<input type="search" name="q" value="{escape(query)}" '
        'placeholder="tenant, tenant ID, token, Apple ID or problem" aria-label="Filter"> '
        f'<label><input type="checkbox" name="problems" value="1"{checked}> only problems</label> '
        '<button type="submit">Filter</button> <a href="/">clear</a></form>'
    )


def page_pieces(
    view: StoreView,
    collectors: Mapping[str, CredentialKind],
    now: float,
    discovery: str | None = None,
    *,
    query: str = "",
    problems_only: bool = False,
) -> Iterator[str]:
    """The page, piece by piece (its head, then row by row). Every value from Graph or config
    is escaped; no secret is ever shown.

    Rows that need attention come first and are counted in the headline: a collector without
    data (a tenant that is down), a credential not set up, then credentials expired, expiring
    or with a problem, soonest expiry first, then ADE tokens whose devices wait without a
    profile or a default profile, or failed to enroll (they have no expiry); the healthy ones
    follow. `query` (`?q=`) keeps the rows containing it, case-insensitively; `problems_only`
    (`?problems=1`) keeps those that need attention. Filtering happens here, on the server:
    the page needs no script.
    """
    wanted = query.strip().casefold()
    tenants = [
        tenant
        for tenant in view.tenants
        if (not wanted or _tenant_matches(tenant, wanted))
        and (not problems_only or _tenant_has_problem(tenant))
    ]
    assessed: list[_Assessed] = []
    notes: list[_Note] = []
    for tenant in view.tenants:
        for name, state in tenant.collectors.items():
            collector = collectors.get(name)
            if collector is None:
                continue
            if state.records is None:
                if tenant.polled and state.last_error is not None:
                    error = state.last_error
                    text = f"no data: {error.reason}: {error.message}"
                    notes.append(_Note(tenant.name, name, text, "nodata"))
                continue
            rows = collector.status_rows(state.records, now)
            assessed.extend(_assess(tenant.name, row, now, tenant.thresholds) for row in rows)
            if not rows and collector.empty_note:
                notes.append(_Note(tenant.name, collector.title, collector.empty_note, "attention"))
    total = len(assessed) + len(notes)
    attention = len(notes) + sum(1 for item in assessed if item.needs_attention)
    if wanted:
        ids = {tenant.name: tenant.tenant_id for tenant in view.tenants}
        assessed = [item for item in assessed if _matches(item, wanted, ids[item.tenant])]
        notes = [note for note in notes if note.matches(wanted, ids[note.tenant])]
    if problems_only:
        assessed = [item for item in assessed if item.needs_attention]
    assessed.sort(
        key=lambda item: (
            not item.needs_attention,
            item.days if item.days is not None else float("inf"),
        )
    )
    shown = len(assessed) + len(notes)
    # Missing data first (it hides whatever it would show), then the credentials needing care.
    notes.sort(key=lambda note: note.level != "nodata")
    filtered = (
        f" Showing {shown} of {total} rows and {len(tenants)} of {len(view.tenants)} tenants."
        if wanted or problems_only
        else ""
    )
    yield f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="60">
<title>Intune Apple token exporter</title><style>{_STYLE}</style></head>
<body>
<h1>Intune Apple token exporter</h1>
<p id="headline">Apple credentials of every configured Intune tenant: {attention} of {total} need
attention. Those come first: missing data, then soonest expiry.{filtered}
<a href="/metrics">Metrics</a> · <a href="/-/ready">Readiness</a></p>
{f'<p id="discovery">{escape(discovery)}</p>' if discovery else ""}
{_filter_form(query, problems_only)}
<h2>Tenants</h2>
<table id="tenants"><thead><tr><th>Tenant</th><th>Status</th><th>Tenant ID</th><th>Cloud</th>
<th>Last successful poll</th><th>Last error</th><th>Source</th></tr></thead>
<tbody>"""
    yield from map(_tenant_row, tenants)
    yield """</tbody></table>
<h2>Apple credentials</h2>
<table id="credentials"><thead><tr><th>Tenant</th><th>Kind</th><th>Name</th><th>Apple ID</th>
<th>Days left</th><th>Expires</th><th>Last sync</th><th>Problem</th><th>Docs</th></tr>
</thead><tbody>"""
    if notes or assessed:
        yield from (note.html() for note in notes)
        yield from (_credential_row(item, now) for item in assessed)
    elif wanted or problems_only:
        yield '<tr><td colspan="9">No row matches the filter.</td></tr>'
    else:
        yield '<tr><td colspan="9">No data yet: the first poll has not finished.</td></tr>'
    yield f"""</tbody></table>
<footer>intune-apple-token-exporter {escape(__version__)} · rendered {datetime_text(now)}</footer>
</body></html>
"""
