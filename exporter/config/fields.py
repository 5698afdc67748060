"""Validated value types of the config: GUIDs, counts, collector lists, https endpoints, regexes.

Every message here names what is wrong without repeating a value that could be a secret.
"""

from __future__ import annotations

import re
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import BeforeValidator

from ..collector_names import COLLECTOR_NAMES

_GUID_RE: Final = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def _guid(value: object) -> object:
    if isinstance(value, str) and not _GUID_RE.match(value):
        raise ValueError(f"{value!r} is not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return value.lower() if isinstance(value, str) else value


Guid = Annotated[str, BeforeValidator(_guid)]


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


Count = Annotated[int, BeforeValidator(_not_bool)]


def _known_collectors(value: object) -> object:
    if isinstance(value, list | tuple):
        known = ", ".join(COLLECTOR_NAMES)
        if not value:
            raise ValueError(f"must name at least one collector ({known})")
        for name in value:
            if name not in COLLECTOR_NAMES:
                raise ValueError(f"unknown collector {name!r}; choose from {known}")
        return tuple(dict.fromkeys(value))
    return value


Collectors = Annotated[tuple[str, ...], BeforeValidator(_known_collectors)]


def known_collector(name: str) -> str:
    """A collector name, or ValueError naming the known ones."""
    if name not in COLLECTOR_NAMES:
        raise ValueError(f"unknown collector {name!r}; choose from {', '.join(COLLECTOR_NAMES)}")
    return name


def https_base(value: str, key: str) -> str:
    """Normalise a host or https URL to ``https://host[:port]`` with no path."""
    text = value.strip()
    if "://" not in text:
        text = "https://" + text
    text = text.rstrip("/")
    parts = urlsplit(text)
    if "@" in parts.netloc:
        # Never echo the value: the part before "@" is a user name and probably a password.
        raise ValueError(
            f"{key} must not hold a user name or password (user:pass@host); "
            "the exporter authenticates with the tenant's credential, not in the URL"
        )
    if parts.scheme != "https":
        raise ValueError(f"{key} must use https, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host name")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"{value!r} must be a bare https://host[:port], without a path")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return f"https://{parts.netloc}"


def _pattern(value: object) -> object:
    if isinstance(value, str):
        try:
            return re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
    return value


Pattern = Annotated[re.Pattern[str], BeforeValidator(_pattern)]
