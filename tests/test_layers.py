"""The module structure: the collector-name leaf list, and the demo kept out of a normal start."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from exporter.collector_names import COLLECTOR_NAMES
from exporter.kinds import KINDS


def test_collector_names_are_the_registry_keys() -> None:
    # config validates `collect:` against the leaf list; the registry is what actually runs.
    assert tuple(KINDS) == COLLECTOR_NAMES


def test_a_normal_start_loads_neither_the_simulator_nor_its_ca() -> None:
    code = (
        "import sys, exporter.cli\n"
        "exporter.cli.build_parser()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('exporter.demo', 'trustme')))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_every_module_has_a_layer() -> None:
    # A module left out of the contract could import anything; list each one.
    root = Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())
    contracts = {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}
    layers = contracts["Layers"]["layers"]
    listed = {name.strip() for layer in layers for name in layer.split("|")}
    package = root / "exporter"
    modules = {
        "exporter." + ".".join(path.relative_to(package).with_suffix("").parts)
        for path in package.glob("*.py")
        if path.name != "__init__.py"
    } | {f"exporter.{path.parent.name}" for path in package.glob("*/__init__.py")}
    assert modules - listed == set()
    assert listed - modules == set()
    # exporter.web is layered inside too: each of its modules in its own contract.
    web = contracts["Web config"]
    assert web["containers"] == ["exporter.web"]
    inside = {name.strip() for layer in web["layers"] for name in layer.split("|")}
    assert inside == {p.stem for p in (package / "web").glob("*.py") if p.stem != "__init__"}
