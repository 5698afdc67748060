"""Reading a YAML config file and saying what is wrong with it: shared by both config files.

Every problem is located by file and key path (``tenants[contoso].client_id``) and described in
words; a value from the file is never repeated in a problem (it may be a secret). One
`ConfigError` carries every problem found, so `--check-config` can list them all in one run.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ValidationError

Loc = tuple[int | str, ...]


@dataclass(frozen=True)
class Problem:
    """One problem: where (a key path, "" for the file as a whole) and what."""

    key: str
    text: str

    def render(self, file: str) -> str:
        return f"{file}: {self.key}: {self.text}" if self.key else f"{file}: {self.text}"


class ConfigError(Exception):
    """One or more problems in one configuration file; never carries a secret value.

    `key` and `problem` are those of the first problem (most callers report one).
    """

    def __init__(
        self, file: str, key: str = "", problem: str = "", *, problems: Sequence[Problem] = ()
    ) -> None:
        found = tuple(problems) or (Problem(key, problem),)
        self.file = file
        self.problems = found
        self.key = found[0].key
        self.problem = found[0].text
        super().__init__("\n".join(p.render(file) for p in found))


def key_path(loc: Loc, item_name: Callable[[Loc, int], str | None] | None = None) -> str:
    """``tenants[2].client_id`` from pydantic's location tuple.

    `item_name(list_loc, index)` may name a list item (``tenants[contoso]``) instead of its
    position, where the item has a name.
    """
    path = ""
    for position, part in enumerate(loc):
        if isinstance(part, int):
            name = item_name(loc[:position], part) if item_name else None
            path += f"[{name if name is not None else part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of `loc`, or None where it cannot be told."""
    current: type[BaseModel] = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        found = _first_model(field.annotation)
        if found is None:
            return None
        current = found
    return current


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _first_model(typing.get_args(annotation)[0])
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _first_model(arg)
            if found is not None:
                return found
    return None


def pydantic_problem(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    """A pydantic error in words, without the input value (a secret, or a password hash)."""
    kind = error.get("type", "")
    loc = tuple(error.get("loc", ()))
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        if owner is not None:
            keys = [name for name, field in owner.model_fields.items() if not field.exclude]
            return f"unknown key (valid keys: {', '.join(keys)})"
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "must be a mapping of keys"
    if kind == "value_error" and "ctx" in error and "error" in error["ctx"]:
        # Our own validators: the message is ours and carries no secret.
        return str(error["ctx"]["error"])
    message = str(error.get("msg", "is invalid"))
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def pydantic_problems(
    model: type[BaseModel],
    exc: ValidationError,
    locate: Callable[[Loc], str] = key_path,
) -> list[Problem]:
    """Every error of a validation, located by `locate`, in the order pydantic found them."""
    problems: list[Problem] = []
    for error in exc.errors():
        problem = Problem(locate(tuple(error["loc"])), pydantic_problem(model, error))
        if problem not in problems:
            problems.append(problem)
    return problems


_SAFE_LOADER: Final[type[yaml.SafeLoader]] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file; a missing, unreadable or malformed file is a `ConfigError`."""
    file = os.fspath(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "", "the file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(file, "", "the file cannot be read: it is a directory") from None
    except PermissionError:
        raise ConfigError(file, "", "the file is not readable (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(file, "", "the file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(file, "", f"the file cannot be read: {exc.strerror}") from None
    try:
        # libyaml's loader when PyYAML has it (its wheels do): ~10x faster on a 10,000-tenant file.
        return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(file, "", f"invalid YAML{where}: {problem}") from None


def merge_problems(file: str, errors: Iterable[ConfigError]) -> ConfigError | None:
    """One error holding the problems of several (None when there are none)."""
    problems = [problem for error in errors for problem in error.problems]
    return ConfigError(file, problems=problems) if problems else None
