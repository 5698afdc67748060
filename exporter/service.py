"""The running exporter: config in, pollers running, snapshot store out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp

from .auth import MsalTokenProvider, TokenProvider
from .collectors import COLLECTORS
from .config import ExporterConfig, TenantConfig
from .graph import GraphClient, RetryPolicy
from .pollers import Scheduler, TenantPoller
from .snapshot import SnapshotStore
from .tls import TrustStore

TokenProviderFactory = Callable[[TenantConfig], TokenProvider]


class Exporter:
    """Owns the HTTP client session and the pollers of every configured tenant."""

    def __init__(
        self,
        config: ExporterConfig,
        *,
        ca_data: str | None = None,
        retry: RetryPolicy | None = None,
        token_provider_factory: TokenProviderFactory | None = None,
    ) -> None:
        self.config = config
        self.store = SnapshotStore()
        self._trust = TrustStore(ca_data)
        self._retry = retry
        self._token_provider_factory = token_provider_factory or self._msal_provider
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: Scheduler | None = None
        self._task: asyncio.Task[None] | None = None
        for tenant in config.tenants:
            self.store.add_tenant(
                tenant.name, tenant.tenant_id, tenant.cloud, config.collectors_for(tenant)
            )

    def _msal_provider(self, tenant: TenantConfig) -> TokenProvider:
        return MsalTokenProvider(
            tenant,
            timeout=self.config.request_timeout,
            http_client=self._trust.requests_session(tenant.ca_file),
        )

    def _request_counter(self, tenant: str) -> Callable[[int], None]:
        def count(status: int) -> None:
            self.store.count_graph_request(tenant, status)

        return count

    async def open(self) -> None:
        """Create the HTTP session and the pollers, without starting to poll."""
        config = self.config
        # trust_env: corporate HTTPS_PROXY settings apply to Graph as they do to MSAL.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(config.max_concurrency * 4, 16)),
            trust_env=True,
        )
        pollers = []
        for tenant in config.tenants:
            graph = GraphClient(
                self._session,
                tenant.graph_url,
                self._token_provider_factory(tenant),
                timeout=config.request_timeout,
                ssl_context=self._trust.aiohttp_context(tenant.ca_file),
                retry=self._retry,
                on_response=self._request_counter(tenant.name),
            )
            collectors = [COLLECTORS[c] for c in config.collectors_for(tenant)]
            pollers.append(TenantPoller(tenant.name, collectors, graph, self.store))
        self._scheduler = Scheduler(pollers, config.poll_interval, config.max_concurrency)

    async def start(self) -> None:
        """Open, then poll every tenant in the background until `close()`."""
        await self.open()
        assert self._scheduler is not None
        self._task = asyncio.create_task(self._scheduler.run(), name="scheduler")

    async def poll_all_once(self) -> None:
        """Poll every tenant once (tests and benchmarks); `open()` first."""
        if self._scheduler is None:
            await self.open()
        assert self._scheduler is not None
        await self._scheduler.run_round()

    async def close(self) -> None:
        """Stop polling and close connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
