"""The module structure: the collector-name leaf list, and the demo kept out of a normal start."""

from __future__ import annotations

import subprocess
import sys

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
