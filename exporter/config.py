"""Configuration: YAML loading, ${VAR} substitution and validation."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem, located by file and key path; never carries a secret value."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")
