"""Polling one tenant: a token first, then every due credential kind concurrently.

A poll never raises for Graph or Entra failures: each collector's outcome (records or
`PollError`) goes to the snapshot store. A poll has a deadline; what has not finished by then
counts as `timeout`, so a hung request never leaves a tenant's data silently frozen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from .errors import AuthError, PollError
from .kinds import CredentialKind
from .kinds.reader import GraphReader, SelectFallback
from .records import Fetched
from .snapshot import SnapshotStore, TenantState

log = logging.getLogger(__name__)


class Tokens(Protocol):
    """The one thing a poller asks of the token provider."""

    async def token(self) -> str:
        """A valid access token; raises `PollError`."""
        ...

    @property
    def credential_expires_at(self) -> float | None:
        """When the credential in use expires, where the exporter can tell (a certificate)."""
        ...


class TenantPoller:
    """Polls one tenant: every enabled credential kind, concurrently, sharing one token.

    `intervals` holds the collectors that run less often than every poll (`collector_intervals`
    longer than `poll_interval`): such a collector is skipped until its interval has passed, and
    keeps its last values and health meanwhile.
    """

    def __init__(
        self,
        name: str,
        collectors: Sequence[CredentialKind],
        graph: GraphReader,
        store: SnapshotStore,
        *,
        tokens: Tokens | None = None,
        intervals: Mapping[str, float] | None = None,
        poll_interval: float = 600.0,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._collectors = tuple(collectors)
        self._graph = graph
        self._store = store
        self._tokens = tokens
        self._intervals = dict(intervals or {})
        self._poll_interval = poll_interval
        self.deadline = deadline
        self._clock = clock
        self._last_run: dict[str, float] = {}

    def set_intervals(self, intervals: Mapping[str, float], poll_interval: float) -> None:
        """New collector intervals (a reload); they apply from the next poll."""
        self._intervals = dict(intervals)
        self._poll_interval = poll_interval

    def due(self) -> tuple[CredentialKind, ...]:
        """The collectors this poll runs: every one, but those not yet due by their interval.

        A collector is due when half a poll interval or less is left of its own interval, so
        that a 1h collector of a 10m poll runs every sixth poll, not every seventh.
        """
        now = self._clock()
        chosen = []
        for collector in self._collectors:
            interval = self._intervals.get(collector.name)
            last = self._last_run.get(collector.name)
            if interval is None or last is None or now - last >= interval - self._poll_interval / 2:
                chosen.append(collector)
        return tuple(chosen)

    @property
    def credential_expires_at(self) -> float | None:
        """When this tenant's own credential expires, where the exporter can tell."""
        return self._tokens.credential_expires_at if self._tokens is not None else None

    async def authenticate(self) -> PollError | None:
        """Get the tenant's token (ahead of its Graph slot); the failure, if any."""
        if self._tokens is None:
            return None
        try:
            await self._tokens.token()
        except PollError as exc:
            return exc
        return None

    async def poll_once(
        self,
        auth: PollError | None = None,
        *,
        authenticated: bool = False,
        budget: float | None = None,
    ) -> TenantState | None:
        """Run every due collector once and record the outcome.

        `authenticated` says that `authenticate()` already ran and `auth` is its outcome;
        `budget` is what is left of the deadline (the whole deadline when not given).
        Returns the new state (None when the tenant was removed meanwhile).
        """
        started_at = time.time()
        started = time.monotonic()
        collectors = self.due()
        if collectors and not authenticated:
            auth = await self.authenticate()
        # Read with the token, so known even when Entra ID then refused the credential, and
        # even with no collector due (the scheduler fetched a token anyway): a rotated
        # certificate shows now, not at the next poll with a collector due.
        self._store.record_credential_expiry(self.name, self.credential_expires_at)
        if not collectors:
            return self._store.tenant(self.name) if self._store.has(self.name) else None
        if auth is not None:
            # One token serves every collector: its failure is every collector's.
            results: dict[str, Fetched | PollError] = {c.name: auth for c in collectors}
        else:
            results = await self._run(collectors, self.deadline if budget is None else budget)
        for collector in collectors:
            self._last_run[collector.name] = self._clock()
        duration = time.monotonic() - started
        state = self._store.record_poll(self.name, results, started_at, duration)
        self._log(results, duration)
        return state

    async def _run(
        self, collectors: Sequence[CredentialKind], budget: float | None
    ) -> dict[str, Fetched | PollError]:
        tasks = {c.name: asyncio.ensure_future(self._fetch(c)) for c in collectors}
        try:
            await asyncio.wait(tasks.values(), timeout=None if budget is None else max(budget, 0))
        finally:
            for task in tasks.values():
                task.cancel()
        results: dict[str, Fetched | PollError] = {}
        for name, task in tasks.items():
            if task.done() and not task.cancelled():
                results[name] = task.result()
            else:
                results[name] = PollError(
                    "timeout", f"the poll did not finish within its deadline of {self.deadline:g}s"
                )
        return results

    async def _fetch(self, collector: CredentialKind) -> Fetched | PollError:
        reader = SelectFallback(self._graph) if collector.select_fallback else self._graph
        try:
            records = await collector.fetch(reader)
        except PollError as exc:
            return exc
        except Exception as exc:
            # A bug must cost one collector one poll, not the poller of every tenant.
            log.exception(
                "unexpected error in a collector",
                extra={"tenant": self.name, "collector": collector.name},
            )
            return PollError("invalid_response", f"internal error: {type(exc).__name__}")
        notes = tuple(reader.notes) if isinstance(reader, SelectFallback) else ()
        for note in notes:
            log.warning(note, extra={"tenant": self.name, "collector": collector.name})
        return Fetched(records, notes)

    def _log(self, results: Mapping[str, Fetched | PollError], duration: float) -> None:
        errors = {name: r for name, r in results.items() if isinstance(r, PollError)}
        if not errors:
            log.debug(
                "poll succeeded",
                extra={"tenant": self.name, "duration_seconds": round(duration, 3)},
            )
            return
        # One token serves every collector, so an auth failure is reported once, not per collector.
        seen: set[str] = set()
        for error in errors.values():
            if error.message in seen:
                continue
            seen.add(error.message)
            collectors = ",".join(n for n, e in errors.items() if e.message == error.message)
            extra: dict[str, object] = {
                "tenant": self.name,
                "collector": collectors,
                "reason": error.reason,
            }
            if isinstance(error, AuthError) and error.aadsts_code is not None:
                extra["aadsts"] = error.aadsts_code
            log.warning("poll failed: %s", error.message, extra=extra)
