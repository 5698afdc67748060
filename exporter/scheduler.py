"""When each tenant is polled: the first round at once, then each tenant on its own slot.

The first round starts at once so that the exporter is ready quickly; after it, each tenant
has a slot, spread evenly over `poll_interval`, so that a hundred tenants do not hit Graph in
the same second every ten minutes. At most `max_concurrency` tenants talk to Graph at once; a
tenant gets its token from Entra ID before it takes a Graph slot, so token requests (MSAL, in
threads) overlap with other tenants' Graph requests instead of holding a slot. How far tokens
run ahead of the Graph slots is bounded too (`tokens_ahead`).

Tenants can be added, replaced and removed while it runs (config reload, GDAP discovery); a
changed interval or concurrency applies from each tenant's next slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Final

from .errors import PollError
from .pollers import TenantPoller
from .sharding import fnv1a_64

log = logging.getLogger(__name__)

# The longest a poll may run, whatever the interval (issue: a hung Graph call must surface).
MAX_DEADLINE: Final = 600.0


def poll_deadline(interval: float) -> float:
    """A poll's deadline: its interval, at most 10 minutes."""
    return min(interval, MAX_DEADLINE)


class Limiter:
    """A semaphore whose size can change while tasks wait on it.

    `release` is synchronous: a release that had to wait for a lock could be cancelled there
    (a tenant removed mid-poll), and the place it held would be lost for good.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def held(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def set_limit(self, limit: int) -> None:
        self._limit = limit
        self._wake()

    async def acquire(self) -> None:
        while self._held >= self._limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: the wake-up goes to the next one
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self._held += 1

    def release(self) -> None:
        self._held -= 1
        self._wake()

    def _wake(self) -> None:
        free = self._limit - self._held
        for waiter in self._waiters:
            if free <= 0:
                break
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


# Tenants that may fetch or hold a token while waiting for a Graph slot, per Graph slot.
# A cold token is two Entra ID round trips (OIDC discovery, then the token), and a tenant holds
# its Graph slot for about one Graph round trip: with Entra ID as slow as Graph, the Graph slots
# are kept busy only with twice as many tokens in flight, and a third more keeps some ready.
# Measured at 1,000 tenants with 100 ms on both, 16 Graph slots: the first round took 106.6 s
# with two token requests at once, 14.0 s with 16, 7.3 s with 48 (the bound is 6.3 s); 80
# gained nothing. Bounded, not unbounded: with a fast Entra ID, every MSAL thread runnable at
# once takes the interpreter from the event loop that serves Graph's answers (32 at once made
# the round 10% slower than 2 with Entra ID answering at once; 48 here is as fast as 2).
TOKENS_AHEAD_PER_SLOT: Final = 3


def tokens_ahead(max_concurrency: int) -> int:
    """How many tenants may fetch or hold a token while waiting for a Graph slot."""
    return TOKENS_AHEAD_PER_SLOT * max_concurrency


def slot_offsets(count: int, interval: float) -> list[float]:
    """Each tenant's offset within the interval: evenly spread, in config order."""
    return [interval * index / max(count, 1) for index in range(count)]


def hashed_offset(name: str, interval: float) -> float:
    """A stable offset for a tenant that joins later: spread by its name's hash."""
    return interval * (fnv1a_64(name.encode()) / 2.0**64)


def next_slot(due: float, now: float, interval: float) -> float:
    """The slot to poll at: `due`, or when a poll overran it, the next one still ahead.

    Missed slots are skipped rather than run back to back, so a slow Graph does not pile up.
    """
    if due > now:
        return due
    missed = int((now - due) // interval) + 1
    return due + missed * interval


class Scheduler:
    """Runs every tenant's poller until stopped; tenants come and go while it runs."""

    def __init__(
        self,
        interval: float,
        max_concurrency: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock  # for `last_progress` only; slots follow the event loop's time
        self._interval = interval
        self._limiter = Limiter(max_concurrency)
        self._ahead = Limiter(tokens_ahead(max_concurrency))
        self._pollers: dict[str, TenantPoller] = {}
        self._offsets: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._start: float | None = None
        self._last_progress: float | None = None
        self._stopped = asyncio.Event()

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def running(self) -> bool:
        return self._start is not None and not self._stopped.is_set()

    @property
    def last_progress(self) -> float | None:
        """When (by `clock`) the last poll of any tenant finished (None before the first)."""
        return self._last_progress

    def names(self) -> list[str]:
        return list(self._pollers)

    def poller(self, name: str) -> TenantPoller | None:
        return self._pollers.get(name)

    def add(self, poller: TenantPoller, offset: float | None = None) -> None:
        """Poll `poller` (at once if running); it replaces a poller of the same name."""
        self.remove(poller.name)
        self._pollers[poller.name] = poller
        self._offsets[poller.name] = (
            offset if offset is not None else hashed_offset(poller.name, self._interval)
        )
        if self.running:
            self._spawn(poller)

    def add_all(self, pollers: Sequence[TenantPoller]) -> None:
        """Add tenants with evenly spread slots, in their order."""
        for poller, offset in zip(pollers, slot_offsets(len(pollers), self._interval), strict=True):
            self.add(poller, offset)

    def remove(self, name: str) -> None:
        """Stop polling a tenant; a poll in flight is cancelled."""
        self._pollers.pop(name, None)
        self._offsets.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def set_limits(self, interval: float, max_concurrency: int) -> None:
        """New interval and concurrency, from each tenant's next slot."""
        self._interval = interval
        self._limiter.set_limit(max_concurrency)
        self._ahead.set_limit(tokens_ahead(max_concurrency))

    async def run(self) -> None:
        """Poll every tenant until `stop()` (or cancellation)."""
        self._start = asyncio.get_running_loop().time()
        self._stopped.clear()
        for poller in self._pollers.values():
            self._spawn(poller)
        try:
            await self._stopped.wait()
        finally:
            await self._cancel_all()
            self._start = None

    def stop(self) -> None:
        self._stopped.set()

    async def run_round(self) -> None:
        """Poll every tenant once, as the first round does (for benchmarks and tests)."""
        await asyncio.gather(*(self._poll(poller) for poller in list(self._pollers.values())))

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, poller: TenantPoller) -> None:
        task = asyncio.create_task(self._run_tenant(poller), name=f"poll {poller.name}")
        self._tasks[poller.name] = task
        task.add_done_callback(partial(self._ended, poller.name))

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]
        if not task.cancelled() and task.exception() is not None:
            log.critical(
                "polling of a tenant stopped", extra={"tenant": name}, exc_info=task.exception()
            )

    async def _poll(self, poller: TenantPoller) -> None:
        deadline = poll_deadline(self._interval)
        poller.deadline = deadline
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # The token first, outside the Graph slot (within the poll's deadline), holding a
            # place ahead of the Graph slots until it has one.
            await self._ahead.acquire()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the token does, and this tenant's loop then
                # outlives shutdown.
                try:
                    async with asyncio.timeout(deadline):
                        auth = await poller.authenticate()
                except TimeoutError:
                    auth = PollError("timeout", f"no token from Entra ID within {deadline:g}s")
                await self._limiter.acquire()
            finally:
                self._ahead.release()
            try:
                budget = max(deadline - (loop.time() - started), 0.0)
                await poller.poll_once(auth, authenticated=True, budget=budget)
            finally:
                self._limiter.release()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never let one tenant's bug end the polling of every tenant.
            log.exception("poll crashed", extra={"tenant": poller.name})
        self._last_progress = self._clock()

    async def _run_tenant(self, poller: TenantPoller) -> None:
        loop = asyncio.get_running_loop()
        await self._poll(poller)
        start = self._start if self._start is not None else loop.time()
        offset = self._offsets.get(poller.name, 0.0)
        due = start + offset + self._interval
        while True:
            now = loop.time()
            due = next_slot(due, now, self._interval)
            await asyncio.sleep(due - now)
            await self._poll(poller)
            due += self._interval
