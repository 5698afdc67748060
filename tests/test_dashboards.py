"""The Grafana dashboards and provisioning files: structure, queries and what the queries return.

Grafana itself is not available here, so the queries are checked with Prometheus' own tools:
`promtool check rules` parses every substituted expression, and `promtool test rules` evaluates
them on series shaped like the `--demo` data and compares the results.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import links
from exporter.kinds.vpp import KNOWN_STATES
from tests.grafana_queries import (
    DASHBOARD_DIR,
    DEMO_VARIABLES,
    EXPORTER_HEALTH_UID,
    NO_DEMO_DATA,
    OVERVIEW_UID,
    PROVISIONING_DIR,
    REPO_ROOT,
    TENANT_DETAIL_UID,
    PanelQuery,
    UnknownVariableError,
    all_demo_queries,
    iter_panel_queries,
    iter_panels,
    iter_variable_queries,
    load_dashboards,
    metric_names,
    substitute,
)

DASHBOARDS = load_dashboards()
UIDS = [OVERVIEW_UID, TENANT_DETAIL_UID, EXPORTER_HEALTH_UID]
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
VISUAL_TYPES = {"stat", "table", "timeseries", "bargauge", "gauge", "state-timeline"}
PROMTOOL = shutil.which("promtool") or ""
needs_promtool = pytest.mark.skipif(not PROMTOOL, reason="promtool (Prometheus) is not installed")


def panel_by_title(uid: str, title: str) -> dict[str, Any]:
    matches = [p for p in iter_panels(DASHBOARDS[uid]) if p.get("title") == title]
    assert len(matches) == 1, f"{uid}: {len(matches)} panels titled {title!r}"
    return matches[0]


def variable(uid: str, name: str) -> dict[str, Any]:
    variables: list[dict[str, Any]] = DASHBOARDS[uid]["templating"]["list"]
    (var,) = [v for v in variables if v["name"] == name]
    return var


def own_variables(uid: str) -> dict[str, str]:
    """A value for exactly the variables the dashboard defines, nothing more."""
    return {v["name"]: "x" for v in DASHBOARDS[uid]["templating"]["list"]}


def provisioning(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((PROVISIONING_DIR / name).read_text(encoding="utf-8"))
    return data


# --- the dashboards as files -------------------------------------------------------------------


def test_three_dashboards_with_the_fixed_uids() -> None:
    files = {p.name: json.loads(p.read_text())["uid"] for p in DASHBOARD_DIR.glob("*.json")}
    assert files == {
        "apple-tokens-overview.json": OVERVIEW_UID,
        "tenant-detail.json": TENANT_DETAIL_UID,
        "exporter-health.json": EXPORTER_HEALTH_UID,
    }


@pytest.mark.parametrize("uid", UIDS)
def test_dashboard_metadata(uid: str) -> None:
    dashboard = DASHBOARDS[uid]
    assert "intune" in dashboard["tags"]
    assert dashboard["title"].startswith("Intune Apple tokens")
    # A fixed numeric id would clash with dashboards already in the target Grafana.
    assert dashboard["id"] is None
    assert isinstance(dashboard["schemaVersion"], int)


@pytest.mark.parametrize("uid", UIDS)
def test_datasource_variable_defaults_to_the_provisioned_prometheus(uid: str) -> None:
    first = DASHBOARDS[uid]["templating"]["list"][0]
    assert first["name"] == "datasource"
    assert first["type"] == "datasource"
    assert first["query"] == "prometheus"
    (provisioned,) = provisioning("datasources/prometheus.yaml")["datasources"]
    assert first["current"]["value"] == provisioned["uid"]


@pytest.mark.parametrize("uid", UIDS)
def test_ui_import_input_is_declared_but_never_referenced(uid: str) -> None:
    """`__inputs` lets the UI import ask for a Prometheus; nothing depends on the answer, so a
    provisioned copy (where Grafana substitutes nothing) has no unresolved `${DS_PROMETHEUS}`."""
    dashboard = DASHBOARDS[uid]
    assert dashboard["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "Prometheus that scrapes intune-apple-token-exporter",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    rest = json.dumps({k: v for k, v in dashboard.items() if k != "__inputs"})
    assert "DS_PROMETHEUS" not in rest
    assert "${DS_" not in rest


@pytest.mark.parametrize("uid", UIDS)
def test_every_query_goes_through_the_datasource_variable(uid: str) -> None:
    dashboard = DASHBOARDS[uid]
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DS_REF, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS_REF, (panel["title"], target["refId"])
    for var in dashboard["templating"]["list"][1:]:
        assert var["datasource"] == DS_REF, var["name"]


@pytest.mark.parametrize("uid", UIDS)
def test_queries_reference_only_defined_variables(uid: str) -> None:
    queries = iter_panel_queries(DASHBOARDS[uid], own_variables(uid))
    assert queries
    iter_variable_queries(DASHBOARDS[uid], own_variables(uid))
    # Panel and data links may use the dashboard's variables as well.
    for panel in iter_panels(DASHBOARDS[uid]):
        for link in _all_links(panel):
            url = re.sub(r"\$\{__[a-z_.]+\}", "", link["url"])  # Grafana's built-in link values
            substitute(url, {**own_variables(uid), "datasource": "x"})


def _all_links(panel: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(panel.get("links", []))
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "links":
                found += prop["value"]
    return found


def test_overview_variables() -> None:
    for name in ("job", "tenant"):
        var = variable(OVERVIEW_UID, name)
        assert var["type"] == "query"
        assert var["multi"] is True
        assert var["includeAll"] is True
        assert var["allValue"] == ".+"
    assert variable(OVERVIEW_UID, "tenant")["definition"] == (
        'label_values(intune_tenant_info{job=~"$job"}, tenant)'
    )


def test_tenant_detail_has_one_tenant_and_links_back_to_the_overview() -> None:
    tenant = variable(TENANT_DETAIL_UID, "tenant")
    assert tenant["multi"] is False
    assert tenant["includeAll"] is False
    urls = [link.get("url", "") for link in DASHBOARDS[TENANT_DETAIL_UID]["links"]]
    assert any(url.startswith(f"/d/{OVERVIEW_UID}/") for url in urls)
    # And every query of the page is restricted to the selected tenant.
    for query in iter_panel_queries(
        DASHBOARDS[TENANT_DETAIL_UID], own_variables(TENANT_DETAIL_UID)
    ):
        for selector in re.findall(r"intune_\w+\{[^}]*\}", query.expr):
            assert 'tenant=~"x"' in selector, (query.panel_title, selector)


def test_tenant_column_links_to_the_tenant_detail_page() -> None:
    for uid, title in ((OVERVIEW_UID, "Apple credentials"), (EXPORTER_HEALTH_UID, "Tenants")):
        panel = panel_by_title(uid, title)
        tenant_links = [
            link
            for o in panel["fieldConfig"]["overrides"]
            if o["matcher"]["options"] == "Tenant"
            for p in o["properties"]
            if p["id"] == "links"
            for link in p["value"]
        ]
        assert len(tenant_links) == 1
        assert tenant_links[0]["url"].startswith(
            f"/d/{TENANT_DETAIL_UID}/intune-apple-tenant-detail?var-tenant=${{__value.raw}}"
        )


# --- layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("uid", UIDS)
def test_panel_ids_are_unique(uid: str) -> None:
    ids = [panel["id"] for panel in iter_panels(DASHBOARDS[uid])]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("uid", UIDS)
def test_panels_fit_the_grid_and_do_not_overlap(uid: str) -> None:
    panels = list(iter_panels(DASHBOARDS[uid]))
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["w"] > 0, panel["title"]
        assert pos["h"] > 0, panel["title"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        assert pos["y"] >= 0, panel["title"]
    for a, b in itertools.combinations(panels, 2):
        pa, pb = a["gridPos"], b["gridPos"]
        overlap_x = pa["x"] < pb["x"] + pb["w"] and pb["x"] < pa["x"] + pa["w"]
        overlap_y = pa["y"] < pb["y"] + pb["h"] and pb["y"] < pa["y"] + pa["h"]
        assert not (overlap_x and overlap_y), (a["title"], b["title"])


@pytest.mark.parametrize("uid", UIDS)
def test_units_and_thresholds_are_set(uid: str) -> None:
    checked = 0
    for panel in iter_panels(DASHBOARDS[uid]):
        if panel["type"] not in VISUAL_TYPES:
            continue
        checked += 1
        defaults = panel["fieldConfig"]["defaults"]
        assert isinstance(defaults["unit"], str), panel["title"]
        assert defaults["unit"], panel["title"]
        _assert_thresholds(defaults["thresholds"], panel["title"])
        for override in panel["fieldConfig"]["overrides"]:
            for prop in override["properties"]:
                if prop["id"] == "thresholds":
                    _assert_thresholds(prop["value"], panel["title"])
    assert checked == len([p for p in iter_panels(DASHBOARDS[uid]) if p["type"] != "row"])


def _assert_thresholds(thresholds: dict[str, Any], title: str) -> None:
    steps = thresholds["steps"]
    assert thresholds["mode"] == "absolute", title
    assert steps, title
    assert steps[0]["value"] is None, title
    values = [s["value"] for s in steps[1:]]
    assert values == sorted(values), title


# --- contents ----------------------------------------------------------------------------------


def test_overview_stat_panels() -> None:
    stats = [p["title"] for p in iter_panels(DASHBOARDS[OVERVIEW_UID]) if p["type"] == "stat"]
    assert stats == [
        "Expiring soon",
        "Expiring very soon",
        "Expired",
        "Sync error or invalid state",
        "Tenants failing to poll",
        "Devices without a profile",
        "Failed enrollments",
    ]


def test_overview_credentials_table() -> None:
    table = panel_by_title(OVERVIEW_UID, "Apple credentials")
    assert all(t["instant"] and t["format"] == "table" for t in table["targets"])
    organize = next(t for t in table["transformations"] if t["id"] == "organize")["options"]
    columns = sorted(organize["renameByName"].values(), key=lambda c: _column_index(organize, c))
    assert columns == [
        "Tenant",
        "Kind",
        "Name",
        "Apple ID",
        "Days left",
        "Last sync",
        "Error code",
        "State",
        "Renew",
    ]
    assert table["options"]["sortBy"] == [{"displayName": "Days left", "desc": False}]
    props = _override_properties(table, "Days left")
    steps = props["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 7, 30]
    assert steps[0]["color"] == "red"
    assert steps[-1]["color"] == "green"
    assert props["custom.cellOptions"]["type"] == "color-background"
    assert _override_properties(table, "Last sync")["unit"] == "s"
    renew_column = _override_properties(table, "Renew")
    assert renew_column["links"][0]["url"] == "${__value.raw}"
    assert renew_column["mappings"][0]["options"]["result"]["text"] == "Renew"
    # Each kind's renewal page is attached as the renew_url label of its rows.
    days_expr = table["targets"][0]["expr"]
    for kind, url in (
        ("ADE", links.ADE_RENEW),
        ("VPP", links.VPP_RENEW),
        ("APNs", links.APNS_RENEW),
    ):
        assert f'"kind", "{kind}", "", ""), "renew_url", "{url}", "", "")' in days_expr


def _column_index(organize: dict[str, Any], display: str) -> int:
    original = next(k for k, v in organize["renameByName"].items() if v == display)
    index: int = organize["indexByName"][original]
    return index


def _override_properties(panel: dict[str, Any], name: str) -> dict[str, Any]:
    (override,) = [o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == name]
    return {p["id"]: p["value"] for p in override["properties"]}


def test_exporter_health_covers_the_issue() -> None:
    exprs: dict[str, str] = {}
    for q in iter_panel_queries(
        DASHBOARDS[EXPORTER_HEALTH_UID], own_variables(EXPORTER_HEALTH_UID)
    ):
        exprs[q.panel_title] = exprs.get(q.panel_title, "") + q.expr
    assert "intune_tenant_polls_total" in exprs["Polls per tenant (per hour)"]
    assert "sum by (reason)" in exprs["Poll errors by reason (per hour)"]
    assert (
        "sum by (code) (rate(intune_graph_requests_total"
        in exprs["Graph requests by status code (per hour)"]
    )
    assert 'code="429"' in exprs["Throttling: HTTP 429 per hour"]
    assert "intune_tenant_poll_duration_seconds" in exprs["Poll duration"]
    assert (
        "time() - max by (tenant) (intune_tenant_last_successful_poll_timestamp_seconds"
        in (exprs["Time since last successful poll"])
    )
    assert "intune_exporter_build_info" in exprs["Exporter version"]
    assert "intune_exporter_shard_info" in exprs["Tenants per shard"]


def test_every_metric_is_one_the_exporter_exposes() -> None:
    from exporter.metrics import metric_specs

    exposed = {spec.name for spec in metric_specs()}
    panel_queries, variable_queries = all_demo_queries()
    for query in panel_queries:
        used = metric_names(query.expr)
        assert used, (query.dashboard_uid, query.panel_title)  # the parser found something
        assert used <= exposed, (query.dashboard_uid, query.panel_title, used - exposed)
    for var in variable_queries:
        assert metric_names(var.selector) <= exposed, var


@pytest.mark.parametrize("uid", UIDS)
def test_every_url_is_a_known_microsoft_page(uid: str) -> None:
    text = (DASHBOARD_DIR / _file_of(uid)).read_text(encoding="utf-8")
    urls = set(re.findall(r"https?://[^\s\"'\\]+", text))
    assert urls <= set(links.ALL), urls - set(links.ALL)
    if uid != EXPORTER_HEALTH_UID:
        assert {links.ADE_RENEW, links.VPP_RENEW, links.APNS_RENEW} <= urls


def _file_of(uid: str) -> str:
    return next(
        p.name for p in DASHBOARD_DIR.glob("*.json") if json.loads(p.read_text())["uid"] == uid
    )


def test_no_demo_data_entries_name_existing_panels() -> None:
    for uid, title in NO_DEMO_DATA:
        panel_by_title(uid, title)


# --- the substitution helper -------------------------------------------------------------------


def test_substitute_formats_like_grafana() -> None:
    variables = {"tenant": ["a.b", "c"], "job": "j", "datasource": "ds"}
    assert substitute('x{tenant=~"$tenant"}', variables) == r'x{tenant=~"(a\.b|c)"}'
    assert substitute("${tenant:pipe} ${tenant:csv} [[job]]", variables) == "a.b|c a.b,c j"
    assert substitute("${tenant:queryparam}&${job:queryparam}", variables) == (
        "var-tenant=a.b&var-tenant=c&var-job=j"
    )
    assert substitute("rate(x[$__rate_interval]) $__range_s", {"__rate_interval": "5m"}) == (
        "rate(x[5m]) 3600"
    )
    # label_replace capture groups are not variables.
    assert substitute('label_replace(x, "a", "$1", "b", "(.*)")', {}) == (
        'label_replace(x, "a", "$1", "b", "(.*)")'
    )
    with pytest.raises(UnknownVariableError):
        substitute('x{a=~"$missing"}', variables)


def test_iter_panel_queries_walks_rows_and_requires_every_variable() -> None:
    dashboard = {
        "uid": "u",
        "templating": {"list": [{"name": "tenant", "type": "custom"}]},
        "panels": [
            {
                "id": 1,
                "type": "row",
                "title": "r",
                "panels": [
                    {
                        "id": 2,
                        "type": "stat",
                        "title": "inner",
                        "targets": [{"refId": "A", "expr": 'up{t="$tenant"}', "instant": True}],
                    },
                ],
            },
            {
                "id": 3,
                "type": "timeseries",
                "title": "outer",
                "targets": [
                    {"refId": "A", "expr": "rate(x[$__rate_interval])", "range": True},
                    {"refId": "B", "expr": "hidden", "hide": True},
                ],
            },
        ],
    }
    queries = iter_panel_queries(dashboard, {"tenant": "t1"})
    assert queries == [
        PanelQuery("u", 2, "inner", "stat", "A", 'up{t="t1"}', instant=True, expect_data=True),
        PanelQuery(
            "u", 3, "outer", "timeseries", "A", "rate(x[1m])", instant=False, expect_data=True
        ),
    ]
    with pytest.raises(UnknownVariableError):
        iter_panel_queries(dashboard, {})


def test_variable_queries_become_promql() -> None:
    queries = iter_variable_queries(DASHBOARDS[OVERVIEW_UID], DEMO_VARIABLES[OVERVIEW_UID])
    assert [(q.name, q.as_promql()) for q in queries] == [
        ("job", "group by (job) (intune_exporter_build_info)"),
        ("tenant", 'group by (tenant) (intune_tenant_info{job=~".+"})'),
    ]


def test_metric_names_skips_functions_labels_and_strings() -> None:
    expr = (
        'count(group by (tenant, token_id) (a_total{x="y"} > 0 or b:c)) or vector(0) '
        '* on (job) group_left (apple_id) label_replace(d[5m] offset 1h, "e", "f", "", "") '
        "+ sum by (tenant) (rate(g[1m])) > bool 1e3"
    )
    assert metric_names(expr) == {"a_total", "b:c", "d", "g"}


# --- provisioning ------------------------------------------------------------------------------


def test_dashboard_provisioning_points_at_the_dashboards() -> None:
    config = provisioning("dashboards/intune.yaml")
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "Intune"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/intune"
    assert provider["options"]["foldersFromFilesStructure"] is False


def test_compose_mounts_what_provisioning_expects() -> None:
    compose_file = REPO_ROOT / "docker-compose.yml"
    if not compose_file.exists():
        pytest.skip("docker-compose.yml not written yet")
    compose = yaml.safe_load(compose_file.read_text(encoding="utf-8"))
    grafana = next(s for s in compose["services"].values() if "grafana" in str(s.get("image", "")))
    volumes = [str(v) for v in grafana.get("volumes", [])]
    assert any(
        v.startswith("./grafana/dashboards:/var/lib/grafana/dashboards/intune") for v in volumes
    )
    assert any(v.startswith("./grafana/provisioning:/etc/grafana/provisioning") for v in volumes)


def test_datasource_provisioning() -> None:
    config = provisioning("datasources/prometheus.yaml")
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus"
    assert source["access"] == "proxy"
    assert source["isDefault"] is True
    assert source["url"].startswith("http")


# --- the queries, evaluated by Prometheus' own engine ------------------------------------------


def _recording_rules(queries: list[PanelQuery], extra: list[tuple[str, str]]) -> dict[str, Any]:
    rules = [
        {
            "record": f"dashboard:{q.dashboard_uid.replace('-', '_')}:panel{q.panel_id}_{q.ref_id}",
            "expr": q.expr,
        }
        for q in queries
    ] + [{"record": name, "expr": expr} for name, expr in extra]
    return {"groups": [{"name": "dashboards", "rules": rules}]}


@needs_promtool
def test_promtool_parses_every_query(tmp_path: Path) -> None:
    panel_queries, variable_queries = all_demo_queries()
    assert len(panel_queries) >= 40
    extra = [
        (f"variable:{v.dashboard_uid.replace('-', '_')}:{v.name}", v.as_promql())
        for v in variable_queries
    ]
    rule_file = tmp_path / "dashboards.rules.yaml"
    rule_file.write_text(yaml.safe_dump(_recording_rules(panel_queries, extra)))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(rule_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(panel_queries) + len(variable_queries)} rules found" in result.stdout


# Series shaped like `--demo` (exporter/demo.py) as the exporter exposes them, so that the
# queries' results can be asserted exactly without starting anything.
JOB_LABELS = {"job": "intune-apple-token-exporter", "instance": "127.0.0.1:9893"}
VPP_STATES = KNOWN_STATES
HOUR, DAY = 3600, 86400
CONSTANT, RISING = "{}x400", "0+{}x400"  # 400 samples, 15 s apart: 100 minutes of data

# tenant, token name, days left, lastSyncErrorCode, last successful sync age (None: never)
ADE_TOKENS = [
    ("contoso", "Contoso iOS", 200, 0, 6 * HOUR),
    ("fabrikam", "Fabrikam iPads", 20, 0, 6 * HOUR),
    ("fabrikam", "Fabrikam Macs", 5, 0, 6 * HOUR),
    ("northwind", "Northwind Shared", -10, 0, 11 * DAY),
    ("northwind", "Northwind School", 150, 3, 6 * HOUR),
    ("northwind", "Northwind Loaners", 180, 0, 3 * DAY),
    ("northwind", "Northwind Spare", 300, 0, None),
] + [("woodgrove", f"Woodgrove Branch {n:02d}", 100 + 3 * n, 0, 6 * HOUR) for n in range(1, 46)]
# tenant, token name, days left, state, lastSyncStatus failed
VPP_TOKENS = [
    ("contoso", "Contoso Apps", 300, "valid", False),
    ("fabrikam", "Fabrikam Education", -3, "expired", False),
    ("northwind", "Northwind Retail", 90, "invalid", False),
    ("northwind", "Northwind Kiosk", 120, "assignedToExternalMDM", False),
    ("northwind", "Northwind Field", 200, "valid", True),
    ("woodgrove", "Woodgrove Apps", 280, "valid", False),
]
APNS_DAYS = {"contoso": 250, "fabrikam": 12, "woodgrove": 300}  # northwind has none
DEVICE_STATES = ("unknown", "enrolled", "pendingReset", "failed", "notContacted", "blocked")
# tenant, token name, platform, {state: devices}, (devices without a profile, oldest wait),
# default profile of the platform (None: none)
ADE_DEVICES = [
    ("contoso", "Contoso iOS", "ios", {"enrolled": 120}, (0, None), "Contoso iPhone and iPad"),
    (
        "fabrikam",
        "Fabrikam iPads",
        "ios",
        {"enrolled": 2540, "notContacted": 44, "failed": 4},
        (14, 3 * DAY + 5 * HOUR),
        "Fabrikam iPad",
    ),
    (
        "fabrikam",
        "Fabrikam Macs",
        "macos",
        {"enrolled": 42, "notContacted": 6},
        (6, 5 * HOUR),
        None,
    ),
    (
        "northwind",
        "Northwind Shared",
        "ios",
        {"enrolled": 180, "notContacted": 25},
        (25, 9 * DAY),
        "Northwind Shared iPad",
    ),
    (
        "northwind",
        "Northwind School",
        "ios",
        {"enrolled": 300, "notContacted": 10},
        (0, None),
        None,
    ),
]
TENANTS = ["contoso", "fabrikam", "northwind", "woodgrove", "tailspin"]  # tailspin: auth fails
THRESHOLD_DAYS = {
    "*": {"expiry_warning": 30, "expiry_critical": 7},
    "contoso": {"expiry_warning": 210, "expiry_critical": 7},
}


def _token_id(kind: str, name: str) -> str:
    return f"{kind}-{name.lower().replace(' ', '-')}"


def _series(metric: str, values: str, **labels: str) -> dict[str, str]:
    text = ", ".join(f'{k}="{v}"' for k, v in {**JOB_LABELS, **labels}.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


def demo_series() -> list[dict[str, str]]:
    """promtool input series for the whole demo."""
    out = [
        _series("intune_exporter_build_info", CONSTANT.format(1), version="0.1.0"),
        _series("intune_exporter_poll_interval_seconds", CONSTANT.format(15)),
        _series("intune_graph_requests_total", RISING.format(1), tenant="northwind", code="404"),
        _series("intune_apns_certificate_configured", CONSTANT.format(0), tenant="northwind"),
        _series("intune_exporter_shard_info", CONSTANT.format(1), shard="0", total_shards="1"),
        _series("intune_exporter_tenants", CONSTANT.format(len(TENANTS))),
    ]
    for n, tenant in enumerate(TENANTS):
        up = int(tenant != "tailspin")
        tenant_id = f"0000000{n}-0000-4000-8000-000000000000"
        out += [
            _series(
                "intune_tenant_info",
                CONSTANT.format(1),
                tenant=tenant,
                tenant_id=tenant_id,
                cloud="global",
            ),
            _series("intune_tenant_up", CONSTANT.format(up), tenant=tenant),
            _series("intune_tenant_poll_duration_seconds", CONSTANT.format(0.4), tenant=tenant),
            _series("intune_tenant_polls_total", RISING.format(1), tenant=tenant),
        ]
        # As the exporter exports them; contoso warns 210 days ahead (its own `thresholds:`).
        for threshold, days in THRESHOLD_DAYS.get(tenant, THRESHOLD_DAYS["*"]).items():
            out.append(
                _series(
                    "intune_tenant_threshold_seconds",
                    CONSTANT.format(days * 86400),
                    tenant=tenant,
                    threshold=threshold,
                )
            )
        if up:
            out += [
                _series(
                    "intune_tenant_last_successful_poll_timestamp_seconds",
                    RISING.format(15),
                    tenant=tenant,
                ),
                _series("intune_graph_requests_total", RISING.format(3), tenant=tenant, code="200"),
            ]
        for collector in ("ade", "ade_devices", "vpp", "apns"):
            out.append(
                _series(
                    "intune_tenant_collector_up",
                    CONSTANT.format(up),
                    tenant=tenant,
                    collector=collector,
                )
            )
            for reason in ("auth", "forbidden"):  # pre-created at 0; tailspin's auth rises
                values = RISING.format(1) if not up and reason == "auth" else CONSTANT.format(0)
                out.append(
                    _series(
                        "intune_tenant_poll_errors_total",
                        values,
                        tenant=tenant,
                        collector=collector,
                        reason=reason,
                    )
                )
    for tenant, name, days, code, age in ADE_TOKENS:
        token = {"tenant": tenant, "token_id": _token_id("ade", name), "token_name": name}
        out += [
            _series(
                "intune_ade_token_info",
                CONSTANT.format(1),
                **token,
                apple_id=f"abm-admin@{tenant}.example",
                token_type="dep",
            ),
            _series("intune_ade_token_days_to_expiry", CONSTANT.format(days), **token),
            _series("intune_ade_token_sync_error", CONSTANT.format(int(code != 0)), **token),
            _series("intune_ade_token_last_sync_error_code", CONSTANT.format(code), **token),
            _series("intune_ade_token_synced_devices", CONSTANT.format(40), **token),
        ]
        if age is not None:
            out += [
                _series(
                    "intune_ade_token_last_successful_sync_timestamp_seconds",
                    CONSTANT.format(1),
                    **token,
                ),
                _series(
                    "intune_ade_token_last_successful_sync_age_seconds",
                    CONSTANT.format(age),
                    **token,
                ),
            ]
    for tenant, name, days, state, failed in VPP_TOKENS:
        token = {"tenant": tenant, "token_id": _token_id("vpp", name), "token_name": name}
        out += [
            _series(
                "intune_vpp_token_info",
                CONSTANT.format(1),
                **token,
                apple_id=f"vpp@{tenant}.example",
                organization_name=f"{tenant} Ltd",
                account_type="business",
                location_name=f"{name} location",
            ),
            _series("intune_vpp_token_days_to_expiry", CONSTANT.format(days), **token),
            _series("intune_vpp_token_sync_error", CONSTANT.format(int(failed)), **token),
            _series("intune_vpp_token_last_sync_timestamp_seconds", CONSTANT.format(1), **token),
            _series("intune_vpp_token_last_sync_age_seconds", CONSTANT.format(6 * HOUR), **token),
        ] + [
            _series("intune_vpp_token_state", CONSTANT.format(int(s == state)), **token, state=s)
            for s in VPP_STATES
        ]
    # The demo reads devices at start: their timestamps are as old as the series are long.
    start = 0
    for tenant, name, platform, states, (waiting, oldest), default in ADE_DEVICES:
        token = {"tenant": tenant, "token_id": _token_id("ade", name), "token_name": name}
        out += [
            _series(
                "intune_ade_devices",
                CONSTANT.format(states.get(state, 0)),
                **token,
                platform=platform,
                enrollment_state=state,
            )
            for state in DEVICE_STATES
        ]
        out += [
            _series(
                "intune_ade_devices_without_profile",
                CONSTANT.format(waiting),
                **token,
                platform=platform,
            ),
            _series(
                "intune_ade_devices_deleted_in_apple",
                CONSTANT.format(0),
                **token,
                platform=platform,
            ),
        ]
        if oldest is not None:
            out.append(
                _series(
                    "intune_ade_devices_without_profile_oldest_timestamp_seconds",
                    CONSTANT.format(start - oldest),
                    **token,
                    platform=platform,
                )
            )
        for each in ("ios", "macos", "tvos", "visionos"):
            has = int(each == platform and default is not None)
            out.append(
                _series(
                    "intune_ade_token_default_profile",
                    CONSTANT.format(has),
                    **token,
                    platform=each,
                )
            )
        if default is not None:
            out.append(
                _series(
                    "intune_ade_token_default_profile_info",
                    CONSTANT.format(1),
                    **token,
                    platform=platform,
                    profile_id=f"profile-{name.lower().replace(' ', '-')}",
                    profile_name=default,
                )
            )
    for tenant, days in APNS_DAYS.items():
        apple_id = f"mdm-push@{tenant}.example"
        out += [
            _series("intune_apns_certificate_configured", CONSTANT.format(1), tenant=tenant),
            _series(
                "intune_apns_certificate_info",
                CONSTANT.format(1),
                tenant=tenant,
                apple_id=apple_id,
                topic_id=f"com.apple.mgmt.External.{tenant}",
                serial_number="0123456789ABCDEF",
            ),
            _series(
                "intune_apns_certificate_days_to_expiry",
                CONSTANT.format(days),
                tenant=tenant,
                apple_id=apple_id,
            ),
        ]
    return out


def _panel_expr(uid: str, title: str, ref_id: str = "A", **variables: str) -> str:
    values = {**DEMO_VARIABLES[uid], **variables}
    queries = iter_panel_queries(DASHBOARDS[uid], values)
    (query,) = [q for q in queries if q.panel_title == title and q.ref_id == ref_id]
    return query.expr


def _labels(**labels: str) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _ade(name: str, **extra: str) -> str:
    """The labels of an ADE row of the credentials table."""
    tenant = name.split()[0].lower()
    return _labels(
        tenant=tenant,
        kind="ADE",
        token_name=name,
        token_id=_token_id("ade", name),
        apple_id=f"abm-admin@{tenant}.example",
        renew_url=links.ADE_RENEW,
        **extra,
    )


def _vpp(name: str, **extra: str) -> str:
    tenant = name.split()[0].lower()
    return _labels(
        tenant=tenant,
        kind="VPP",
        token_name=name,
        token_id=_token_id("vpp", name),
        apple_id=f"vpp@{tenant}.example",
        renew_url=links.VPP_RENEW,
        **extra,
    )


def _apns(tenant: str, **extra: str) -> str:
    if tenant in APNS_DAYS:
        extra["apple_id"] = f"mdm-push@{tenant}.example"
    return _labels(
        tenant=tenant,
        kind="APNs",
        token_name="APNs certificate",
        renew_url=links.APNS_RENEW,
        **extra,
    )


def _samples(*pairs: tuple[str, float]) -> list[dict[str, Any]]:
    return [{"labels": labels, "value": value} for labels, value in pairs]


def one(expr: str) -> str:
    """Set every value to 1: the state column's value is not shown, only its labels matter."""
    return f"{expr} * 0 + 1"


def _expected_results() -> list[dict[str, Any]]:
    """Exact results of the queries whose numbers the dashboards are built around."""
    overview, health, table = OVERVIEW_UID, EXPORTER_HEALTH_UID, "Apple credentials"
    cases: list[tuple[str, list[dict[str, Any]]]] = [
        # Fabrikam iPads (20 d), Fabrikam Macs (5 d), fabrikam's APNs certificate (12 d), and
        # Contoso iOS (200 d) by contoso's own 210-day warning threshold
        (_panel_expr(overview, "Expiring soon"), _samples(("{}", 4))),
        (_panel_expr(overview, "Expiring very soon"), _samples(("{}", 1))),
        # Northwind Shared, Fabrikam Education
        (_panel_expr(overview, "Expired"), _samples(("{}", 2))),
        # Northwind School (code 3), Fabrikam Education (expired), Northwind Retail (invalid),
        # Northwind Kiosk (assignedToExternalMDM), Northwind Field (sync failed)
        (_panel_expr(overview, "Sync error or invalid state"), _samples(("{}", 5))),
        (_panel_expr(overview, "Tenants failing to poll"), _samples(("{}", 1))),
        # 14 Fabrikam iPads, 6 Fabrikam Macs, 25 of Northwind Shared
        (_panel_expr(overview, "Devices without a profile"), _samples(("{}", 45))),
        (_panel_expr(overview, "Failed enrollments"), _samples(("{}", 4))),  # Fabrikam iPads
        (
            _panel_expr(overview, "Tenants with the most devices without a profile"),
            _samples(('{tenant="northwind"}', 25), ('{tenant="fabrikam"}', 20)),
        ),
        (
            _panel_expr(overview, "Tenants with the most failed enrollments"),
            _samples(('{tenant="fabrikam"}', 4)),
        ),
        (
            _panel_expr(TENANT_DETAIL_UID, "ADE devices by state"),
            _samples(
                (
                    _labels(
                        token_name="Fabrikam iPads", platform="ios", enrollment_state="enrolled"
                    ),
                    2540,
                ),
                (
                    _labels(
                        token_name="Fabrikam iPads", platform="ios", enrollment_state="notContacted"
                    ),
                    44,
                ),
                (
                    _labels(token_name="Fabrikam iPads", platform="ios", enrollment_state="failed"),
                    4,
                ),
                (
                    _labels(
                        token_name="Fabrikam Macs", platform="macos", enrollment_state="enrolled"
                    ),
                    42,
                ),
                (
                    _labels(
                        token_name="Fabrikam Macs",
                        platform="macos",
                        enrollment_state="notContacted",
                    ),
                    6,
                ),
            ),
        ),
        (
            _panel_expr(TENANT_DETAIL_UID, "Devices without an enrollment profile", "A"),
            _samples(
                (_labels(token_name="Fabrikam iPads", platform="ios"), 14),
                (_labels(token_name="Fabrikam Macs", platform="macos"), 6),
            ),
        ),
        (
            # Evaluated at 60m: the oldest was created its wait before the series began.
            _panel_expr(TENANT_DETAIL_UID, "Devices without an enrollment profile", "B"),
            _samples(
                (_labels(token_name="Fabrikam iPads", platform="ios"), 3 * DAY + 5 * HOUR + HOUR),
                (_labels(token_name="Fabrikam Macs", platform="macos"), 5 * HOUR + HOUR),
            ),
        ),
        (
            _panel_expr(TENANT_DETAIL_UID, "Default enrollment profiles", "B"),
            _samples(
                (
                    _labels(
                        token_name="Fabrikam iPads", platform="ios", profile_name="Fabrikam iPad"
                    ),
                    1,
                ),
            ),
        ),
        (
            f"sum({_panel_expr(TENANT_DETAIL_UID, 'Default enrollment profiles', 'A')})",
            _samples(("{}", 1)),  # of 2 tokens x 4 platforms, only the iPads' iOS default is set
        ),
        (_panel_expr(health, "Tenants up"), _samples(("{}", 4))),
        (_panel_expr(health, "Tenants down"), _samples(("{}", 1))),
        (_panel_expr(health, "Throttled requests"), _samples(("{}", 0))),
        # the demo is one process: shard 0 of 1 owns every tenant
        (_panel_expr(health, "Tenants per shard"), _samples(('{shard="0"}', len(TENANTS)))),
        (
            _panel_expr(overview, table, "A", tenant="fabrikam"),
            _samples(
                (_ade("Fabrikam iPads"), 20),
                (_ade("Fabrikam Macs"), 5),
                (_vpp("Fabrikam Education"), -3),
                (_apns("fabrikam"), 12),
            ),
        ),
        (
            _panel_expr(overview, table, "B", tenant="northwind"),
            _samples(
                (_ade("Northwind Shared"), 11 * DAY),
                (_ade("Northwind School"), 6 * HOUR),
                (_ade("Northwind Loaners"), 3 * DAY),
                (_vpp("Northwind Retail"), 6 * HOUR),
                (_vpp("Northwind Kiosk"), 6 * HOUR),
                (_vpp("Northwind Field"), 6 * HOUR),
            ),
        ),
        (
            _panel_expr(overview, table, "C", tenant="northwind"),
            _samples(
                (_ade("Northwind Shared"), 0),
                (_ade("Northwind School"), 3),
                (_ade("Northwind Loaners"), 0),
                (_ade("Northwind Spare"), 0),
            ),
        ),
        (
            # ADE: expired > sync error > never synced > ok; VPP: a state other than valid >
            # sync failed > valid; a row for a tenant without an APNs certificate.
            one(_panel_expr(overview, table, "D", tenant="northwind")),
            _samples(
                (_ade("Northwind Shared", state="expired"), 1),
                (_ade("Northwind School", state="sync error"), 1),
                (_ade("Northwind Loaners", state="ok"), 1),
                (_ade("Northwind Spare", state="never synced"), 1),
                (_vpp("Northwind Retail", state="invalid"), 1),
                (_vpp("Northwind Kiosk", state="assignedToExternalMDM"), 1),
                (_vpp("Northwind Field", state="sync failed"), 1),
                (_apns("northwind", state="not configured"), 1),
            ),
        ),
        (
            one(_panel_expr(overview, table, "D", tenant="fabrikam")),
            _samples(
                (_ade("Fabrikam iPads", state="ok"), 1),
                (_ade("Fabrikam Macs", state="ok"), 1),
                (_vpp("Fabrikam Education", state="expired"), 1),
                (_apns("fabrikam", state="ok"), 1),
            ),
        ),
        (
            # All 45 woodgrove ADE tokens (three pages in Graph) get a row each.
            f"count by (kind) ({_panel_expr(overview, table, 'A', tenant='woodgrove')})",
            _samples(('{kind="ADE"}', 45), ('{kind="VPP"}', 1), ('{kind="APNs"}', 1)),
        ),
    ]
    return [{"expr": expr, "exp_samples": samples} for expr, samples in cases]


@needs_promtool
def test_queries_return_the_expected_values_on_demo_data(tmp_path: Path) -> None:
    """Evaluate the queries with Prometheus' engine on demo-shaped series: the stat panels count
    exactly the demo's problem credentials, the table rows carry the right columns and states,
    and every panel expected to show demo data returns at least one series."""
    panel_queries, variable_queries = all_demo_queries()
    nonempty = [q.expr for q in panel_queries if q.expect_data]
    nonempty += [v.as_promql() for v in variable_queries]
    assert len(nonempty) >= 40
    tests = _expected_results() + [
        {"expr": f"clamp_max(count({expr}), 1)", "exp_samples": _samples(("{}", 1))}
        for expr in nonempty
    ]
    for test in tests:
        test["eval_time"] = "60m"
    (tmp_path / "empty.rules.yaml").write_text("groups: []\n")
    unit_file = tmp_path / "dashboards_test.yaml"
    unit_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["empty.rules.yaml"],
                "evaluation_interval": "15s",
                "tests": [
                    {"interval": "15s", "input_series": demo_series(), "promql_expr_test": tests}
                ],
            },
            width=1000,
        )
    )
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(unit_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
