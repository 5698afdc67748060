"""End to end with the real servers: exporter --demo, Prometheus, rules, Alertmanager, pager.

One stack per module, started by the `stack` fixture in this order:
1. the exporter in `--demo` mode on a free loopback port (waits for /-/ready);
2. the pager: a webhook receiver (aiohttp) and a plain SMTP sink, in a background thread;
3. Debian's Alertmanager 0.25 with alertmanager/alertmanager.example.yaml, derived: webhook URL
   and SMTP relay pointed at the pager, `group_wait`/`group_interval` shortened, nothing else
   (see e2e_support.derive_alertmanager_config);
4. Debian's Prometheus 2.42 with a generated prometheus.yml (scrape and rule evaluation every
   second) and prometheus/alerts.yaml, derived: only the `for:` durations shortened.
Alertmanager starts before Prometheus so that the first firing alerts have somewhere to go.

Timing is set by the demo, which polls each tenant every 15 s: IntuneExporterAuthFailing needs
two samples of tailspin's auth error counter (its second poll comes ~27 s after start-up), and
IntuneExporterTenantDataStale fires for tailspin (and Adatum) only after the fourth failed poll
(~57 s). The module takes about a minute; every wait polls with a deadline.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import pytest
import yaml

from exporter import links

from .e2e_support import (
    AM_ALLOWED_DIFFERENCES,
    EXPORTER_JOB,
    REPO_ROOT,
    AlertmanagerOverrides,
    Exporter,
    Pager,
    Process,
    PrometheusAPI,
    changed_lines,
    derive_alertmanager_config,
    derive_rules,
    find_binary,
    get_json,
    prometheus_config,
    start_demo_exporter,
    start_server,
    structural_differences,
    wait_for,
)
from .grafana_queries import EXPORTER_HEALTH_UID, OVERVIEW_UID, all_demo_queries

pytestmark = pytest.mark.e2e

PROMETHEUS = find_binary("prometheus")
ALERTMANAGER = find_binary("prometheus-alertmanager", "alertmanager")

RULES_FILE = REPO_ROOT / "prometheus" / "alerts.yaml"
AM_EXAMPLE = REPO_ROOT / "alertmanager" / "alertmanager.example.yaml"
AM_TEMPLATES = REPO_ROOT / "alertmanager" / "templates"

# Shortened `for:` durations. One second means "true at two evaluations in a row", so the pending
# state is still exercised. IntuneExporterDown keeps 30 s: until Prometheus's first scrape (about
# 5 s after start, its discovery and scrape managers update every 5 s) `absent(up{...})` is true,
# which is exactly why the shipped rule waits 5 minutes; 1 s would page for a start-up artefact.
DEFAULT_FOR = "1s"
FOR_OVERRIDES = {"IntuneExporterDown": "30s"}
AM_GROUP_WAIT = "1s"
AM_GROUP_INTERVAL = "1s"

STARTUP_TIMEOUT = 30.0
# Deadlines counted from the exporter's start (see the module docstring for the demo's timing).
ALERTS_DEADLINE = 75.0
STALE_DEADLINE = 110.0

TENANTS = ("contoso", "fabrikam", "northwind", "woodgrove", "tailspin")
# Found through the demo partner's GDAP customers (Contoso, also configured, is not repeated).
DISCOVERED = ("Alpine Ski House", "Litware Inc", "Adatum Corporation")
ALL_TENANTS = TENANTS + DISCOVERED
# Never polled successfully: tailspin's secret is wrong, Adatum never consented to the app.
DOWN_TENANTS = ("tailspin", "Adatum Corporation")


@dataclass(frozen=True)
class Expected:
    """One alert instance the demo must raise: its name, tenant, token and extra labels."""

    alertname: str
    tenant: str
    token_name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.alertname, self.tenant, self.token_name)


def _ade(alertname: str, tenant: str, token: str) -> Expected:
    return Expected(alertname, tenant, token, (("apple_id", f"abm-admin@{tenant}.example"),))


def _devices(alertname: str, tenant: str, token: str, platform: str) -> Expected:
    # No apple_id: the device alerts come from the ade_devices collector alone.
    return Expected(alertname, tenant, token, (("platform", platform),))


def _vpp(alertname: str, tenant: str, token: str, **labels: str) -> Expected:
    extra = (("apple_id", f"vpp@{tenant}.example"), *sorted(labels.items()))
    return Expected(alertname, tenant, token, extra)


# Worked out from the demo data (exporter/demo.py) and the thresholds in prometheus/alerts.yaml.
EXPECTED_FIRING: tuple[Expected, ...] = (
    _ade("IntuneAdeTokenExpiringSoon", "fabrikam", "Fabrikam iPads"),  # 20 d
    _ade("IntuneAdeTokenExpiringSoon", "fabrikam", "Fabrikam Macs"),  # 5 d
    _ade("IntuneAdeTokenExpiringSoon", "northwind", "Northwind Shared"),  # -10 d
    _ade("IntuneAdeTokenExpiringCritical", "fabrikam", "Fabrikam Macs"),
    _ade("IntuneAdeTokenExpiringCritical", "northwind", "Northwind Shared"),
    _ade("IntuneAdeTokenExpired", "northwind", "Northwind Shared"),
    _ade("IntuneAdeTokenSyncError", "northwind", "Northwind School"),  # code 3
    _ade("IntuneAdeTokenSyncStale", "northwind", "Northwind Shared"),  # synced 11 d ago
    _ade("IntuneAdeTokenSyncStale", "northwind", "Northwind Loaners"),  # synced 3 d ago
    # 14 iPads without a profile for up to 3 days
    _devices("IntuneAdeDevicesWithoutProfile", "fabrikam", "Fabrikam iPads", "ios"),
    # 25 devices without a profile for up to 9 days (muted: the token has expired)
    _devices("IntuneAdeDevicesWithoutProfile", "northwind", "Northwind Shared", "ios"),
    # 6 Macs waiting, no default macOS profile
    _devices("IntuneAdeDefaultProfileMissing", "fabrikam", "Fabrikam Macs", "macos"),
    # 10 iPads waiting, no default iOS profile (muted: the token fails to sync)
    _devices("IntuneAdeDefaultProfileMissing", "northwind", "Northwind School", "ios"),
    _vpp("IntuneVppTokenExpiringSoon", "fabrikam", "Fabrikam Education"),  # -3 d
    _vpp("IntuneVppTokenExpiringCritical", "fabrikam", "Fabrikam Education"),
    _vpp("IntuneVppTokenExpired", "fabrikam", "Fabrikam Education"),
    _vpp("IntuneVppTokenNotValid", "fabrikam", "Fabrikam Education", state="expired"),
    _vpp("IntuneVppTokenNotValid", "northwind", "Northwind Retail", state="invalid"),
    _vpp("IntuneVppTokenNotValid", "northwind", "Northwind Kiosk", state="assignedToExternalMDM"),
    _vpp("IntuneVppTokenSyncFailing", "northwind", "Northwind Field"),
    Expected(
        "IntuneApnsCertificateExpiringSoon",
        "fabrikam",
        None,
        (("apple_id", "mdm-push@fabrikam.example"),),
    ),  # 12 d
    *(Expected("IntuneExporterTenantDown", tenant) for tenant in DOWN_TENANTS),
    *(Expected("IntuneExporterAuthFailing", tenant) for tenant in DOWN_TENANTS),
)
# Fire too, but only after a down tenant's fourth failed poll; their own test waits for them.
# The rule judges each collector, and all four of each down tenant's fail (ade_devices runs
# only hourly, but it never succeeded, and the tenant's polls are counted).
EXPECTED_STALE = tuple(
    Expected("IntuneExporterTenantDataStale", tenant, collector, (("last_success", "never"),))
    for tenant in DOWN_TENANTS
    for collector in ("ade", "ade_devices", "vpp", "apns")
)

# Rules the demo must not raise for any tenant.
SILENT_RULES = (
    "IntuneApnsCertificateExpiringCritical",  # fabrikam's certificate has 12 days
    "IntuneApnsCertificateExpired",
    "IntuneExporterPermissionMissing",  # the demo never answers 403
    "IntuneExporterDown",
    # Needs the failed count to rise; the demo's failed devices stay as they are (and its
    # devices are read once an hour). The promtool unit tests cover the rise.
    "IntuneAdeEnrollmentFailures",
)
HEALTHY_TENANTS = ("contoso", "woodgrove", "Alpine Ski House", "Litware Inc")

# Muted by the example's inhibit rules: they fire in Prometheus but never reach the pager. The
# values are the alerts that may mute each: Alertmanager names only the first source it finds.
INHIBITED: dict[tuple[str, str, str | None], set[str]] = {
    ("IntuneAdeTokenExpiringCritical", "northwind", "Northwind Shared"): {"IntuneAdeTokenExpired"},
    ("IntuneVppTokenExpiringCritical", "fabrikam", "Fabrikam Education"): {"IntuneVppTokenExpired"},
    ("IntuneAdeTokenExpiringSoon", "fabrikam", "Fabrikam Macs"): {"IntuneAdeTokenExpiringCritical"},
    ("IntuneAdeTokenExpiringSoon", "northwind", "Northwind Shared"): {
        "IntuneAdeTokenExpiringCritical",
        "IntuneAdeTokenExpired",
    },
    ("IntuneVppTokenExpiringSoon", "fabrikam", "Fabrikam Education"): {
        "IntuneVppTokenExpiringCritical",
        "IntuneVppTokenExpired",
    },
    ("IntuneAdeTokenSyncStale", "northwind", "Northwind Shared"): {"IntuneAdeTokenExpired"},
    # The cause outranks the symptom: a token expired or in sync error mutes its device alerts.
    ("IntuneAdeDevicesWithoutProfile", "northwind", "Northwind Shared"): {"IntuneAdeTokenExpired"},
    ("IntuneAdeDefaultProfileMissing", "northwind", "Northwind School"): {
        "IntuneAdeTokenSyncError"
    },
    # May be delivered once before AuthFailing fires (it needs a second poll), muted after.
    **{
        ("IntuneExporterTenantDown", tenant, None): {
            "IntuneExporterAuthFailing",
            "IntuneExporterTenantDataStale",
        }
        for tenant in DOWN_TENANTS
    },
}

# Overview and health stat panels whose value the demo data fixes.
EXPECTED_STATS = {
    (OVERVIEW_UID, "Expiring soon"): 3,  # Fabrikam iPads, Fabrikam Macs, fabrikam APNs
    (OVERVIEW_UID, "Expiring very soon"): 1,  # Fabrikam Macs
    (OVERVIEW_UID, "Expired"): 2,  # Northwind Shared, Fabrikam Education
    # Northwind School, Northwind Field, Fabrikam Education, Northwind Retail, Northwind Kiosk
    (OVERVIEW_UID, "Sync error or invalid state"): 5,
    (OVERVIEW_UID, "Tenants failing to poll"): 2,  # tailspin, Adatum
    # Fabrikam iPads 14, Fabrikam Macs 6, Northwind Shared 25
    (OVERVIEW_UID, "Devices without a profile"): 45,
    (OVERVIEW_UID, "Failed enrollments"): 4,  # Fabrikam iPads
    (EXPORTER_HEALTH_UID, "Tenants up"): 6,
    (EXPORTER_HEALTH_UID, "Tenants down"): 2,
    (EXPORTER_HEALTH_UID, "Poll interval"): 15,
}


@dataclass
class Stack:
    exporter: Exporter
    prometheus: PrometheusAPI
    alertmanager_url: str
    pager: Pager
    processes: list[Process]
    rules_derived: str
    am_derived: str

    def remaining(self, deadline: float) -> float:
        """Seconds left until `deadline` seconds after the exporter started (at least 5)."""
        return max(5.0, self.exporter.started_at + deadline - time.monotonic())

    def wait_for(self, what: str, probe: Any, deadline: float, describe: Any = None) -> Any:
        return wait_for(what, probe, self.remaining(deadline), self.processes, describe)


def _rule_list() -> list[dict[str, Any]]:
    """The shipped alert rules, in file order (one alert may be written as several rules)."""
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _rules() -> dict[str, dict[str, Any]]:
    """The shipped alert rules by name (the rules of one alert share severity and annotations)."""
    return {rule["alert"]: rule for rule in _rule_list()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = [
        name
        for name, path in (
            ("prometheus", PROMETHEUS),
            ("prometheus-alertmanager (or alertmanager)", ALERTMANAGER),
        )
        if path is None
    ]
    if missing:
        pytest.skip(
            f"e2e needs {' and '.join(missing)} on PATH "
            "(Debian: apt-get install prometheus prometheus-alertmanager; .ci/run does)"
        )
    assert PROMETHEUS is not None and ALERTMANAGER is not None
    tmp = tmp_path_factory.mktemp("e2e")
    processes: list[Process] = []
    pager = Pager()
    try:
        exporter = start_demo_exporter(tmp, STARTUP_TIMEOUT)
        processes.append(exporter.process)
        pager.start()

        am_dir = tmp / "alertmanager"
        shutil.copytree(AM_TEMPLATES, am_dir / "templates")  # `templates/*.tmpl` is relative
        am_derived = derive_alertmanager_config(
            AM_EXAMPLE.read_text(),
            AlertmanagerOverrides(
                webhook_url=pager.webhook_url,
                smtp_smarthost=f"127.0.0.1:{pager.smtp_port}",
                group_wait=AM_GROUP_WAIT,
                group_interval=AM_GROUP_INTERVAL,
            ),
        )
        (am_dir / "alertmanager.yml").write_text(am_derived)
        alertmanager, am_port = start_server(
            "alertmanager",
            lambda port: [
                ALERTMANAGER,
                f"--config.file={am_dir / 'alertmanager.yml'}",
                f"--storage.path={am_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # no gossip: a single, isolated instance
            ],
            tmp,
            STARTUP_TIMEOUT,
        )
        processes.append(alertmanager)

        prom_dir = tmp / "prometheus"
        prom_dir.mkdir()
        rules_derived = derive_rules(RULES_FILE.read_text(), FOR_OVERRIDES, DEFAULT_FOR)
        (prom_dir / "alerts.yaml").write_text(rules_derived)
        (prom_dir / "prometheus.yml").write_text(
            prometheus_config(exporter.port, am_port, prom_dir / "alerts.yaml")
        )
        prometheus, prom_port = start_server(
            "prometheus",
            lambda port: [
                PROMETHEUS,
                f"--config.file={prom_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={prom_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                # Re-send firing alerts every evaluation, not every minute, so that an alert
                # sent before Alertmanager was discovered (also ~5 s) arrives at once.
                "--rules.alert.resend-delay=1s",
            ],
            tmp,
            STARTUP_TIMEOUT,
        )
        processes.append(prometheus)
        yield Stack(
            exporter=exporter,
            prometheus=PrometheusAPI(f"http://127.0.0.1:{prom_port}"),
            alertmanager_url=f"http://127.0.0.1:{am_port}",
            pager=pager,
            processes=processes,
            rules_derived=rules_derived,
            am_derived=am_derived,
        )
    finally:
        for process in reversed(processes):
            process.stop()
        pager.stop()


@pytest.fixture(autouse=True)
def _process_logs_on_failure(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    """Attach every process's log to the report of a failed test (shown under the failure)."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        for process in stack.processes:
            request.node.add_report_section("teardown", f"{process.name} log", process.report())
        payloads, mails = stack.pager.snapshot()
        request.node.add_report_section(
            "teardown",
            "pager",
            f"{len(payloads)} webhook payloads, {len(mails)} mails, errors: {stack.pager.errors}",
        )


# --- helpers -----------------------------------------------------------------------------------


def _alert_key(labels: dict[str, str]) -> tuple[str, str, str | None]:
    """Name, tenant, and the token (or, for the exporter's per-collector alerts, the collector)."""
    return (
        labels["alertname"],
        labels.get("tenant", ""),
        labels.get("token_name", labels.get("collector")),
    )


def _firing(stack: Stack) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    return {
        _alert_key(alert["labels"]): alert
        for alert in stack.prometheus.alerts()
        if alert["state"] == "firing"
    }


def _wait_for_expected_firing(stack: Stack) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    wanted = {expected.key for expected in EXPECTED_FIRING}

    def probe() -> dict[tuple[str, str, str | None], dict[str, Any]] | None:
        firing = _firing(stack)
        return firing if wanted <= set(firing) else None

    def describe() -> str:
        firing = set(_firing(stack))
        return f"missing: {sorted(wanted - firing, key=str)}\nfiring: {sorted(firing, key=str)}"

    result: dict[tuple[str, str, str | None], dict[str, Any]] = stack.wait_for(
        "every alert the demo should raise to fire", probe, ALERTS_DEADLINE, describe
    )
    return result


def _delivered(stack: Stack) -> dict[tuple[str, str, str | None], list[tuple[str, dict[str, Any]]]]:
    """Firing alerts the webhook received: key -> [(receiver, alert), ...]."""
    delivered: dict[tuple[str, str, str | None], list[tuple[str, dict[str, Any]]]] = {}
    for payload in stack.pager.snapshot()[0]:
        for alert in payload["alerts"]:
            if alert["status"] == "firing":
                delivered.setdefault(_alert_key(alert["labels"]), []).append(
                    (payload["receiver"], alert)
                )
    return delivered


# --- the derived configs -------------------------------------------------------------------------


def test_derived_rule_file_differs_from_the_shipped_one_only_in_for(stack: Stack) -> None:
    original = RULES_FILE.read_text()
    changes = changed_lines(original, stack.rules_derived)
    assert changes, "no `for:` was shortened"
    for before, after in changes:
        assert re.fullmatch(r"\s*for: \S+", before), before
        assert re.fullmatch(r"\s*for: \S+", after), after
    shipped, derived = yaml.safe_load(original), yaml.safe_load(stack.rules_derived)
    for group in (*shipped["groups"], *derived["groups"]):
        for rule in group["rules"]:
            rule.pop("for", None)
    assert shipped == derived
    # Every alert with a `for` got the short one.
    for group in yaml.safe_load(stack.rules_derived)["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                assert rule["for"] == FOR_OVERRIDES.get(rule["alert"], DEFAULT_FOR), rule["alert"]


def test_derived_alertmanager_config_differs_only_in_receivers_and_grouping_delays(
    stack: Stack,
) -> None:
    shipped = yaml.safe_load(AM_EXAMPLE.read_text())
    derived = yaml.safe_load(stack.am_derived)
    differences = structural_differences(shipped, derived)
    unexpected = [
        path
        for path in differences
        if not any(re.fullmatch(pattern, path) for pattern in AM_ALLOWED_DIFFERENCES)
    ]
    assert unexpected == []
    for receiver in derived["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            assert webhook["url"] == stack.pager.webhook_url
    assert derived["global"]["smtp_smarthost"] == f"127.0.0.1:{stack.pager.smtp_port}"


# --- Prometheus --------------------------------------------------------------------------------


def test_prometheus_scrapes_the_exporter(stack: Stack) -> None:
    def target_up() -> dict[str, Any] | None:
        targets = stack.prometheus.targets()  # empty until discovery, ~5 s after start
        assert len(targets) <= 1, targets
        return targets[0] if targets and targets[0]["health"] == "up" else None

    target = stack.wait_for("the exporter target to be up", target_up, STARTUP_TIMEOUT * 2)
    assert target["labels"]["job"] == EXPORTER_JOB
    assert target["scrapeUrl"] == f"{stack.exporter.base_url}/metrics"
    assert target["lastError"] == ""
    up = stack.prometheus.query(f'up{{job="{EXPORTER_JOB}"}}')
    assert [sample["value"][1] for sample in up] == ["1"]
    tenants = stack.prometheus.query("intune_tenant_info")
    assert sorted(sample["metric"]["tenant"] for sample in tenants) == sorted(ALL_TENANTS)


def test_prometheus_loaded_and_evaluates_every_shipped_rule(stack: Stack) -> None:
    shipped = _rules()

    def evaluated() -> list[dict[str, Any]] | None:
        rules = stack.prometheus.alert_rules()
        done = all(not rule["lastEvaluation"].startswith("0001") for rule in rules)
        return rules if done and rules else None

    rules = stack.wait_for("every rule to be evaluated", evaluated, STARTUP_TIMEOUT)
    assert sorted(rule["name"] for rule in rules) == sorted(rule["alert"] for rule in _rule_list())
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        # A rule without `for` (it fires at once) keeps none.
        has_for = "for" in shipped[rule["name"]]
        expected_for = FOR_OVERRIDES.get(rule["name"], DEFAULT_FOR) if has_for else "0s"
        assert rule["duration"] == float(expected_for.removesuffix("s")), rule["name"]
    stack.wait_for(
        "Prometheus to discover the Alertmanager",
        lambda: stack.prometheus.alertmanagers() == [f"{stack.alertmanager_url}/api/v2/alerts"],
        STARTUP_TIMEOUT,
    )


def test_every_alert_the_demo_data_should_raise_fires(stack: Stack) -> None:
    firing = _wait_for_expected_firing(stack)
    shipped = _rules()
    for expected in EXPECTED_FIRING:
        alert = firing[expected.key]
        labels, annotations = alert["labels"], alert["annotations"]
        rule = shipped[expected.alertname]
        assert labels["severity"] == rule["labels"]["severity"], expected
        assert labels["job"] == EXPORTER_JOB
        for name, value in expected.labels:
            assert labels.get(name) == value, (expected, labels)
        if expected.token_name is not None:
            assert labels["token_id"], expected
            assert f'"{expected.token_name}"' in annotations["description"], annotations
        assert expected.tenant in annotations["description"], annotations
        # Static annotations as shipped; the templated ones rendered (no template left over).
        for name in ("summary", "runbook_url", "troubleshooting_url"):
            assert annotations.get(name) == rule["annotations"].get(name), (expected, name)
        assert "{{" not in annotations["description"]
        assert annotations["dashboard_url"].startswith("/d/intune-")
        # `urlquery` in the rule: "Adatum Corporation" becomes Adatum+Corporation.
        assert annotations["dashboard_url"].endswith(f"var-tenant={quote_plus(expected.tenant)}")

    school = firing[("IntuneAdeTokenSyncError", "northwind", "Northwind School")]
    assert school["value"] in ("3e+00", "3")
    assert "error code 3" in school["annotations"]["description"]
    assert "terms and conditions must be accepted" in school["annotations"]["description"]
    assert school["annotations"]["troubleshooting_url"] == links.ADE_SYNC_TROUBLESHOOTING
    shared = firing[("IntuneAdeTokenExpired", "northwind", "Northwind Shared")]
    assert re.search(r"expired 10\.\d days ago", shared["annotations"]["description"])
    loaners = firing[("IntuneAdeTokenSyncStale", "northwind", "Northwind Loaners")]
    assert "last synced successfully 3d " in loaners["annotations"]["description"]
    auth = firing[("IntuneExporterAuthFailing", "tailspin", None)]
    assert float(auth["value"]) >= 1
    assert "rotate it" in auth["annotations"]["description"]


def test_alerts_the_demo_data_must_not_raise_stay_silent(stack: Stack) -> None:
    _wait_for_expected_firing(stack)
    active = stack.prometheus.alerts()  # pending and firing
    keys = [_alert_key(alert["labels"]) for alert in active]
    assert len(keys) == len(set(keys)), "two active alerts with the same name, tenant and token"
    polls = {
        sample["metric"]["tenant"]: float(sample["value"][1])
        for sample in stack.prometheus.query("intune_tenant_polls_total")
    }
    extra = set(keys) - {expected.key for expected in EXPECTED_FIRING}
    for expected in EXPECTED_STALE:  # may already be on its way (its own test)
        if polls[expected.tenant] > 3:
            extra.discard(expected.key)
    assert extra == set()
    names = {key[0] for key in keys}
    assert names.isdisjoint(SILENT_RULES)
    assert not [key for key in keys if key[1] in HEALTHY_TENANTS]
    assert not [
        key
        for key in keys
        if key[0] == "IntuneExporterTenantDataStale" and key[1] not in DOWN_TENANTS
    ]
    # The silence means something: the data these rules watch is there and fresh.
    # contoso, fabrikam, woodgrove, Alpine Ski House, Litware Inc
    assert len(stack.prometheus.query("intune_apns_certificate_days_to_expiry > 7")) == 5
    assert stack.prometheus.query(
        'increase(intune_tenant_poll_errors_total{reason="auth"}[1m]) > 0'
    )
    assert not stack.prometheus.query(
        'increase(intune_tenant_poll_errors_total{reason="forbidden"}[1m]) > 0'
    )
    # Nothing the demo must not raise ever reached the pager either.
    delivered = _delivered(stack)
    assert not [key for key in delivered if key[0] in SILENT_RULES or key[1] in HEALTHY_TENANTS]


# --- Alertmanager --------------------------------------------------------------------------------


def test_alertmanager_delivers_the_critical_alerts_with_their_links(stack: Stack) -> None:
    shipped = _rules()
    critical = {
        expected.key
        for expected in EXPECTED_FIRING
        if shipped[expected.alertname]["labels"]["severity"] == "critical"
        and expected.key not in INHIBITED
    }
    warning = {
        expected.key
        for expected in EXPECTED_FIRING
        if shipped[expected.alertname]["labels"]["severity"] == "warning"
        and expected.key not in INHIBITED
    }

    def all_delivered() -> dict[Any, Any] | None:
        delivered = _delivered(stack)
        return delivered if (critical | warning) <= set(delivered) else None

    def describe() -> str:
        return f"missing: {sorted((critical | warning) - set(_delivered(stack)), key=str)}"

    delivered = stack.wait_for(
        "the pager to receive every alert not inhibited", all_delivered, ALERTS_DEADLINE, describe
    )
    assert len(critical) == 9  # fabrikam 3, northwind 4, tailspin 1, Adatum 1
    for key in critical | warning:
        rule = shipped[key[0]]
        severity = rule["labels"]["severity"]
        for receiver, alert in delivered[key]:
            assert receiver == f"intune-{severity}", key
            labels, annotations = alert["labels"], alert["annotations"]
            assert labels["tenant"] == key[1]
            assert labels.get("token_name") == key[2]
            assert annotations["runbook_url"] == rule["annotations"]["runbook_url"]
            assert annotations.get("troubleshooting_url") == rule["annotations"].get(
                "troubleshooting_url"
            )
    with_troubleshooting = {
        key for key in critical if delivered[key][0][1]["annotations"].get("troubleshooting_url")
    }
    assert with_troubleshooting == {
        key for key in critical if "troubleshooting_url" in shipped[key[0]]["annotations"]
    }
    assert ("IntuneAdeTokenSyncError", "northwind", "Northwind School") in with_troubleshooting
    # Notifications are grouped by tenant.
    for payload in stack.pager.snapshot()[0]:
        assert set(payload["groupLabels"]) == {"tenant"}, payload["groupLabels"]
        assert {alert["labels"]["tenant"] for alert in payload["alerts"]} == {
            payload["groupLabels"]["tenant"]
        }
    assert stack.pager.errors == []


def test_alertmanager_inhibits_the_warning_and_the_superseded_critical(stack: Stack) -> None:
    _wait_for_expected_firing(stack)

    def suppressed() -> dict[Any, Any] | None:
        alerts = get_json(f"{stack.alertmanager_url}/api/v2/alerts")
        by_key = {_alert_key(alert["labels"]): alert for alert in alerts}
        done = all(key in by_key and by_key[key]["status"]["inhibitedBy"] for key in INHIBITED)
        return by_key if done else None

    def describe() -> str:
        alerts = get_json(f"{stack.alertmanager_url}/api/v2/alerts")
        return "\n".join(f"{_alert_key(a['labels'])}: {a['status']}" for a in alerts)

    by_key = stack.wait_for("Alertmanager to inhibit", suppressed, ALERTS_DEADLINE, describe)
    fingerprints = {alert["fingerprint"]: key for key, alert in by_key.items()}
    for key, allowed in INHIBITED.items():
        status = by_key[key]["status"]
        assert status["state"] == "suppressed", (key, status)
        sources = {fingerprints[fp][0] for fp in status["inhibitedBy"]}
        assert sources and sources <= allowed, (key, sources)
        assert all(fingerprints[fp][1:] == key[1:] for fp in status["inhibitedBy"]), key
    delivered = _delivered(stack)
    never_sent = [key for key in INHIBITED if key[0] != "IntuneExporterTenantDown"]
    assert [key for key in never_sent if key in delivered] == []


def test_alertmanager_mails_render_the_notification_templates(stack: Stack) -> None:
    def northwind_sync_error_mail() -> Any:
        for mail in stack.pager.snapshot()[1]:
            if "tenant northwind" in mail.subject and "IntuneAdeTokenSyncError" in mail.body(
                "plain"
            ):
                return mail
        return None

    mail = stack.wait_for(
        "a critical mail about northwind's sync error", northwind_sync_error_mail, ALERTS_DEADLINE
    )
    assert mail.recipients == ["<mdm-oncall@example.com>"]
    assert re.fullmatch(r"\[FIRING:\d+\] Intune Apple credentials, tenant northwind", mail.subject)
    text = mail.body("plain")
    assert "[CRITICAL] IntuneAdeTokenSyncError" in text
    assert "Token: Northwind School" in text
    assert "Apple ID: abm-admin@northwind.example" in text
    assert f"Runbook: {links.ADE_RENEW}" in text
    assert f"Troubleshooting: {links.ADE_SYNC_TROUBLESHOOTING}" in text
    assert "Dashboard: http://localhost:3000/d/intune-apple-tokens?var-tenant=northwind" in text
    html = mail.body("html")
    assert f'<a href="{links.ADE_SYNC_TROUBLESHOOTING}">' in html
    assert "<td>Northwind School</td>" in html

    def tailspin_auth_mail() -> Any:
        for mail in stack.pager.snapshot()[1]:
            plain = mail.body("plain")
            if "IntuneExporterAuthFailing" in plain and "Tenant: tailspin" in plain:
                return mail
        return None

    auth = stack.wait_for("a mail about tailspin's auth", tailspin_auth_mail, ALERTS_DEADLINE)
    runbook = _rules()["IntuneExporterAuthFailing"]["annotations"]["runbook_url"]
    assert f"Runbook: {runbook}" in auth.body("plain")
    assert "Tenant: tailspin" in auth.body("plain")


# --- Grafana's queries -------------------------------------------------------------------------


def test_every_dashboard_query_runs_and_returns_the_demo_data(stack: Stack) -> None:
    panels, variables = all_demo_queries()
    assert len(panels) >= 40 and len(variables) >= 6
    stack.wait_for(
        "tailspin's auth errors to be counted twice",
        lambda: stack.prometheus.query(
            'increase(intune_tenant_poll_errors_total{tenant="tailspin", reason="auth"}[1m]) > 0'
        ),
        ALERTS_DEADLINE,
    )

    def run_all() -> dict[str, int]:
        """Series per query; a query Prometheus rejects fails the test at once."""
        end = time.time()
        counts: dict[str, int] = {}
        for query in panels:
            name = f"{query.dashboard_uid} #{query.panel_id} {query.panel_title} {query.ref_id}"
            if query.instant:
                counts[name] = len(stack.prometheus.query(query.expr))
            else:
                result = stack.prometheus.query_range(query.expr, end - 60, end, 5)
                counts[name] = sum(1 for series in result if series["values"])
        return counts

    def with_data() -> dict[str, int] | None:
        counts = run_all()
        wanted = [
            f"{q.dashboard_uid} #{q.panel_id} {q.panel_title} {q.ref_id}"
            for q in panels
            if q.expect_data
        ]
        return counts if all(counts[name] for name in wanted) else None

    def describe() -> str:
        return "\n".join(f"{n}: {c} series" for n, c in run_all().items() if not c)

    stack.wait_for("every panel meant to show demo data to have data", with_data, 30, describe)

    for query in panels:
        if (query.dashboard_uid, query.panel_title) in EXPECTED_STATS:
            [sample] = stack.prometheus.query(query.expr)
            expected = EXPECTED_STATS[(query.dashboard_uid, query.panel_title)]
            assert float(sample["value"][1]) == expected, query.panel_title
    assert {(q.dashboard_uid, q.panel_title) for q in panels} >= set(EXPECTED_STATS)

    for variable in variables:
        values = {s["metric"][variable.label] for s in stack.prometheus.query(variable.as_promql())}
        expected_values = {"job": {EXPORTER_JOB}, "tenant": set(ALL_TENANTS)}[variable.name]
        assert values == expected_values, (variable.dashboard_uid, variable.name)


# --- last, as it needs the most time ---------------------------------------------------------


def test_tenant_data_stale_fires_for_a_tenant_never_polled_successfully(stack: Stack) -> None:
    keys = {expected.key for expected in EXPECTED_STALE}

    def stale() -> dict[tuple[str, str, str | None], dict[str, Any]] | None:
        firing = {key: alert for key, alert in _firing(stack).items() if key in keys}
        return firing if len(firing) == len(keys) else None

    alerts = stack.wait_for(
        "IntuneExporterTenantDataStale for each collector of each down tenant (after 4 polls)",
        stale,
        STALE_DEADLINE,
    )
    for (_, tenant, collector), alert in alerts.items():
        assert alert["labels"]["last_success"] == "never"
        assert alert["labels"]["severity"] == "critical"
        polls = float(alert["value"])
        assert polls > 3
        assert (
            f"None of the {polls:.0f} polls of tenant {tenant} since the exporter started has run"
            f" its {collector} collector successfully" in alert["annotations"]["description"]
        )
    others = [
        a["labels"]["tenant"]
        for a in stack.prometheus.alerts()
        if a["labels"]["alertname"] == "IntuneExporterTenantDataStale"
        and a["labels"]["tenant"] not in DOWN_TENANTS
    ]
    assert others == []
    stack.wait_for(
        "the pager to receive the down tenants' stale alerts",
        lambda: (
            all(
                any(receiver == "intune-critical" for receiver, _ in _delivered(stack).get(key, []))
                for key in keys
            )
            or None
        ),
        STALE_DEADLINE,
    )
