"""README documents every config key, flag, metric and alert (the public contract)."""

from __future__ import annotations

from pathlib import Path

import yaml

from exporter.cli import build_parser
from exporter.config import ExporterConfig, TenantConfig
from exporter.metrics import metric_specs

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_metric_is_documented() -> None:
    missing = [spec.name for spec in metric_specs() if f"`{spec.name}`" not in README]
    assert missing == []


def test_every_config_key_is_documented_in_readme_and_example() -> None:
    example = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    keys = {
        key
        for model in (ExporterConfig, TenantConfig)
        for key, field in model.model_fields.items()
        if not field.exclude  # internal fields are no config keys
    } | {"defaults"}
    assert [key for key in sorted(keys) if f"`{key}`" not in README] == []
    assert [key for key in sorted(keys) if f"{key}:" not in example] == []


def test_every_flag_is_documented() -> None:
    flags = [
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    assert len(flags) == 15
    assert [flag for flag in flags if f"`{flag}`" not in README] == []


def test_every_alert_is_documented() -> None:
    rules = yaml.safe_load((ROOT / "prometheus" / "alerts.yaml").read_text(encoding="utf-8"))
    alerts = [
        rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule
    ]
    assert len(alerts) >= 18
    assert [alert for alert in alerts if f"`{alert}`" not in README] == []
