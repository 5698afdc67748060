"""What a credential kind needs from Graph: read-only GETs of collections and single objects.

The kinds depend on this protocol, not on the Graph client, so they can be read (and tested)
without aiohttp or MSAL; `exporter.graph.GraphClient` satisfies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..records import JsonObject


class GraphReader(Protocol):
    """Read-only Graph access for one tenant; failures raise `PollError`."""

    async def get_collection(self, path: str, select: Sequence[str]) -> list[JsonObject]:
        """Every item of a collection, following `@odata.nextLink` to the end."""
        ...

    async def get_object(self, path: str, select: Sequence[str]) -> JsonObject:
        """A single entity."""
        ...
