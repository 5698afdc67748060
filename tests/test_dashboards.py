"""The Grafana dashboards and provisioning files: structure, queries and what the queries return.

Grafana itself is not available here, so the queries are checked with Prometheus' own tools:
`promtool check rules` parses every substituted expression, and `promtool test rules` evaluates
them on the series the real exporter serves for the `--demo` tenants and compares the results.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter import links
from exporter.config import ExporterConfig, ThresholdSettings
from exporter.demo.simulator import SimulatedCloud
from exporter.demo.tenants import DEMO_POLL_INTERVAL, demo_config, demo_tenants
from exporter.metrics import metric_specs
from exporter.server import build_app, start_site
from exporter.service import Exporter
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


@pytest.mark.parametrize("uid", UIDS)
def test_single_value_variables_are_matched_exactly(uid: str) -> None:
    # Grafana regex-escapes a variable's value only when the variable is multi-value or has
    # "All"; a single value goes in as it is. `tenant=~"$tenant"` would then read a discovered
    # tenant's name such as "Contoso (1a2b3c4d)" as a regex, and match nothing.
    single = {
        v["name"]
        for v in DASHBOARDS[uid].get("templating", {}).get("list", [])
        if v.get("type") == "query" and not v.get("multi") and not v.get("includeAll")
    }
    text = json.dumps(DASHBOARDS[uid])
    for name in single:
        regex_uses = re.findall(rf'=~\\"\$\{{?{name}\b', text)
        assert not regex_uses, f"{uid}: ${name} is single-valued: match it with =, not =~"


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
            assert 'tenant="x"' in selector, (query.panel_title, selector)


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


# --- the demo's series, as the real exporter serves them --------------------------------------

# The dashboard queries run on what `--demo` serves: the demo tenants on the simulator, polled by
# the real exporter (GDAP discovery included) and scraped from its /metrics handler. promtool
# then needs each series over time, so the samples are extended the way the running exporter
# moves them, one 15 s poll (the demo's interval) per sample; `_movement` says how per family.
JOB_LABELS = {"job": "intune-apple-token-exporter", "instance": "127.0.0.1:9893"}
HOUR, DAY = 3600, 86400
STEP = DEMO_POLL_INTERVAL  # seconds between samples: one poll per sample
SAMPLES = 400  # 0 to 99m45s
EVAL_AT = 60 * 60  # the queries are evaluated at 60m, the 241st sample
# Every 240th poll (1 h) is a full one: the ade_devices collector (collector_intervals default
# 1h) runs again, and so does GDAP discovery (the demo's refresh_interval 1h).
FULL_ROUND = int(HOUR / STEP)
# The demo's data as the simulator holds it; ids and names do not depend on the clock.
DEMO = demo_tenants(0.0)

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Scrape:
    """One /metrics body: every sample by (name, labels), and which names are counters."""

    samples: dict[SeriesKey, float]
    counters: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[SeriesKey, float] = {}
        counters: set[str] = set()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sample.labels.items()))] = sample.value
                if family.type == "counter":
                    counters.add(sample.name)
        return cls(samples, frozenset(counters))

    def value(self, name: str, **labels: str) -> float:
        (found,) = [v for (n, ls), v in self.samples.items() if n == name and dict(ls) == labels]
        return found


@dataclass(frozen=True)
class DemoScrapes:
    now: float  # the exporter's clock at the first sample: promtool's time 0
    first: Scrape  # after the first poll of every tenant, at `now`
    first_later: Scrape  # the same, one step later: what moves with the clock alone
    second: Scrape  # after the second poll, at `now`: what moves with polling
    # After a reload that gives contoso its own expiry_warning of 210 days, at `now` and later.
    contoso_210d: Scrape
    contoso_210d_later: Scrape


def _contoso_warns_210_days_ahead(config: ExporterConfig) -> ExporterConfig:
    early = ThresholdSettings(expiry_warning=210 * DAY)
    tenants = tuple(
        t.model_copy(update={"thresholds": early}) if t.name == "contoso" else t
        for t in config.tenants
    )
    return config.model_copy(update={"tenants": tenants})


async def scrape_demo() -> DemoScrapes:
    """Poll the demo tenants twice as `--demo` does and scrape /metrics in between."""
    # Whole seconds, so that the demo's "expires in 20 days" is 20.0 at the first sample; a few
    # seconds ahead, so that the polls (real wall-clock timestamps) come before the first scrape.
    now = float(math.ceil(time.time()) + 10)
    cloud = SimulatedCloud()
    for tenant in demo_tenants(now).values():
        cloud.add_tenant(tenant)
    await cloud.start()
    config = demo_config(cloud.base_url)
    exporter = Exporter(config, ca_data=cloud.ca_pem)
    scrape_clock = now
    app = build_app(
        exporter.store,
        exporter.lines,
        exporter_samples=exporter.exporter_samples,
        clock=lambda: scrape_clock,
    )
    runner, port = await start_site(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:

            async def scrape(at: float) -> Scrape:
                nonlocal scrape_clock
                scrape_clock = at
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
                    return Scrape.parse(await response.text())

            # What `Exporter.start()` runs: the first discovery (its customers become tenants),
            # and a poll of every tenant.
            await exporter.open()
            assert await exporter.refresh_discovery()
            await exporter.poll_all_once()
            first, first_later = await scrape(now), await scrape(now + STEP)
            await exporter.poll_all_once()
            second = await scrape(now)
            await exporter.apply(_contoso_warns_210_days_ahead(config))
            contoso_210d, contoso_210d_later = await scrape(now), await scrape(now + STEP)
    finally:
        await runner.cleanup()
        await exporter.close()
        await cloud.stop()
    return DemoScrapes(now, first, first_later, second, contoso_210d, contoso_210d_later)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def demo() -> DemoScrapes:
    return await scrape_demo()


@dataclass(frozen=True)
class Movement:
    """A series over the samples: `start` at the first, plus `step` at every sample, plus
    `jump` (on top of `step`) at every full round."""

    start: float
    step: float = 0.0
    jump: float = 0.0


# Families whose samples move with polling (every other family must not): the times of the last
# poll and of each collector's last success, and the poll's duration.
LAST_POLL = "intune_tenant_last_successful_poll_timestamp_seconds"
COLLECTOR_SUCCESS = "intune_tenant_collector_last_success_timestamp_seconds"
POLL_DURATION = "intune_tenant_poll_duration_seconds"
DISCOVERY_SUCCESS = "intune_discovery_last_success_timestamp_seconds"
DERIVED = {spec.name: spec.derived for spec in metric_specs() if spec.derived is not None}
POLLED = {LAST_POLL, COLLECTOR_SUCCESS, POLL_DURATION, DISCOVERY_SUCCESS}


def _movement(key: SeriesKey, now: float, first: Scrape, later: Scrape, second: Scrape) -> Movement:
    """How a sample of `first` moves: `later` is the same state one step later, `second` the
    state after one more poll."""
    name, label_items = key
    labels = dict(label_items)
    value, polled = first.samples[key], second.samples.get(key)
    if name.endswith("_timestamp_seconds"):
        value -= now  # promtool's clock starts at 0: ages come out as the exporter's
    if name in first.counters:
        # They rise as under 15 s polling, so that the rate panels (polls, poll errors, Graph
        # requests per hour) show the exporter's real rates, not zero: each poll adds what the
        # second one added, a full round what the first one did (it ran every collector).
        assert polled is not None, key
        regular = polled - first.samples[key]
        return Movement(value, regular, first.samples[key] - regular)
    if name == LAST_POLL:
        assert polled != first.samples[key], key
        return Movement(value, STEP)
    if name == COLLECTOR_SUCCESS:
        interval = first.value("intune_tenant_collector_interval_seconds", **labels)
        assert interval in (STEP, FULL_ROUND * STEP), key
        assert (polled != first.samples[key]) == (interval == STEP), key
        return Movement(value, STEP) if interval == STEP else Movement(value, 0.0, interval)
    if name == DISCOVERY_SUCCESS:
        assert first.value("intune_discovery_refresh_interval_seconds") == FULL_ROUND * STEP
        return Movement(value, 0.0, FULL_ROUND * STEP)
    if name == POLL_DURATION:
        return Movement(value)  # it varies from poll to poll; the first one's stays
    assert polled == first.samples[key], f"{key} moves with polling; say how in _movement"
    # Days to expiry and ages move with the scrape's clock: by one step's worth per sample,
    # which is what the exporter shows one step later (the difference itself carries rounding
    # noise, so the exact step is used).
    moved = later.samples[key] - first.samples[key]
    derived = DERIVED.get(name)
    if derived is None:
        assert moved == 0, key
        return Movement(value)
    step = -STEP / DAY if derived == "days_until" else STEP
    assert moved == pytest.approx(step, rel=1e-9), key
    return Movement(value, step)


def _number(value: float) -> str:
    return repr(float(value))


def _values(movement: Movement) -> str:
    """promtool's expanding notation: `a+bxN` is a, a+b, ... a+N*b (N+1 samples)."""
    segments = []
    for start in range(0, SAMPLES, FULL_ROUND):
        count = min(FULL_ROUND, SAMPLES - start)
        value = movement.start + movement.step * start + movement.jump * (start // FULL_ROUND)
        step = movement.step
        sign = "-" if step < 0 else "+"
        slope = f"{sign}{_number(abs(step))}" if step else ""
        segments.append(f"{_number(value)}{slope}x{count - 1}")
    return " ".join(segments)


def _series_text(key: SeriesKey) -> str:
    name, labels = key
    escaped = {k: v.replace("\\", "\\\\").replace('"', '\\"') for k, v in labels}
    text = ", ".join(f'{k}="{v}"' for k, v in {**JOB_LABELS, **escaped}.items())
    return f"{name}{{{text}}}"


def input_series(
    now: float, first: Scrape, later: Scrape, second: Scrape, names: set[str] | None = None
) -> list[dict[str, str]]:
    """promtool input series of every sample of `first` (or of only the families `names`)."""
    assert first.samples.keys() == later.samples.keys() == second.samples.keys()
    return [
        {"series": _series_text(key), "values": _values(_movement(key, now, first, later, second))}
        for key in first.samples
        if names is None or key[0] in names
    ]


def demo_series(demo: DemoScrapes) -> list[dict[str, str]]:
    """The series of `--demo`."""
    return input_series(demo.now, demo.first, demo.first_later, demo.second)


def contoso_210d_series(demo: DemoScrapes, names: set[str]) -> list[dict[str, str]]:
    """The families `names` after the reload; none of them moves with polling (asserted), so
    the reloaded state serves as its own next poll."""
    first = demo.contoso_210d
    assert not names & (POLLED | first.counters), names
    return input_series(demo.now, first, demo.contoso_210d_later, first, names)


def test_input_series_move_as_the_exporter_does(demo: DemoScrapes) -> None:
    series = {s["series"]: s["values"] for s in demo_series(demo)}
    assert len(series) == len(demo.first.samples) > 1000

    def values(name: str, **labels: str) -> str:
        return series[_series_text((name, tuple(labels.items())))]

    ipads = {"tenant": "fabrikam", "token_id": _ade_token("Fabrikam iPads")["id"]}
    ipads["token_name"] = "Fabrikam iPads"
    # 20 days at the first sample, then 15 s less per sample; absolute times count from time 0.
    step = _number(STEP / DAY)
    assert values("intune_ade_token_days_to_expiry", **ipads) == (
        f"20.0-{step}x239 {_number(20.0 - STEP / DAY * FULL_ROUND)}-{step}x159"
    )
    assert values("intune_ade_token_expiry_timestamp_seconds", **ipads) == (
        f"{_number(20 * DAY)}x239 {_number(20 * DAY)}x159"
    )
    assert values("intune_ade_token_last_successful_sync_age_seconds", **ipads) == (
        f"3600.0+15.0x239 {_number(HOUR + FULL_ROUND * STEP)}+15.0x159"
    )
    # Polled every 15 s, but ade_devices only every hour (and discovery with it).
    polled = demo.first.value(LAST_POLL, tenant="fabrikam") - demo.now
    assert values(LAST_POLL, tenant="fabrikam") == (
        f"{_number(polled)}+15.0x239 {_number(polled + HOUR)}+15.0x159"
    )
    assert values(COLLECTOR_SUCCESS, tenant="fabrikam", collector="ade_devices") == (
        f"{_number(polled)}x239 {_number(polled + HOUR)}x159"
    )
    discovered = demo.first.value(DISCOVERY_SUCCESS) - demo.now
    assert (
        values(DISCOVERY_SUCCESS) == f"{_number(discovered)}x239 {_number(discovered + HOUR)}x159"
    )
    # One poll per sample; tailspin's token request fails at every poll, so every collector's
    # (ade_devices' only when it runs, at the full rounds) auth errors count up.
    assert values("intune_tenant_polls_total", tenant="tailspin") == "1.0+1.0x239 241.0+1.0x159"
    for collector, expected in (
        ("ade", "1.0+1.0x239 241.0+1.0x159"),
        ("ade_devices", "1.0x239 2.0x159"),
    ):
        assert (
            values(
                "intune_tenant_poll_errors_total",
                tenant="tailspin",
                collector=collector,
                reason="auth",
            )
            == expected
        )


def _panel_expr(uid: str, title: str, ref_id: str = "A", **variables: str) -> str:
    values = {**DEMO_VARIABLES[uid], **variables}
    queries = iter_panel_queries(DASHBOARDS[uid], values)
    (query,) = [q for q in queries if q.panel_title == title and q.ref_id == ref_id]
    return query.expr


def _labels(**labels: str) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


# The demo's tenants as the exporter names them: configured ones by their config name, GDAP
# customers found only through discovery by their display name.
CONFIGURED = {t.tenant_id: t.name for t in demo_config("https://127.0.0.1").tenants}  # any URL
PARTNER = next(t for t in DEMO.values() if t.customers)
DISCOVERED = {
    c["tenantId"]: c["displayName"] for c in PARTNER.customers if c["tenantId"] not in CONFIGURED
}
TENANT_NAMES = {
    key: CONFIGURED.get(t.tenant_id) or DISCOVERED[t.tenant_id]
    for key, t in DEMO.items()
    if t.tenant_id in CONFIGURED or t.tenant_id in DISCOVERED
}


def _key(name: str) -> str:
    """The demo's key of a credential's tenant: its first word ("Fabrikam iPads": fabrikam)."""
    return name.split()[0].lower()


def _item(items: list[dict[str, Any]], field: str, name: str) -> dict[str, Any]:
    (item,) = [i for i in items if i[field] == name]
    return item


def _ade_token(name: str) -> dict[str, Any]:
    return _item(DEMO[_key(name)].ade_tokens, "tokenName", name)


def _ade(name: str, **extra: str) -> str:
    """The labels of an ADE row of the credentials table."""
    token = _ade_token(name)
    return _labels(
        tenant=TENANT_NAMES[_key(name)],
        kind="ADE",
        token_name=name,
        token_id=token["id"],
        apple_id=token["appleIdentifier"],
        renew_url=links.ADE_RENEW,
        **extra,
    )


def _vpp(name: str, **extra: str) -> str:
    token = _item(DEMO[_key(name)].vpp_tokens, "displayName", name)
    return _labels(
        tenant=TENANT_NAMES[_key(name)],
        kind="VPP",
        token_name=name,
        token_id=token["id"],
        apple_id=token["appleId"],
        renew_url=links.VPP_RENEW,
        **extra,
    )


def _apns(key: str, **extra: str) -> str:
    certificate = DEMO[key].apns_certificate
    if certificate is not None:
        extra["apple_id"] = certificate["appleIdentifier"]
    return _labels(
        tenant=TENANT_NAMES[key],
        kind="APNs",
        token_name="APNs certificate",
        renew_url=links.APNS_RENEW,
        **extra,
    )


def _device_row(token: str, platform: str, **extra: str) -> str:
    return _labels(token_name=token, platform=platform, **extra)


def _samples(*pairs: tuple[str, float]) -> list[dict[str, Any]]:
    return [{"labels": labels, "value": value} for labels, value in pairs]


def one(expr: str) -> str:
    """Set every value to 1: the state column's value is not shown, only its labels matter."""
    return f"{expr} * 0 + 1"


# Days left move by a fraction of a day per sample, which promtool adds up sample by sample: its
# sums and the exact values differ in the last bits, so the days columns are compared rounded.
ROUND_TO = 1e-6


def rounded(expr: str) -> str:
    return f"round({expr}, {ROUND_TO!r})"


def _days_at_eval(days: float) -> float:
    """What `rounded` makes of a credential `days` from expiry at the first sample."""
    inverse = 1.0 / ROUND_TO  # as PromQL's round() computes it
    return math.floor((days - EVAL_AT / DAY) * inverse + 0.5) / inverse


def _expected_results() -> list[dict[str, Any]]:
    """Exact results of the queries whose numbers the dashboards are built around, on the
    `--demo` series at 60m: an hour after the first poll, so ages and days left have moved."""
    overview, health, table = OVERVIEW_UID, EXPORTER_HEALTH_UID, "Apple credentials"
    alpine, litware, adatum = (TENANT_NAMES[k] for k in ("alpine", "litware", "adatum"))
    cases: list[tuple[str, list[dict[str, Any]]]] = [
        # Fabrikam iPads (20 d), Fabrikam Macs (5 d) and fabrikam's APNs certificate (12 d),
        # under the default 30-day warning; the next, Northwind Retail, has 90 days left
        (_panel_expr(overview, "Expiring soon"), _samples(("{}", 3))),
        (_panel_expr(overview, "Expiring very soon"), _samples(("{}", 1))),  # Fabrikam Macs
        # Northwind Shared (-10 d), Fabrikam Education (-3 d)
        (_panel_expr(overview, "Expired"), _samples(("{}", 2))),
        # Northwind School (code 3), Fabrikam Education (expired), Northwind Retail (invalid),
        # Northwind Kiosk (assignedToExternalMDM), Northwind Field (sync failed)
        (_panel_expr(overview, "Sync error or invalid state"), _samples(("{}", 5))),
        # tailspin (wrong secret: AADSTS7000215) and Adatum, a GDAP customer that never
        # consented (AADSTS700016)
        (_panel_expr(overview, "Tenants failing to poll"), _samples(("{}", 2))),
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
                (_device_row("Fabrikam iPads", "ios", enrollment_state="enrolled"), 2540),
                (_device_row("Fabrikam iPads", "ios", enrollment_state="notContacted"), 44),
                (_device_row("Fabrikam iPads", "ios", enrollment_state="failed"), 4),
                (_device_row("Fabrikam Macs", "macos", enrollment_state="enrolled"), 42),
                (_device_row("Fabrikam Macs", "macos", enrollment_state="notContacted"), 6),
            ),
        ),
        (
            _panel_expr(TENANT_DETAIL_UID, "Devices without an enrollment profile", "A"),
            _samples(
                (_device_row("Fabrikam iPads", "ios"), 14),
                (_device_row("Fabrikam Macs", "macos"), 6),
            ),
        ),
        (
            # The oldest waits since its creation (3 d 5 h and 5 h before the first sample).
            _panel_expr(TENANT_DETAIL_UID, "Devices without an enrollment profile", "B"),
            _samples(
                (_device_row("Fabrikam iPads", "ios"), 3 * DAY + 5 * HOUR + EVAL_AT),
                (_device_row("Fabrikam Macs", "macos"), 5 * HOUR + EVAL_AT),
            ),
        ),
        (
            _panel_expr(TENANT_DETAIL_UID, "Default enrollment profiles", "B"),
            _samples((_device_row("Fabrikam iPads", "ios", profile_name="Fabrikam iPad"), 1)),
        ),
        (
            f"sum({_panel_expr(TENANT_DETAIL_UID, 'Default enrollment profiles', 'A')})",
            _samples(("{}", 1)),  # of 2 tokens x 4 platforms, only the iPads' iOS default is set
        ),
        # contoso, fabrikam, northwind, woodgrove, and Alpine and Litware found through GDAP
        (_panel_expr(health, "Tenants up"), _samples(("{}", 6))),
        (_panel_expr(health, "Tenants down"), _samples(("{}", 2))),  # tailspin and Adatum
        (_panel_expr(health, "Throttled requests"), _samples(("{}", 0))),
        # The demo is one process: shard 0 of 1 owns every tenant, the 5 configured and the 3
        # found only through GDAP (contoso, configured as well, counts once).
        (_panel_expr(health, "Tenants per shard"), _samples(('{shard="0"}', 8))),
        (
            _panel_expr(health, "Tenants", "A"),
            _samples(
                *(
                    (_labels(tenant=name, tenant_id=DEMO[key].tenant_id, cloud="global"), 1)
                    for key, name in TENANT_NAMES.items()
                )
            ),
        ),
        (
            _panel_expr(health, "Tenants", "B"),
            _samples(
                *(
                    (_labels(tenant=name), int(name not in ("tailspin", adatum)))
                    for name in TENANT_NAMES.values()
                )
            ),
        ),
        (
            rounded(_panel_expr(overview, table, "A", tenant="fabrikam")),
            _samples(
                (_ade("Fabrikam iPads"), _days_at_eval(20)),
                (_ade("Fabrikam Macs"), _days_at_eval(5)),
                (_vpp("Fabrikam Education"), _days_at_eval(-3)),
                (_apns("fabrikam"), _days_at_eval(12)),
            ),
        ),
        (
            rounded(_panel_expr(overview, table, "A", tenant=f"{alpine}|{litware}")),
            _samples(
                (_ade("Alpine iPads"), _days_at_eval(140)),
                (_vpp("Alpine Apps"), _days_at_eval(230)),
                (_apns("alpine"), _days_at_eval(180)),
                (_ade("Litware Macs"), _days_at_eval(260)),
                (_apns("litware"), _days_at_eval(310)),
            ),
        ),
        (
            # Ages at the first sample plus the hour since.
            _panel_expr(overview, table, "B", tenant="northwind"),
            _samples(
                (_ade("Northwind Shared"), 11 * DAY + EVAL_AT),
                (_ade("Northwind School"), HOUR + EVAL_AT),
                (_ade("Northwind Loaners"), 3 * DAY + EVAL_AT),
                (_vpp("Northwind Retail"), 6 * HOUR + EVAL_AT),
                (_vpp("Northwind Kiosk"), 6 * HOUR + EVAL_AT),
                (_vpp("Northwind Field"), 3 * DAY + EVAL_AT),
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
        (
            # Nothing of the tenants that fail: no credential rows, only their tenant rows.
            f"count({_panel_expr(overview, table, 'A', tenant=f'tailspin|{adatum}')}) or vector(0)",
            _samples(("{}", 0)),
        ),
    ]
    return [{"expr": expr, "exp_samples": samples} for expr, samples in cases]


def _threshold_results() -> list[dict[str, Any]]:
    """With contoso's own `thresholds: {expiry_warning: 210d}`: its Contoso iOS (200 d) is
    expiring soon as well, its VPP token (300 d) and APNs certificate (250 d) are not."""
    return [
        {"expr": _panel_expr(OVERVIEW_UID, "Expiring soon"), "exp_samples": _samples(("{}", 4))},
        {
            "expr": _panel_expr(OVERVIEW_UID, "Expiring very soon"),
            "exp_samples": _samples(("{}", 1)),
        },
    ]


@needs_promtool
def test_queries_return_the_expected_values_on_demo_data(demo: DemoScrapes, tmp_path: Path) -> None:
    """Evaluate the queries with Prometheus' engine on what `--demo` serves: the stat panels
    count exactly the demo's problem credentials, the table rows carry the right columns and
    states, and every panel expected to show demo data returns at least one series."""
    panel_queries, variable_queries = all_demo_queries()
    nonempty = [q.expr for q in panel_queries if q.expect_data]
    nonempty += [v.as_promql() for v in variable_queries]
    assert len(nonempty) >= 40
    tests = _expected_results() + [
        {"expr": f"clamp_max(count({expr}), 1)", "exp_samples": _samples(("{}", 1))}
        for expr in nonempty
    ]
    threshold_tests = _threshold_results()
    # The reload changes contoso's thresholds only: the expiring panels' families suffice.
    threshold_names = set().union(*(metric_names(t["expr"]) for t in threshold_tests))
    for test in tests + threshold_tests:
        test["eval_time"] = f"{EVAL_AT}s"
    groups = [
        {"interval": f"{STEP:g}s", "input_series": demo_series(demo), "promql_expr_test": tests},
        {
            "interval": f"{STEP:g}s",
            "input_series": contoso_210d_series(demo, threshold_names),
            "promql_expr_test": threshold_tests,
        },
    ]
    (tmp_path / "empty.rules.yaml").write_text("groups: []\n")
    unit_file = tmp_path / "dashboards_test.yaml"
    unit_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["empty.rules.yaml"],
                "evaluation_interval": f"{STEP:g}s",
                "tests": groups,
            },
            width=1000,
        )
    )
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(unit_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
