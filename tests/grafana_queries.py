"""Read the bundled Grafana dashboards and turn their queries into plain PromQL.

Grafana is not available where the tests run, so the tests do its part: walk every panel (including
panels nested in rows), take each target's `expr`, and substitute the dashboard variables the way
Grafana's Prometheus data source does. The result can be checked offline (`promtool`) or run against
a real Prometheus (the end-to-end suite).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = REPO_ROOT / "grafana" / "dashboards"
PROVISIONING_DIR = REPO_ROOT / "grafana" / "provisioning"

OVERVIEW_UID = "intune-apple-tokens"
TENANT_DETAIL_UID = "intune-apple-tenant"
EXPORTER_HEALTH_UID = "intune-exporter-health"

# Grafana's built-in interval variables, with values that suit a Prometheus scraping every few
# seconds (the e2e setup scrapes every second). Callers override them as needed.
BUILTIN_VARIABLES: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# Variable values for running the dashboards against `--demo`. `.+` is the dashboards' `allValue`,
# i.e. what Grafana sends when "All" is selected. The tenant detail page is checked with fabrikam,
# the demo tenant that holds every kind of credential.
DEMO_VARIABLES: dict[str, dict[str, str]] = {
    OVERVIEW_UID: {"datasource": "prometheus", "job": ".+", "tenant": ".+"},
    TENANT_DETAIL_UID: {"datasource": "prometheus", "job": ".+", "tenant": "fabrikam"},
    EXPORTER_HEALTH_UID: {"datasource": "prometheus", "job": ".+", "tenant": ".+"},
}

# Panels that legitimately show nothing with the demo data (and DEMO_VARIABLES); every other panel
# must return at least one series. Keyed by (dashboard uid, panel title); the reason is for humans.
NO_DEMO_DATA: dict[tuple[str, str], str] = {
    (EXPORTER_HEALTH_UID, "Throttling: HTTP 429 per hour"): "the demo never answers 429",
}

# Grafana's own template syntax: $var, [[var:fmt]], ${var}, ${var.field}, ${var:fmt}.
_VARIABLE_RE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}"
)
# Characters Grafana's Prometheus data source escapes in multi-value regex interpolation.
_REGEX_SPECIAL_RE = re.compile(r"([\\^$*+?.()|{}\[\]])")

VariableValue = str | Sequence[str]


class UnknownVariableError(KeyError):
    """A query references a variable that neither the dashboard nor the caller defines."""


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel, with its variables substituted."""

    dashboard_uid: str
    panel_id: int
    panel_title: str
    panel_type: str
    ref_id: str
    expr: str
    instant: bool
    expect_data: bool


@dataclass(frozen=True)
class VariableQuery:
    """A `label_values(selector, label)` template variable, with its variables substituted."""

    dashboard_uid: str
    name: str
    query: str
    selector: str
    label: str

    def as_promql(self) -> str:
        """An instant query that returns one series per value the variable would offer."""
        return f"group by ({self.label}) ({self.selector})"


def load_dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, dict[str, Any]]:
    """Every dashboard JSON in `directory`, keyed by uid."""
    dashboards: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        uid = dashboard["uid"]
        if uid in dashboards:
            raise ValueError(f"{path.name}: uid {uid!r} used twice")
        dashboards[uid] = dashboard
    return dashboards


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, followed by the panels a (collapsed) row holds."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _format_value(value: VariableValue, fmt: str | None, name: str) -> str:
    if isinstance(value, str):
        if fmt == "queryparam":
            return f"var-{name}={value}"
        return value
    values = list(value)
    if fmt in (None, "regex"):
        escaped = [_REGEX_SPECIAL_RE.sub(r"\\\1", v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "pipe":
        return "|".join(values)
    if fmt in ("csv", "raw", "text"):
        return ",".join(values)
    if fmt == "queryparam":
        return "&".join(f"var-{name}={v}" for v in values)
    raise ValueError(f"unsupported variable format {fmt!r} for ${name}")


def substitute(text: str, variables: Mapping[str, VariableValue]) -> str:
    """Replace Grafana variables in `text` as Grafana would.

    A string value is inserted as it is (pass `.+` for "All"); a list is formatted per the
    `:format` suffix, by default as Grafana's escaped regex alternation. `$1`-style references
    (label_replace capture groups) are left alone. Any other unknown variable raises
    UnknownVariableError, so a dashboard cannot reference a variable that does not exist.
    """
    merged: dict[str, VariableValue] = {**BUILTIN_VARIABLES, **variables}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(6)
        if match.group(5):
            raise ValueError(f"field access ${{{name}.{match.group(5)}}} is not supported")
        if name.isdigit():
            return match.group(0)
        if name not in merged:
            raise UnknownVariableError(name)
        return _format_value(merged[name], fmt, name)

    return _VARIABLE_RE.sub(replace, text)


def _variables_for(dashboard: Mapping[str, Any], variables: Mapping[str, VariableValue]) -> None:
    defined = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    missing = defined - set(variables)
    if missing:
        raise UnknownVariableError(
            f"{dashboard['uid']}: no value given for dashboard variables {sorted(missing)}"
        )


def iter_panel_queries(
    dashboard: Mapping[str, Any], variables: Mapping[str, VariableValue]
) -> list[PanelQuery]:
    """Every Prometheus target of every panel of `dashboard`, variables substituted.

    `variables` must give a value for every dashboard variable; Grafana's interval variables
    default to BUILTIN_VARIABLES. `expect_data` is False only for panels in NO_DEMO_DATA.
    """
    _variables_for(dashboard, variables)
    uid = dashboard["uid"]
    queries: list[PanelQuery] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("hide"):
                continue
            expr = target.get("expr")
            if not expr:
                raise ValueError(f"{uid} panel {panel.get('id')}: target without expr")
            queries.append(
                PanelQuery(
                    dashboard_uid=uid,
                    panel_id=panel["id"],
                    panel_title=panel.get("title", ""),
                    panel_type=panel["type"],
                    ref_id=target["refId"],
                    expr=substitute(expr, variables),
                    instant=bool(target.get("instant")) and not target.get("range"),
                    expect_data=(uid, panel.get("title", "")) not in NO_DEMO_DATA,
                )
            )
    return queries


_LABEL_VALUES_RE = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.DOTALL)


def iter_variable_queries(
    dashboard: Mapping[str, Any], variables: Mapping[str, VariableValue]
) -> list[VariableQuery]:
    """The `label_values(selector, label)` query variables of `dashboard`, substituted."""
    _variables_for(dashboard, variables)
    out: list[VariableQuery] = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]
        text = query["query"] if isinstance(query, Mapping) else query
        match = _LABEL_VALUES_RE.match(text)
        if not match:
            raise ValueError(f"{dashboard['uid']} ${var['name']}: not label_values(...): {text}")
        out.append(
            VariableQuery(
                dashboard_uid=dashboard["uid"],
                name=var["name"],
                query=substitute(text, variables),
                selector=substitute(match.group(1).strip(), variables),
                label=match.group(2),
            )
        )
    return out


def all_demo_queries(
    directory: Path = DASHBOARD_DIR,
) -> tuple[list[PanelQuery], list[VariableQuery]]:
    """Panel and variable queries of every bundled dashboard with DEMO_VARIABLES."""
    panels: list[PanelQuery] = []
    variables: list[VariableQuery] = []
    for uid, dashboard in load_dashboards(directory).items():
        panels += iter_panel_queries(dashboard, DEMO_VARIABLES[uid])
        variables += iter_variable_queries(dashboard, DEMO_VARIABLES[uid])
    return panels, variables


_PROMQL_STRING_RE = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_PROMQL_GROUPING_RE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
     "offset", "inf", "nan",
     # aggregation operators, which may be followed by `by (...)` rather than by their argument
     "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
     "topk", "quantile"}
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and labels excluded)."""
    text = _PROMQL_STRING_RE.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery selectors
    text = _PROMQL_GROUPING_RE.sub(r"\1", text)  # label lists of by/on/group_left/...
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # function or aggregation
        if match.group(0).lower() not in _PROMQL_KEYWORDS:
            names.add(match.group(0))
    return names
