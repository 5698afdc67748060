"""Loading the config: YAML, `${VAR}`, relative paths, `defaults`, validation, files on disk.

Every problem found is reported, not only the first (`--check-config` lists them all in one
run), each with the file, the key path and what is wrong. A tenant is named by its `name`
(`tenants[contoso].client_id`); a key a tenant inherited says so
(`defaults.client_id (inherited by tenants[contoso])`). Secret values never appear.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from ..credentials import CredentialFileError, load_certificate, read_text_file
from ..yaml_config import ConfigError, Loc, Problem, key_path, pydantic_problem, read_yaml
from .model import CREDENTIAL_GROUP, CREDENTIAL_KEYS, ExporterConfig
from .model import _AppCredential as AppCredential

log = logging.getLogger(__name__)

MIN_SANE_POLL_INTERVAL: Final = 60.0
PATH_KEYS: Final = (
    "client_secret_file",
    "client_certificate_file",
    "federated_token_file",
    "ca_file",
)
# Mapping keys a section merges with the defaults' key by key, instead of replacing them.
MERGED_KEYS: Final = ("thresholds", "collector_intervals")
_CLEAN_NAME: Final = re.compile(r"[^\x00-\x1f\x7f\[\]]{1,128}")
_ENV_RE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Document:
    """The document being loaded, and where each section's keys came from."""

    def __init__(self, raw: dict[str, Any], file: str) -> None:
        self.raw = raw
        self.file = file
        self.problems: list[Problem] = []
        # Section location -> keys it took from `defaults`.
        self.inherited: dict[Loc, set[str]] = {}
        # Keys whose ${VAR} was unset: what validation then says of them is only an echo.
        self.unset: set[str] = set()

    def problem(self, key: str, text: str) -> None:
        found = Problem(key, text)
        if found not in self.problems and not (key in self.unset and self.problems):
            self.problems.append(found)

    def tenant_name(self, index: int) -> str:
        tenants = self.raw.get("tenants")
        if isinstance(tenants, list) and index < len(tenants) and isinstance(tenants[index], dict):
            name = tenants[index].get("name")
            # A name that is itself the problem (blank, padded, with control characters or
            # brackets) would make a confusing key path: the index is clearer then.
            if isinstance(name, str) and name.strip() == name and _CLEAN_NAME.fullmatch(name):
                return name
        return str(index)

    def section_path(self, loc: Loc) -> str:
        """``tenants[contoso]``, ``discovery.gdap``, or "" for the top level."""

        def item(_: Loc, index: int) -> str:
            return self.tenant_name(index)

        return key_path(loc, item)

    def locate(self, loc: Loc) -> str:
        """The key path of a pydantic location, attributing inherited keys to `defaults`."""
        for section, keys in self.inherited.items():
            if loc[: len(section)] == section and len(loc) > len(section):
                key = str(loc[len(section)])
                if key in keys:
                    rest = key_path(("defaults", *loc[len(section) :]))
                    return f"{rest} (inherited by {self.section_path(section)})"
        return self.section_path(loc)


def _substitute_env(node: Any, loc: Loc, doc: _Document) -> Any:
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            value = os.environ.get(match.group(1))
            if value is None:
                key = doc.section_path(loc)
                doc.problem(key, f"environment variable {match.group(1)} is not set")
                doc.unset.add(key)
                # A collect list names its item by position: its echo is blamed on the list.
                doc.unset.add(key.rsplit("[", 1)[0] if key.endswith("]") else key)
                return ""
            return value

        return _ENV_RE.sub(replace, node)
    if isinstance(node, dict):
        return {k: _substitute_env(v, (*loc, str(k)), doc) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, (*loc, i), doc) for i, v in enumerate(node)]
    return node


def _sections(raw: dict[str, Any]) -> Iterator[tuple[Loc, dict[str, Any]]]:
    """Every section that holds tenant keys: the tenants and `discovery.gdap`."""
    tenants = raw.get("tenants")
    if isinstance(tenants, list):
        for index, tenant in enumerate(tenants):
            if isinstance(tenant, dict):
                yield ("tenants", index), tenant
    discovery = raw.get("discovery")
    if isinstance(discovery, dict) and isinstance(discovery.get("gdap"), dict):
        yield ("discovery", "gdap"), discovery["gdap"]


def _resolve_paths(raw: dict[str, Any], base_dir: Path) -> None:
    """Relative file paths are relative to the config file's folder, as in Prometheus."""
    sections = [section for _, section in _sections(raw)]
    if isinstance(raw.get("defaults"), dict):
        sections.append(raw["defaults"])
    for section in sections:
        for key in PATH_KEYS:
            value = section.get(key)
            if isinstance(value, str) and value and not os.path.isabs(value):
                section[key] = str(base_dir / value)


def _merge_defaults(doc: _Document) -> dict[str, Any]:
    """Give every tenant (and `discovery.gdap`) the `defaults` keys it does not set."""
    raw = dict(doc.raw)
    defaults = raw.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        doc.problem("defaults", "must be a mapping of tenant keys")
        return raw
    usable = {}
    allowed = set(AppCredential.model_fields)
    for key, value in defaults.items():
        if key in ("name", "tenant_id"):
            doc.problem(f"defaults.{key}", "cannot be a default")
        elif key not in allowed:
            doc.problem(
                f"defaults.{key}", f"unknown key (valid keys: {', '.join(sorted(allowed))})"
            )
        else:
            usable[key] = value
    credentials = [key for key in CREDENTIAL_KEYS if key in usable]
    if len(credentials) > 1:
        doc.problem("defaults", f"two credentials given ({' and '.join(credentials)}); keep one")
        for extra in credentials[1:]:  # said once, of defaults; not again for every tenant
            del usable[extra]
    if isinstance(raw.get("tenants"), list):
        raw["tenants"] = list(raw["tenants"])
    if isinstance(raw.get("discovery"), dict):
        raw["discovery"] = dict(raw["discovery"])
    for loc, section in list(_sections(raw)):
        if "source" in section:
            # An internal field (config or gdap), not a key a user may set.
            doc.problem(doc.section_path((*loc, "source")), "unknown key")
        own_credential = any(key in section for key in CREDENTIAL_GROUP)
        merged = dict(section)
        taken = set()
        for key, value in usable.items():
            if own_credential and key in CREDENTIAL_GROUP:
                continue
            if (
                key in MERGED_KEYS
                and isinstance(value, dict)
                and isinstance(section.get(key), dict)
            ):
                merged[key] = {**value, **section[key]}
            elif key not in section:
                merged[key] = value
                taken.add(key)
        doc.inherited[loc] = taken
        if loc[0] == "tenants":
            raw["tenants"][loc[1]] = merged
        else:
            raw["discovery"]["gdap"] = merged
    return raw


def _check_file(path: Path, what: str) -> str | None:
    try:
        read_text_file(path, what)
    except CredentialFileError as exc:
        return str(exc)
    return None


def _check_ca(path: Path) -> str | None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except ssl.SSLError:
        return f"{str(path)!r} holds no PEM CA certificate"
    except OSError as exc:
        return f"{str(path)!r} cannot be loaded: {exc.strerror or 'cannot be read'}"
    return None


def _file_problems(
    section: AppCredential, checked: dict[tuple[str, ...], str | None]
) -> Iterator[tuple[str, str]]:
    """(key, problem) for each credential or CA file of a section that cannot be used.

    `checked` holds the files this load has already checked: a file inherited from `defaults`
    by 10,000 tenants is read once, not 10,000 times (it was seconds of start-up).
    """

    def once(key: tuple[str, ...], check: Callable[[], str | None]) -> str | None:
        if key not in checked:
            checked[key] = check()
        return checked[key]

    if section.client_secret_file is not None:
        path = section.client_secret_file
        problem = once(("secret", str(path)), lambda: _check_file(path, "secret file"))
        if problem:
            yield "client_secret_file", problem
    if section.federated_token_file is not None:
        token = section.federated_token_file
        problem = once(("token", str(token)), lambda: _check_file(token, "federated token file"))
        if problem:
            yield "federated_token_file", problem
    if section.client_certificate_file is not None:
        pem = section.client_certificate_file
        secret = section.client_certificate_password
        password = secret.get_secret_value() if secret else None
        # The password is part of the key (in memory only): another one may not open the key.
        problem = once(
            ("cert", str(pem), password or ""), lambda: _check_certificate(pem, password)
        )
        if problem:
            yield "client_certificate_file", problem
    if section.ca_file is not None:
        ca = section.ca_file
        problem = once(("ca", str(ca)), lambda: _check_ca(ca))
        if problem:
            yield "ca_file", problem


def _check_certificate(path: Path, password: str | None) -> str | None:
    try:
        load_certificate(path, password)
    except CredentialFileError as exc:
        return str(exc)
    return None


def _check_sections(config: ExporterConfig, doc: _Document) -> None:
    """What spans keys: unique names, intervals against the poll, thresholds, files."""
    sections: list[tuple[Loc, AppCredential]] = [
        (("tenants", index), tenant) for index, tenant in enumerate(config.tenants)
    ]
    if config.gdap is not None:
        sections.append((("discovery", "gdap"), config.gdap))
    checked: dict[tuple[str, ...], str | None] = {}
    seen: dict[str, int] = {}
    for index, tenant in enumerate(config.tenants):
        if tenant.name in seen:
            doc.problem(
                f"tenants[{index}].name",
                f"duplicate tenant name {tenant.name!r} (also tenants[{seen[tenant.name]}])",
            )
        seen.setdefault(tenant.name, index)
    for name, seconds in config.collector_intervals.items():
        if seconds < config.poll_interval:
            doc.problem(f"collector_intervals.{name}", "must be at least poll_interval")
    if not config.tenants and config.gdap is None:
        doc.problem("tenants", "list at least one tenant, or configure discovery.gdap")
    for loc, section in sections:
        for name, seconds in (section.collector_intervals or {}).items():
            if seconds < config.poll_interval:
                doc.problem(
                    doc.locate((*loc, "collector_intervals", name)),
                    "must be at least poll_interval",
                )
        thresholds = config.effective_thresholds(section.thresholds)
        if thresholds.expiry_critical >= thresholds.expiry_warning:
            where = "thresholds" if section.thresholds is None else (*loc, "thresholds")
            doc.problem(
                doc.locate(where) if isinstance(where, tuple) else where,
                "expiry_critical must be shorter than expiry_warning",
            )
        for key, problem in _file_problems(section, checked):
            doc.problem(doc.locate((*loc, key)), problem)


_INHERITED: Final = re.compile(r"^(defaults\.\S+) \(inherited by (.+)\)$")


def _fold_inherited(problems: list[Problem]) -> list[Problem]:
    """One line for a default that is wrong for every tenant inheriting it, naming them all."""
    folded: list[Problem] = []
    heirs: dict[tuple[str, str], list[str]] = {}
    for problem in problems:
        match = _INHERITED.match(problem.key)
        if match is None:
            folded.append(problem)
            continue
        group = (match.group(1), problem.text)
        if group not in heirs:
            heirs[group] = []
            folded.append(Problem(match.group(1), problem.text))  # placeholder, named below
        heirs[group].append(match.group(2))
    return [
        Problem(f"{p.key} (inherited by {', '.join(heirs[(p.key, p.text)])})", p.text)
        if (p.key, p.text) in heirs
        else p
        for p in folded
    ]


def parse_config(raw: object, file: str, base_dir: Path | None = None) -> ExporterConfig:
    """Validate an already-parsed YAML document; `ConfigError` holds every problem found.

    `file` names the source in messages; relative file paths are taken from `base_dir` (the
    config file's folder) when given, else from the working directory.
    """
    if raw is None:
        raise ConfigError(file, "", "the file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(file, "", "the top level must be a mapping of keys")
    doc = _Document(raw, file)
    doc.raw = _substitute_env(raw, (), doc)
    if base_dir is not None:
        _resolve_paths(doc.raw, base_dir)
    merged = _merge_defaults(doc)
    config: ExporterConfig | None = None
    try:
        config = ExporterConfig.model_validate(merged)
    except ValidationError as exc:
        for error in exc.errors():
            doc.problem(doc.locate(tuple(error["loc"])), pydantic_problem(ExporterConfig, error))
    if config is not None:
        _check_sections(config, doc)
    if doc.problems or config is None:
        raise ConfigError(file, problems=_fold_inherited(doc.problems))
    return config


def load_config(path: str | os.PathLike[str]) -> ExporterConfig:
    """Read, substitute and validate the YAML config file at `path`."""
    file = os.fspath(path)
    config = parse_config(read_yaml(file), file, Path(file).resolve().parent)
    if config.poll_interval < MIN_SANE_POLL_INTERVAL:
        log.warning(
            "poll_interval is under a minute; Apple tokens change daily at most, and Intune "
            "throttles per app and tenant",
            extra={"file": file, "poll_interval_seconds": config.poll_interval},
        )
    return config
