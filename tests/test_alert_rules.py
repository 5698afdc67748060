"""Checks of the alert rules, their promtool unit tests, the Alertmanager example and the runbook.

promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager` packages; the
tests that need a binary skip, saying so, when it is absent. The Alertmanager tests at the end run
the real Alertmanager on loopback to prove the inhibit rules and the notification template.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from exporter import links

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "prometheus" / "alerts_test.yaml"
# Rules that look back days, tested at an hourly evaluation interval.
RULE_TESTS_7D = ROOT / "prometheus" / "alerts_test_7d.yaml"
RULE_TEST_FILES = (RULE_TESTS, RULE_TESTS_7D)
AM_CONFIG = ROOT / "alertmanager" / "alertmanager.example.yaml"
AM_TEMPLATES = ROOT / "alertmanager" / "templates"
RUNBOOK = ROOT / "docs" / "runbook.md"

JOB = "intune-apple-token-exporter"
DASHBOARD_UIDS = ("intune-apple-tokens", "intune-apple-tenant", "intune-exporter-health")
ALERT_NAME = re.compile(r"^Intune(?:[A-Z][a-z0-9]+)+$")
# Alerts on a 0/1 state, whose value the description puts in words instead of printing it.
STATE_ALERTS = {
    "IntuneVppTokenNotValid",
    "IntuneVppTokenSyncFailing",
    "IntuneExporterTenantDown",
    "IntuneExporterDown",
    "IntuneExporterConfigReloadFailed",
}


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed (Debian: apt-get install prometheus prometheus-alertmanager)"
        )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


# ---------------------------------------------------------------------------------- the binaries


def test_promtool_check_rules_is_clean() -> None:
    result = _run(_binary("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 28 rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _run(_binary("promtool"), "test", "rules", *map(str, RULE_TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TEST_FILES)


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A threshold moved by one step must break the unit tests, or they prove nothing: the
    default (a tenant without threshold series) and a tenant's own threshold alike."""
    promtool = _binary("promtool")
    rules = RULES.read_text()
    assert rules.count(" * 0 + 30\n") == 3  # ADE, VPP and APNs warnings
    own = 'intune_tenant_threshold_seconds{threshold="expiry_warning"}) / 86400\n'
    assert rules.count(own) == 3
    mutations = {
        "default": rules.replace(" * 0 + 30\n", " * 0 + 30.001\n"),
        "own": rules.replace(own, own.replace("/ 86400", "/ 86400 - 16")),
    }
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yaml")
    for name, mutated in mutations.items():
        (tmp_path / "alerts.yaml").write_text(mutated)
        result = _run(promtool, "test", "rules", str(tmp_path / "alerts_test.yaml"))
        assert result.returncode != 0, name
        assert "IntuneAdeTokenExpiringSoon" in result.stdout + result.stderr, name


def test_amtool_accepts_the_example_config() -> None:
    result = _run(_binary("amtool"), "check-config", str(AM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 inhibit rules" in result.stdout
    assert "1 templates" in result.stdout


@pytest.mark.parametrize(
    ("severity", "receiver"),
    [("critical", "intune-critical"), ("warning", "intune-warning"), ("info", "intune-webhook")],
)
def test_example_config_routes_by_severity(severity: str, receiver: str) -> None:
    result = _run(
        _binary("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={AM_CONFIG}",
        f"severity={severity}",
        "tenant=contoso",
        "alertname=IntuneAdeTokenExpiringSoon",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_example_config_groups_by_tenant_and_has_one_webhook_url() -> None:
    text = AM_CONFIG.read_text()
    config = yaml.safe_load(text)
    assert config["route"]["group_by"] == ["tenant"]
    # The e2e suite swaps the address on this one line; the other receivers alias it.
    assert (
        len(re.findall(r"^\s*- url: &webhook_url http://127\.0\.0\.1:9095/alerts$", text, re.M))
        == 1
    )
    urls = {
        hook["url"]
        for receiver in config["receivers"]
        for hook in receiver.get("webhook_configs", [])
    }
    assert urls == {"http://127.0.0.1:9095/alerts"}
    assert any(receiver.get("email_configs") for receiver in config["receivers"])
    assert "# - name: intune-teams" in text
    assert "#   msteams_configs:" in text


# ------------------------------------------------------------------------- the rules themselves


def test_every_alert_follows_the_conventions() -> None:
    rules = _alert_rules()
    assert len({rule["alert"] for rule in rules}) == 27
    runbook_anchors = _anchors(RUNBOOK.read_text())
    from exporter import links

    for rule in rules:
        name = rule["alert"]
        labels, annotations = rule["labels"], rule["annotations"]
        assert ALERT_NAME.match(name), name
        assert labels["severity"] in {"critical", "warning", "info"}, name
        assert re.fullmatch(r"[a-z_]+", labels["alert_family"]), name
        assert annotations["summary"] and "{{" not in annotations["summary"], name
        description = annotations["description"]
        # Who is affected: the tenant, or the exporter (an instance, or a job for shard alerts).
        assert any(f"$labels.{label}" in description for label in ("tenant", "instance", "job"))
        if name not in STATE_ALERTS:
            assert "$value" in description, name
        if "token" in labels["alert_family"] or "certificate" in labels["alert_family"]:
            assert "$labels.apple_id" in description, name
        if "_token_" in labels["alert_family"]:
            assert "$labels.token_name" in description, name
        # Absolute, so a pager, Slack or Alertmanager's page can open it: Microsoft's page for
        # the credential, or our runbook's section under the one base (exporter.links).
        runbook = annotations["runbook_url"]
        assert runbook.startswith("https://"), name
        if runbook.startswith(links.RUNBOOK_BASE + "#"):
            assert runbook == f"{links.RUNBOOK_BASE}#{name.lower()}", name
            assert name.lower() in runbook_anchors, name
        else:
            assert runbook in links.ALL, name
        uid = annotations["dashboard_url"].split("?")[0].removeprefix("/d/")
        assert uid in DASHBOARD_UIDS, name


def test_token_alerts_link_the_renewal_page_of_their_credential() -> None:
    from exporter import links

    expected = {
        "IntuneAdeToken": links.ADE_RENEW,
        "IntuneVpp": links.VPP_RENEW,
        "IntuneApns": links.APNS_RENEW,
    }
    runbook = RUNBOOK.read_text()
    for rule in _alert_rules():
        for prefix, url in expected.items():
            if not rule["alert"].startswith(prefix):
                continue
            link = rule["annotations"]["runbook_url"]
            if link.startswith(links.RUNBOOK_BASE + "#"):
                # An alert with steps of its own (a renewal gone wrong): its section links the page.
                section = runbook.split(f"\n## {rule['alert']}\n", 1)[1].split("\n## ", 1)[0]
                assert url in section, rule["alert"]
            else:
                assert link == url, rule["alert"]


def test_device_alerts_link_the_profile_and_troubleshooting_pages() -> None:
    """The symptoms are fixed with profiles, not by renewing the token: their runbook_url is
    Microsoft's page on enrollment profiles or on enrollment errors, and none links renewal."""
    from exporter import links

    device_alerts = {
        r["alert"]: r for r in _alert_rules() if r["labels"]["alert_family"] == "ade_devices"
    }
    assert set(device_alerts) == {
        "IntuneAdeDevicesWithoutProfile",
        "IntuneAdeEnrollmentFailures",
        "IntuneAdeDefaultProfileMissing",
    }
    for name, rule in device_alerts.items():
        annotations = rule["annotations"]
        assert annotations["runbook_url"] in (
            links.ADE_ENROLLMENT_PROFILE,
            links.ADE_ENROLLMENT_TROUBLESHOOTING,
        ), name
        assert annotations["troubleshooting_url"] in links.ALL, name
        assert annotations["dashboard_url"].startswith("/d/intune-apple-tenant?"), name
        assert "$labels.token_name" in annotations["description"], name
        assert "$labels.platform" in annotations["description"], name
        assert rule["labels"]["severity"] == "warning", name


def test_exporter_down_matches_the_documented_job() -> None:
    (rule,) = [r for r in _alert_rules() if r["alert"] == "IntuneExporterDown"]
    assert f'up{{job="{JOB}"}} == 0' in rule["expr"]
    assert f'absent(up{{job="{JOB}"}})' in rule["expr"]


def test_rules_use_only_metrics_the_exporter_exposes() -> None:
    from exporter.metrics import metric_specs

    exposed = {spec.name for spec in metric_specs()}
    used = set()
    for rule in _alert_rules():
        # Label names in this project never start with intune_, so every such word is a metric.
        used |= set(re.findall(r"\bintune_[a-z0-9_]+\b", rule["expr"]))
    assert len(used) >= 15
    assert used <= exposed, sorted(used - exposed)


def test_unit_test_series_look_like_the_exporters_own() -> None:
    """The unit tests' input series have the exporter's label sets, so the joins are proven."""
    from exporter.metrics import metric_specs

    labels_of = {spec.name: set(spec.labels) for spec in metric_specs()}
    checked = 0
    for group in [g for f in RULE_TEST_FILES for g in yaml.safe_load(f.read_text())["tests"]]:
        for item in group["input_series"]:
            match = re.fullmatch(r"(\w+)\{(.*)\}", item["series"])
            assert match, item["series"]
            name, labels = match.group(1), set(re.findall(r'(\w+)="', match.group(2)))
            if name == "up":
                continue
            assert name in labels_of, name
            assert labels == labels_of[name] | {"job", "instance"}, item["series"]
            checked += 1
    assert checked > 100


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    groups = [g for f in RULE_TEST_FILES for g in yaml.safe_load(f.read_text())["tests"]]
    for group in groups:
        for case in group["alert_rule_test"]:
            (fired if case["exp_alerts"] else silent).add(case["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert names - fired == set()
    assert names - silent == set()


def test_runbook_has_a_section_for_every_alert() -> None:
    headings = set(re.findall(r"^## (Intune\w+)$", RUNBOOK.read_text(), re.M))
    assert headings == {rule["alert"] for rule in _alert_rules()}


# ------------------------------------------------------------------- the real Alertmanager 0.25

T = TypeVar("T")


def _wait_for(probe: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll `probe` until it returns something other than None, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Receiver(http.server.ThreadingHTTPServer):
    """Collects the JSON bodies Alertmanager posts, by path."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.bodies.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def received(self, path: str) -> list[Any]:
        with self.lock:
            return [body for p, body in self.bodies if p == path]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, _Receiver]]:
    """The example config on a real Alertmanager, its receivers pointed at a local server.

    The webhook keeps its place; a Slack-format receiver is added next to the critical one so
    that the notification template is rendered by Alertmanager itself and can be read back.
    """
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.skip("prometheus-alertmanager is not installed (Debian: prometheus-alertmanager)")
    receiver = _Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{receiver.server_address[1]}"

    text = AM_CONFIG.read_text().replace("http://127.0.0.1:9095/alerts", f"{base}/webhook")
    config = yaml.safe_load(text)
    config["templates"] = [str(AM_TEMPLATES / "*.tmpl")]
    for route in [config["route"], *config["route"]["routes"]]:
        route["group_wait"] = "0s"
    for entry in config["receivers"]:
        entry.pop("email_configs", None)  # no mail relay here
        if entry["name"] == "intune-critical":
            entry["slack_configs"] = [
                {
                    "api_url": f"{base}/chat",
                    "channel": "#mdm",
                    "title": '{{ template "intune.title" . }}',
                    "text": '{{ template "intune.text" . }}',
                }
            ]
    (tmp_path / "alertmanager.yaml").write_text(yaml.safe_dump(config))

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "alertmanager.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'alertmanager.yaml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool | None:
        if process.poll() is not None:
            pytest.fail("Alertmanager exited:\n" + (tmp_path / "alertmanager.log").read_text())
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                return True if response.status == 200 else None
        except OSError:
            return None

    try:
        _wait_for(ready, "Alertmanager to be ready")
        yield url, receiver
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        receiver.shutdown()
        receiver.server_close()


def _post_alerts(url: str, alerts: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(
        f"{url}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_critical_inhibits_only_the_warning_it_supersedes(
    alertmanager: tuple[str, _Receiver],
) -> None:
    url, _ = alertmanager

    def t(token_id: str) -> dict[str, str]:
        return {"tenant": "fabrikam", "token_id": token_id}

    fab = {"tenant": "fabrikam"}
    tailspin = {"tenant": "tailspin"}
    # key: alertname without "Intune", severity, alert_family, further labels, ends up muted
    cases: dict[str, tuple[str, str, str, dict[str, str], bool]] = {
        # a critical of the same token and family mutes the warning ...
        "soon-1": ("AdeTokenExpiringSoon", "warning", "ade_token_expiry", t("ade-1"), True),
        "crit-1": ("AdeTokenExpiringCritical", "critical", "ade_token_expiry", t("ade-1"), False),
        # ... but not the same token's warning of another family,
        "stale-1": ("AdeTokenSyncStale", "warning", "ade_token_sync", t("ade-1"), False),
        # ... nor the same family's warning about another token
        "soon-2": ("AdeTokenExpiringSoon", "warning", "ade_token_expiry", t("ade-2"), False),
        "error-2": ("AdeTokenSyncError", "critical", "ade_token_sync", t("ade-2"), False),
        # Expired mutes ExpiringCritical and the sync alerts of the same token
        "crit-3": ("AdeTokenExpiringCritical", "critical", "ade_token_expiry", t("ade-3"), True),
        "exp-3": ("AdeTokenExpired", "critical", "ade_token_expiry", t("ade-3"), False),
        "stale-3": ("AdeTokenSyncStale", "warning", "ade_token_sync", t("ade-3"), True),
        "error-3": ("AdeTokenSyncError", "critical", "ade_token_sync", t("ade-3"), True),
        # the token's expiry or sync error mutes the alerts about its devices, not another's
        "nopro-3": ("AdeDevicesWithoutProfile", "warning", "ade_devices", t("ade-3"), True),
        "fail-2": ("AdeEnrollmentFailures", "warning", "ade_devices", t("ade-2"), True),
        "nodef-1": ("AdeDefaultProfileMissing", "warning", "ade_devices", t("ade-1"), False),
        "vexp-1": ("VppTokenExpired", "critical", "vpp_token_expiry", t("vpp-1"), False),
        "vsync-1": ("VppTokenSyncFailing", "warning", "vpp_token_state", t("vpp-1"), True),
        # the tenant's APNs warning shares neither token_id nor family with a critical above
        "apns": ("ApnsCertificateExpiringSoon", "warning", "apns_certificate_expiry", fab, False),
        # tenant-level alerts carry no token_id: the auth failure mutes TenantDown ...
        "down": ("ExporterTenantDown", "warning", "exporter_tenant", tailspin, True),
        "auth": ("ExporterAuthFailing", "critical", "exporter_tenant", tailspin, False),
        # ... but not PermissionMissing, which names a cause of its own
        "perm": (
            "ExporterPermissionMissing", "warning", "exporter_permission",
            {**tailspin, "collector": "vpp"}, False,
        ),
    }  # fmt: skip
    sent = {
        key: {
            "alertname": f"Intune{name}",
            "severity": severity,
            "alert_family": family,
            "job": JOB,
            **extra,
        }
        for key, (name, severity, family, extra, _) in cases.items()
    }
    _post_alerts(url, [{"labels": labels} for labels in sent.values()])

    def states() -> dict[str, bool] | None:
        with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
            listed = json.load(response)
        if len(listed) < len(sent):
            return None
        muted = {
            json.dumps(a["labels"], sort_keys=True): bool(a["status"]["inhibitedBy"])
            for a in listed
        }
        return {key: muted[json.dumps(labels, sort_keys=True)] for key, labels in sent.items()}

    expected = {key: case[4] for key, case in cases.items()}
    observed = _wait_for(states, "Alertmanager to list the alerts")
    # Alertmanager's inhibitor takes in source alerts on its own goroutine: an alert can be
    # listed before the inhibitions that apply to it are known (seen once in CI). Poll until
    # the states settle; a wrong rule never does, and fails with what was listed last.
    deadline = time.monotonic() + 20
    while observed != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        observed = states() or observed
    assert observed == expected


def test_notification_names_tenant_token_and_links(alertmanager: tuple[str, _Receiver]) -> None:
    url, receiver = alertmanager
    from exporter import links

    _post_alerts(
        url,
        [
            {
                "labels": {
                    "alertname": "IntuneAdeTokenExpired",
                    "severity": "critical",
                    "alert_family": "ade_token_expiry",
                    "job": JOB,
                    "tenant": "northwind",
                    "token_id": "ade-1",
                    "token_name": "Northwind Shared",
                    "apple_id": "mdm@northwind.com",
                },
                "annotations": {
                    "summary": "An Apple ADE enrollment program token has expired.",
                    "description": 'ADE token "Northwind Shared" expired 10.0 days ago.',
                    "runbook_url": links.ADE_RENEW,
                    "troubleshooting_url": links.ADE_SYNC_TROUBLESHOOTING,
                    "dashboard_url": "/d/intune-apple-tokens?var-tenant=northwind",
                },
            }
        ],
    )
    chat = _wait_for(lambda: receiver.received("/chat") or None, "the chat notification")
    attachment = chat[0]["attachments"][0]
    assert attachment["title"] == "[FIRING:1] Intune Apple credentials, tenant northwind"
    text = attachment["text"]
    for line in [
        "[CRITICAL] IntuneAdeTokenExpired",
        "An Apple ADE enrollment program token has expired.",
        'ADE token "Northwind Shared" expired 10.0 days ago.',
        "Tenant: northwind",
        "Token: Northwind Shared",
        "Token id: ade-1",
        "Apple ID: mdm@northwind.com",
        f"Runbook: {links.ADE_RENEW}",
        f"Troubleshooting: {links.ADE_SYNC_TROUBLESHOOTING}",
        "Dashboard: http://localhost:3000/d/intune-apple-tokens?var-tenant=northwind",
    ]:
        assert line in text.splitlines(), (line, text)

    webhook = _wait_for(lambda: receiver.received("/webhook") or None, "the webhook notification")
    (alert,) = webhook[0]["alerts"]
    assert webhook[0]["receiver"] == "intune-critical"
    assert alert["labels"]["token_name"] == "Northwind Shared"
    assert alert["annotations"]["troubleshooting_url"] == links.ADE_SYNC_TROUBLESHOOTING


def test_the_runbook_base_is_set_in_one_place() -> None:
    """gen_prometheusrule.py puts every runbook_url of ours under one base and leaves
    Microsoft's pages alone; the shipped files are already under exporter.links.RUNBOOK_BASE."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_prometheusrule.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = (
        "          runbook_url: docs/runbook.md#intuneexporterdown\n"
        "              runbook_url: 'https://old.example/runbook.md#intuneexportershardmissing'\n"
        f"          runbook_url: {links.APNS_RENEW}\n"
    )
    assert gen.with_runbook_base(text, "https://wiki.example.com/intune") == (
        "          runbook_url: https://wiki.example.com/intune#intuneexporterdown\n"
        "              runbook_url: 'https://wiki.example.com/intune#intuneexportershardmissing'\n"
        f"          runbook_url: {links.APNS_RENEW}\n"
    )
    result = _run(sys.executable, str(ROOT / "scripts" / "gen_prometheusrule.py"), "--check")
    assert result.returncode == 0, result.stderr
