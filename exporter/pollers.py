"""Polling: each tenant's collectors run concurrently; tenants are scheduled over the interval.

The first round starts at once (bounded by `max_concurrency`) so that the exporter is ready
quickly; after that each tenant has its own slot, spread evenly over `poll_interval`, so that a
hundred tenants do not hit Graph in the same second every ten minutes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from .errors import AuthError, PollError
from .kinds import CredentialKind
from .kinds.reader import GraphReader
from .records import Records
from .snapshot import SnapshotStore, TenantState

log = logging.getLogger(__name__)


class TenantPoller:
    """Polls one tenant: every enabled credential kind, concurrently, sharing one token."""

    def __init__(
        self,
        name: str,
        collectors: Sequence[CredentialKind],
        graph: GraphReader,
        store: SnapshotStore,
    ) -> None:
        self.name = name
        self._collectors = tuple(collectors)
        self._graph = graph
        self._store = store

    async def poll_once(self) -> TenantState | None:
        """Run every collector once and record the outcome; never raises for Graph failures.

        Returns the new state (None when the tenant was removed meanwhile).
        """
        started_at = time.time()
        started = time.monotonic()
        outcomes = await asyncio.gather(*(self._fetch(c) for c in self._collectors))
        duration = time.monotonic() - started
        results = {c.name: outcome for c, outcome in zip(self._collectors, outcomes, strict=True)}
        state = self._store.record_poll(self.name, results, started_at, duration)
        self._log(results, duration)
        return state

    async def _fetch(self, collector: CredentialKind) -> Records | PollError:
        try:
            return await collector.fetch(self._graph)
        except PollError as exc:
            return exc
        except Exception as exc:
            # A bug must cost one collector one poll, not the poller of every tenant.
            log.exception(
                "unexpected error in a collector",
                extra={"tenant": self.name, "collector": collector.name},
            )
            return PollError("invalid_response", f"internal error: {type(exc).__name__}")

    def _log(self, results: dict[str, Records | PollError], duration: float) -> None:
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


class Scheduler:
    """Runs every tenant's poller forever: first round at once, then on evenly spread slots."""

    def __init__(
        self,
        pollers: Sequence[TenantPoller],
        interval: float,
        max_concurrency: int,
    ) -> None:
        self._pollers = tuple(pollers)
        self._interval = interval
        self._semaphore = asyncio.Semaphore(max_concurrency)

    async def run(self) -> None:
        """Poll until cancelled."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        offsets = slot_offsets(len(self._pollers), self._interval)
        async with asyncio.TaskGroup() as group:
            for poller, offset in zip(self._pollers, offsets, strict=True):
                group.create_task(self._run_tenant(poller, start, offset), name=poller.name)

    async def run_round(self) -> None:
        """Poll every tenant once, `max_concurrency` at a time (for benchmarks and tests)."""
        await asyncio.gather(*(self._poll(poller) for poller in self._pollers))

    async def _poll(self, poller: TenantPoller) -> None:
        async with self._semaphore:
            try:
                await poller.poll_once()
            except Exception:
                # Never let one tenant's bug end the task group that polls every tenant.
                log.exception("poll crashed", extra={"tenant": poller.name})

    async def _run_tenant(self, poller: TenantPoller, start: float, offset: float) -> None:
        loop = asyncio.get_running_loop()
        await self._poll(poller)
        due = start + offset + self._interval
        while True:
            now = loop.time()
            due = next_slot(due, now, self._interval)
            await asyncio.sleep(due - now)
            await self._poll(poller)
            due += self._interval


def slot_offsets(count: int, interval: float) -> list[float]:
    """Each tenant's offset within the interval: evenly spread, in config order."""
    return [interval * index / max(count, 1) for index in range(count)]


def next_slot(due: float, now: float, interval: float) -> float:
    """The slot to poll at: `due`, or when a poll overran it, the next one still ahead.

    Missed slots are skipped rather than run back to back, so a slow Graph does not pile up.
    """
    if due > now:
        return due
    missed = int((now - due) // interval) + 1
    return due + missed * interval
