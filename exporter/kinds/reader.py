"""What a credential kind needs from Graph: read-only GETs of collections and single objects.

The kinds depend on this protocol, not on the Graph client, so they can be read (and tested)
without aiohttp or MSAL; `exporter.graph.GraphClient` satisfies it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, Protocol

from ..errors import GraphError
from ..records import JsonObject


class GraphReader(Protocol):
    """Read-only Graph access for one tenant; failures raise `PollError`."""

    async def get_collection(self, path: str, select: Sequence[str]) -> list[JsonObject]:
        """Every item of a collection, following `@odata.nextLink` to the end."""
        ...

    async def get_object(
        self, path: str, select: Sequence[str], *, expand: Sequence[str] = ()
    ) -> JsonObject:
        """A single entity (with the navigations `expand` names)."""
        ...


_UNKNOWN_PROPERTY: Final = re.compile(r"Could not find a property named '([^']+)'")


def withdrawn_property(error: GraphError, select: Sequence[str]) -> str | None:
    """The `$select` property a 400 says Graph does not know (a withdrawn beta property)."""
    if error.status != 400:
        return None
    match = _UNKNOWN_PROPERTY.search(error.graph_message)
    if match is None or match.group(1).lower() not in {name.lower() for name in select}:
        return None
    return match.group(1)


class SelectFallback:
    """A reader that, when Graph refuses a property of the `$select`, reads once more without
    `$select` and notes which property it was, so that a beta property Graph drops degrades a
    collector (visibly) instead of blinding it.

    Only for resources without a secret: without `$select` Graph returns every property, and
    a VPP token's `token` is the secret token itself.
    """

    def __init__(self, graph: GraphReader) -> None:
        self._graph = graph
        self.notes: list[str] = []

    def _note(self, path: str, name: str) -> None:
        self.notes.append(
            f"Graph no longer accepts the property '{name}' of {path}; read without $select"
        )

    async def get_collection(self, path: str, select: Sequence[str]) -> list[JsonObject]:
        try:
            return await self._graph.get_collection(path, select)
        except GraphError as exc:
            name = withdrawn_property(exc, select)
            if name is None:
                raise
            self._note(path, name)
            return await self._graph.get_collection(path, ())

    async def get_object(
        self, path: str, select: Sequence[str], *, expand: Sequence[str] = ()
    ) -> JsonObject:
        try:
            return await self._graph.get_object(path, select, expand=expand)
        except GraphError as exc:
            name = withdrawn_property(exc, select)
            if name is None:
                raise
            self._note(path, name)
            return await self._graph.get_object(path, (), expand=expand)
