"""The running exporter: config in, pollers running, snapshot store out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import aiohttp

from .auth import (
    AuthSettings,
    ClientCertificateFile,
    ClientSecret,
    ClientSecretFile,
    CredentialSource,
    FederatedTokenFile,
    MsalTokenProvider,
)
from .config import ExporterConfig, TenantConfig
from .graph import GraphClient, RetryPolicy
from .kinds import KINDS
from .metrics import TenantLines, exporter_samples
from .pollers import Scheduler, TenantPoller
from .proxies import proxy_for
from .records import Sample
from .sharding import Shard
from .snapshot import SnapshotStore
from .tls import TrustStore

log = logging.getLogger(__name__)


class Exporter:
    """Owns the HTTP sessions, MSAL's worker threads and the pollers of every tenant."""

    def __init__(
        self,
        config: ExporterConfig,
        *,
        shard: Shard | None = None,
        ca_data: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.config = config
        self.shard = shard or Shard()
        self.tenants = tuple(t for t in config.tenants if self.shard.owns(t.tenant_id))
        self.store = SnapshotStore()
        self.lines = TenantLines(self.store)
        # One MSAL call blocks one thread; enough threads that polling slots never queue for one.
        workers = config.max_concurrency + 4
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msal")
        # MSAL's connections: one pool per trust setting, shared by every tenant with it.
        self._trust = TrustStore(ca_data, pool_size=workers)
        self._retry = retry
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: Scheduler | None = None
        self._task: asyncio.Task[None] | None = None
        for tenant in self.tenants:
            self.store.add_tenant(
                tenant.name, tenant.tenant_id, tenant.cloud, config.collectors_for(tenant)
            )

    @property
    def polling(self) -> bool:
        """False once the background polling has died (the liveness probe reports it)."""
        return self._task is None or not self._task.done()

    def health_problem(self) -> str | None:
        """Why the exporter is not healthy, or None."""
        return None if self.polling else "polling has stopped"

    def exporter_samples(self) -> Iterator[Sample]:
        """The exporter's own samples, as of now."""
        return exporter_samples(self.config.poll_interval, self.shard, len(self.tenants))

    def _request_counter(self, tenant: str) -> Callable[[int], None]:
        def count(status: int) -> None:
            self.store.count_graph_request(tenant, status)

        return count

    async def open(self) -> None:
        """Create the HTTP session and the pollers, without starting to poll."""
        config = self.config
        # No trust_env: HTTPS_PROXY and NO_PROXY are read once per tenant (exporter.proxies).
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(config.max_concurrency * 4, 16)),
        )
        pollers = []
        for tenant in self.tenants:
            msal_http = self._trust.msal_client(
                tenant.ca_file, config.request_timeout, proxy_for(tenant.authority_url)
            )
            tokens = MsalTokenProvider(
                auth_settings(tenant), http_client=msal_http, executor=self._executor
            )
            graph = GraphClient(
                self._session,
                tenant.graph_url,
                tokens,
                timeout=config.request_timeout,
                ssl_context=self._trust.aiohttp_context(tenant.ca_file),
                retry=self._retry,
                on_response=self._request_counter(tenant.name),
                proxy=proxy_for(tenant.graph_url),
            )
            collectors = [KINDS[c] for c in config.collectors_for(tenant)]
            pollers.append(TenantPoller(tenant.name, collectors, graph, self.store))
        self._scheduler = Scheduler(pollers, config.poll_interval, config.max_concurrency)

    async def start(self) -> None:
        """Open, then poll every tenant in the background until `close()`."""
        await self.open()
        assert self._scheduler is not None
        self._task = asyncio.create_task(self._scheduler.run(), name="scheduler")
        self._task.add_done_callback(self._scheduler_ended)

    @staticmethod
    def _scheduler_ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("polling stopped", exc_info=task.exception())

    async def poll_all_once(self) -> None:
        """Poll every tenant once (tests and benchmarks); `open()` first."""
        if self._scheduler is None:
            await self.open()
        assert self._scheduler is not None
        await self._scheduler.run_round()

    async def close(self) -> None:
        """Stop polling and close connections, abandoning token requests still in flight."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        # A token request stuck in a thread must not hold up shutdown (it ends at its timeout).
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._trust.close()


def credential_source(tenant: TenantConfig) -> CredentialSource:
    """The one credential a validated tenant config names."""
    if tenant.client_secret is not None:
        return ClientSecret(tenant.client_secret.get_secret_value())
    if tenant.client_secret_file is not None:
        return ClientSecretFile(tenant.client_secret_file)
    if tenant.client_certificate_file is not None:
        password = tenant.client_certificate_password
        return ClientCertificateFile(
            tenant.client_certificate_file, password.get_secret_value() if password else None
        )
    assert tenant.federated_token_file is not None  # config validation ensures exactly one
    return FederatedTokenFile(tenant.federated_token_file)


def auth_settings(tenant: TenantConfig) -> AuthSettings:
    """What the token provider of `tenant` needs, and nothing more of its config."""
    return AuthSettings(
        tenant=tenant.name,
        authority=f"{tenant.authority_url}/{tenant.tenant_id}",
        client_id=tenant.client_id,
        scope=f"{tenant.graph_url}/.default",
        credential=credential_source(tenant),
    )
