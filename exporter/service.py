"""The running exporter: config in, pollers running, snapshot store out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aiohttp

from .auth import MsalTokenProvider
from .config import ExporterConfig, GdapDiscovery, TenantConfig
from .discovery import (
    DISCOVERY_DEADLINE,
    RETRY_AFTER_FAILURE,
    Customer,
    DiscoveryState,
    count_filtered,
    discovered_tenants,
    failure_text,
    fetch_customers,
    merged,
    summary_line,
)
from .errors import PollError
from .graph import GraphClient, RetryPolicy
from .kinds import KINDS
from .metrics import TenantLines, exporter_samples
from .pollers import TenantPoller
from .records import Sample
from .scheduler import Scheduler, poll_deadline, tokens_ahead
from .sharding import Shard
from .snapshot import SnapshotStore
from .storage import DEFAULT_WRITE_INTERVAL, KeptTenant, StateFile, StateKeeper, restore
from .tenant_setup import TenantClients, clients_differ

log = logging.getLogger(__name__)


class Exporter:
    """Owns the HTTP sessions, MSAL's worker threads, and a poller for every tenant it owns."""

    def __init__(
        self,
        config: ExporterConfig,
        *,
        shard: Shard | None = None,
        ca_data: str | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        state_file: StateFile | None = None,
        write_interval: float = DEFAULT_WRITE_INTERVAL,
    ) -> None:
        self.config = config  # in force: the listed tenants plus the discovered ones
        self._base_config = config  # as loaded from the file
        self._customers: list[Customer] = []  # what the last successful discovery found
        self._partner: GraphClient | None = None  # reads the GDAP customers
        self._discovery_task: asyncio.Task[None] | None = None
        self.discovery = DiscoveryState() if config.gdap is not None else None
        self._discovery_lock = asyncio.Lock()  # one discovery at a time (timer, reload, start)
        self._clock = clock  # judges progress for the liveness probe
        self.shard = shard or Shard()
        self.tenants = tuple(t for t in config.tenants if self.shard.owns(t.tenant_id))
        self.store = SnapshotStore()
        if config.gdap is not None:
            self.store.hold()  # released once the first discovery has answered
        self.lines = TenantLines(self.store)
        self._factory = TenantClients(
            ca_data,
            # A thread for every token the scheduler lets run ahead, and a few for discovery
            # and for retries after a 401 (a reload that raises max_concurrency keeps these).
            workers=tokens_ahead(config.max_concurrency) + 4,
            retry=retry,
            sleep=sleep,
            on_response=self._request_counter,
        )
        self._session: aiohttp.ClientSession | None = None
        self._scheduler = Scheduler(config.poll_interval, config.max_concurrency, clock)
        self._task: asyncio.Task[None] | None = None
        self._started_at: float | None = None
        self.keeper: StateKeeper | None = None
        self._kept_unclaimed: dict[str, KeptTenant] = {}
        for tenant in self.tenants:
            self._add(tenant)  # pollers come with open()
        self._ready_logged = False
        self.store.subscribe(lambda name, state: self._log_if_ready())
        # (last reload successful, when the config last came into force): the reload metrics.
        self.reload_status: tuple[bool, float] = (True, time.time())
        self._keeper_task: asyncio.Task[None] | None = None
        if state_file is not None:
            self.keeper = self._restore(state_file, write_interval)

    def _restore(self, state_file: StateFile, write_interval: float) -> StateKeeper:
        """Serve what an earlier process kept, then keep writing it (--storage.path)."""
        kept = state_file.load()
        owned = {t.name: (t.tenant_id, t.cloud) for t in self.tenants}
        restored = restore(self.store, kept, owned)
        # Kept for tenants that come later: GDAP customers, found once discovery has answered.
        self._kept_unclaimed = {name: t for name, t in kept.items() if name not in owned}
        keeper = StateKeeper(state_file, self.store, write_interval)
        keeper.stats.restored_records = restored
        served = sum(1 for t in self.store.view().tenants if t.restored)
        log.info(
            "kept state read: serving its records until each tenant's first poll"
            if served
            else "no kept state to serve",
            extra={"file": str(state_file.path), "tenants": served, "records": restored},
        )
        return keeper

    def _log_if_ready(self) -> None:
        """Log readiness once: after a poll lands, or after the first discovery answered."""
        if self._ready_logged or not self.store.ready or self._started_at is None:
            return
        self._ready_logged = True
        done, _ = self.store.progress
        up = sum(1 for tenant in self.store.view().tenants if tenant.up)
        log.info(
            "ready: every tenant has finished its first poll",
            extra={
                "first_round_seconds": round(self._clock() - self._started_at, 3),
                "tenants": done,
                "tenants_up": up,
            },
        )

    @property
    def polling(self) -> bool:
        """False once the background polling has died (the liveness probe reports it)."""
        return self._task is None or not self._task.done()

    def health_problem(self) -> str | None:
        """Why the exporter is not healthy, or None.

        Unhealthy when polling has died, or when no poll of any tenant has finished for two
        intervals plus a poll's deadline: every poll ends by its deadline, so only a stuck
        exporter stays that long without one.
        """
        if not self.polling:
            return "polling has stopped"
        if self._started_at is None or not self.tenants:
            return None
        interval = self._scheduler.interval
        allowed = 2 * interval + poll_deadline(interval)
        now = self._clock()
        last = self._scheduler.last_progress or self._started_at
        if now - last > allowed:
            return (
                f"no poll of any tenant has finished for {now - last:.0f}s "
                f"(more than 2 x poll_interval + the {poll_deadline(interval):g}s deadline)"
            )
        return None

    def exporter_samples(self) -> Iterator[Sample]:
        """The exporter's own samples, as of now."""
        stats = self.keeper.stats if self.keeper is not None else None
        gdap = self._base_config.gdap
        discovery = (
            (self.discovery, gdap.refresh_interval)
            if self.discovery is not None and gdap is not None
            else None
        )
        return exporter_samples(
            self.config.poll_interval,
            self.shard,
            len(self.tenants),
            stats,
            self.reload_status,
            discovery,
        )

    def discovery_summary(self) -> str | None:
        """One line for the status page: how GDAP discovery is doing (None without it)."""
        gdap, state = self._base_config.gdap, self.discovery
        if gdap is None or state is None:
            return None
        return summary_line(gdap.partner_tenant_id, state)

    def _request_counter(self, tenant: str) -> Callable[[int], None]:
        def count(status: int) -> None:
            self.store.count_graph_request(tenant, status)

        return count

    def _poller(self, tenant: TenantConfig) -> TenantPoller:
        """A tenant's token provider, Graph client and poller."""
        config = self.config
        tokens, graph = self._clients(tenant)
        collectors = [KINDS[c] for c in config.collectors_for(tenant)]
        return TenantPoller(
            tenant.name,
            collectors,
            graph,
            self.store,
            tokens=tokens,
            intervals=self._skipping_intervals(tenant),
            poll_interval=config.poll_interval,
        )

    def _clients(self, tenant: TenantConfig) -> tuple[MsalTokenProvider, GraphClient]:
        """A token provider and a Graph client for one tenant (or the GDAP partner)."""
        assert self._session is not None
        return self._factory.build(self._session, tenant, self.config.request_timeout)

    def _skipping_intervals(self, tenant: TenantConfig) -> dict[str, float]:
        """A collector at the poll interval runs at every slot; only longer ones are skipped."""
        return {
            name: interval
            for name, interval in self.config.intervals_for(tenant).items()
            if interval > self.config.poll_interval
        }

    async def apply(self, config: ExporterConfig) -> ReloadSummary:
        """Put a new (validated) config in force, with the customers discovery found last."""
        old = self._base_config
        if config.gdap != old.gdap or config.request_timeout != old.request_timeout:
            self._partner = None  # another partner, app, credential or timeout: new clients
        if config.gdap is None:
            self._customers, self.discovery = [], None
        else:
            if old.gdap is None or config.gdap.partner_tenant_id != old.gdap.partner_tenant_id:
                self._customers = []  # another partner's customers are not this one's
            if self.discovery is None:
                self.discovery = DiscoveryState()
        self._base_config = config
        summary = await self._put_in_force(self._effective())
        self._keep_discovering()
        return summary

    def _keep_discovering(self) -> None:
        """The refresh timer runs while the exporter runs and `discovery.gdap` is set."""
        if self._base_config.gdap is None or self._task is None:
            return
        if self._discovery_task is None or self._discovery_task.done():
            # The reload that turned it on has just discovered: the timer waits first.
            self._discovery_task = asyncio.create_task(
                self._discover_forever(now=False), name="gdap"
            )

    def _effective(self) -> ExporterConfig:
        """The config as loaded, plus the discovered customers it does not list itself."""
        base = self._base_config
        if base.gdap is None:
            return base
        return merged(base, discovered_tenants(base.gdap, self._customers, base.tenants))

    async def refresh_discovery(self) -> bool:
        """Read the partner's GDAP customers and poll them; False when it failed (the last
        discovered tenants then stay, and keep being polled)."""
        async with self._discovery_lock:
            try:
                return await self._refresh_discovery()
            finally:
                self.store.release()  # answered: ready once what it found was polled
                self._log_if_ready()  # when it found nothing new, no poll will tell

    async def _refresh_discovery(self) -> bool:
        gdap, state = self._base_config.gdap, self.discovery
        if gdap is None or state is None:
            return False
        try:
            await self.open()
            if self._partner is None:
                _, self._partner = self._clients(gdap.partner)
            async with asyncio.timeout(DISCOVERY_DEADLINE):
                customers = await fetch_customers(self._partner)
        except PollError as exc:
            return self._discovery_failed(gdap, state, exc)
        except TimeoutError:
            return self._discovery_failed(
                gdap, state, PollError("timeout", f"no answer within {DISCOVERY_DEADLINE:g}s")
            )
        except Exception as exc:  # a bug: counted and logged, and discovery goes on
            log.exception("GDAP discovery crashed")
            return self._discovery_failed(
                gdap,
                state,
                PollError("invalid_response", f"{type(exc).__name__} (a bug; see the log)"),
            )
        if self._base_config.gdap is not gdap:
            return False  # a reload changed discovery meanwhile; its own discovery follows
        self._customers = customers
        state.up, state.last_success_at, state.last_error = True, time.time(), None
        state.tenants = count_filtered(gdap, customers)
        summary = await self._put_in_force(self._effective())
        log.info(
            "GDAP discovery",
            extra={
                "customers": state.tenants,
                "added": len(summary.added),
                "removed": len(summary.removed),
            },
        )
        return True

    @staticmethod
    def _discovery_failed(gdap: GdapDiscovery, state: DiscoveryState, error: PollError) -> bool:
        """Count and log a failed discovery; the tenants found before stay."""
        state.up = False
        state.errors[error.reason] += 1
        state.last_error = failure_text(error)
        log.warning(
            f"GDAP discovery failed; the tenants found before stay: {error}",
            extra={"reason": error.reason, "partner_tenant_id": gdap.partner_tenant_id},
        )
        return False

    async def _discover_forever(self, *, now: bool) -> None:
        """Discovery (at once if `now`), then every refresh interval; sooner after a failure."""
        if now:
            await self.refresh_discovery()  # never raises: a failure is counted and logged
        while True:
            gdap = self._base_config.gdap
            if gdap is None:
                return
            up = self.discovery is not None and self.discovery.up
            await asyncio.sleep(
                gdap.refresh_interval if up else min(gdap.refresh_interval, RETRY_AFTER_FAILURE)
            )
            if self._base_config.gdap is None:
                return
            await self.refresh_discovery()

    async def _put_in_force(self, config: ExporterConfig) -> ReloadSummary:
        """Put an effective config (listed and discovered tenants) in force, as a difference.

        An added tenant is polled at once; a removed one stops, and its series and counters go.
        A tenant whose clients depend on something that changed (credential, endpoints, cloud,
        `ca_file`, `collect`, `request_timeout`) gets new clients and is polled at once, keeping
        its last good values until that poll lands. An unchanged tenant keeps its clients, its
        token cache and its slot: the reload costs it no request. A new poll interval or
        concurrency applies from each tenant's next slot.
        """
        old_config, old = self.config, {t.name: t for t in self.tenants}
        self.config = config
        self.tenants = tuple(t for t in config.tenants if self.shard.owns(t.tenant_id))
        new = {t.name: t for t in self.tenants}
        await self._scheduler.set_limits(config.poll_interval, config.max_concurrency)
        summary = ReloadSummary()
        for name in old.keys() - new.keys():
            self._scheduler.remove(name)
            self.store.remove_tenant(name)
            summary.removed.append(name)
        for name, tenant in new.items():
            before = old.get(name)
            if before is None or before.tenant_id != tenant.tenant_id:
                if before is not None:  # another directory under the same name
                    self._scheduler.remove(name)
                    self.store.remove_tenant(name)
                self._add(tenant)
                summary.added.append(name)
                continue
            if clients_differ(old_config, before, config, tenant):
                self.store.reconfigure(
                    name,
                    config.collectors_for(tenant),
                    intervals=config.intervals_for(tenant),
                    thresholds=config.thresholds_for(tenant),
                    cloud=tenant.cloud,
                    source=tenant.source,
                )
                if self._session is not None:
                    self._scheduler.add(self._poller(tenant))  # polls at once when running
                summary.changed.append(name)
                continue
            self.store.reconfigure(
                name,
                config.collectors_for(tenant),
                intervals=config.intervals_for(tenant),
                thresholds=config.thresholds_for(tenant),
            )
            poller = self._scheduler.poller(name)
            if poller is not None:
                poller.set_intervals(self._skipping_intervals(tenant), config.poll_interval)
            summary.unchanged.append(name)
        return summary

    def _add(self, tenant: TenantConfig) -> None:
        self.store.add_tenant(
            tenant.name,
            tenant.tenant_id,
            tenant.cloud,
            self.config.collectors_for(tenant),
            intervals=self.config.intervals_for(tenant),
            thresholds=self.config.thresholds_for(tenant),
            source=tenant.source,
        )
        kept = self._kept_unclaimed.pop(tenant.name, None)
        if kept is not None and self.keeper is not None:
            restored = restore(
                self.store, {tenant.name: kept}, {tenant.name: (tenant.tenant_id, tenant.cloud)}
            )
            self.keeper.stats.restored_records += restored
        if self._session is not None:
            self._scheduler.add(self._poller(tenant))

    async def open(self) -> None:
        """Create the HTTP session and the pollers, without starting to poll."""
        if self._session is not None:
            return
        # No trust_env: HTTPS_PROXY and NO_PROXY are read once per tenant (exporter.proxies).
        # No cookies: Entra ID sets some, and one tenant's must never ride on another's request.
        # Connections for every request the scheduler lets run at once, so that none waits for
        # the pool: a tenant's collectors at once in each Graph slot (four or fewer), and the
        # Entra ID requests of the tokens fetched ahead (MSAL's, sent on this session too).
        concurrency = self.config.max_concurrency
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency * 4 + tokens_ahead(concurrency)),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._scheduler.add_all([self._poller(tenant) for tenant in self.tenants])

    async def start(self) -> None:
        """Open, then poll every tenant in the background until `close()`."""
        await self.open()
        self._started_at = self._clock()
        self._task = asyncio.create_task(self._scheduler.run(), name="scheduler")
        self._task.add_done_callback(self._scheduler_ended)
        if self._base_config.gdap is not None:
            # Beside polling, not before it: a slow partner tenant does not delay the listed
            # tenants. The store holds "ready" until this first discovery has answered, so
            # ready still means every customer found at start was polled once.
            self._discovery_task = asyncio.create_task(
                self._discover_forever(now=True), name="gdap"
            )
        if self.keeper is not None:
            self._keeper_task = asyncio.create_task(self.keeper.run(), name="storage")

    @staticmethod
    def _scheduler_ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("polling stopped", exc_info=task.exception())

    async def poll_all_once(self) -> None:
        """Poll every tenant once (tests and benchmarks); opens first if needed."""
        await self.open()
        await self._scheduler.run_round()

    async def close(self) -> None:
        """Stop polling and close connections, abandoning token requests still in flight."""
        # Discovery first: one finishing now would add tenants to a stopping scheduler.
        if self._discovery_task is not None:
            self._discovery_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._discovery_task
            self._discovery_task = None
        if self._task is not None:
            self._task.cancel()
            # A scheduler that died has been logged already (critical).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._keeper_task is not None:
            self._keeper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper_task
            self._keeper_task = None
        if self.keeper is not None:
            await self.keeper.write_if_changed()  # once more at clean shutdown
        if self._session is not None:
            await self._session.close()
            self._session = None
        # A token request stuck in a thread must not hold up shutdown (it ends at its timeout).
        self._factory.close()


@dataclass
class ReloadSummary:
    """What a reload did, by tenant name (for the log)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
