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


def _block_after(marker: str, fence: str) -> str:
    """The first fenced block of kind `fence` after `marker`, dedented."""
    rest = README[README.index(marker) :]
    start = rest.index(f"```{fence}\n") + len(fence) + 4
    body = rest[start : rest.index("```", start)]
    lines = body.splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines) + "\n"


def test_the_first_tenant_walk_through_runs_as_written(tmp_path: Path) -> None:
    """The README's smallest config, with the secret file it names, passes --check-config with
    exactly the output the README shows; without the file, the problem is named."""
    import subprocess
    import sys

    (tmp_path / "config.yaml").write_text(_block_after("<!-- first-tenant-config", "yaml"))
    command = [sys.executable, "-m", "exporter", "--config.file=config.yaml", "--check-config"]

    missing = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 2
    assert "config.yaml: tenants[contoso].client_secret_file: secret file" in missing.stderr
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr

    (tmp_path / "client-secret.txt").write_text("PASTE-THE-SECRET-VALUE\n")
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    readme_console = README[
        README.index("$ intune-apple-token-exporter --config.file=config.yaml") :
    ]
    expected = readme_console.splitlines()[1].strip()
    assert result.stdout.strip() == expected == "configuration is valid (config.yaml: 1 tenant)"


def test_the_flag_table_matches_help() -> None:
    """Every flag of --help is a row of README's table, in the same order, with its default;
    every flag has help text."""
    section = README[
        README.index("## Command line") : README.index("### Reloading the configuration")
    ]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| `--")
    ]
    table = {row[0].strip("`"): row[1] for row in rows}
    actions = [
        action
        for action in build_parser()._actions
        if action.option_strings[-1].startswith("--") and action.option_strings[-1] != "--help"
    ]
    assert [row[0].strip("`") for row in rows] == [a.option_strings[-1] for a in actions]
    for action in actions:
        flag = action.option_strings[-1]
        assert action.help and len(action.help) > 10, flag
        default = action.default
        if default is None or default is False or default == "==SUPPRESS==":
            assert table[flag] in ("—", "off"), flag
        else:
            assert table[flag] == f"`{default}`", flag
