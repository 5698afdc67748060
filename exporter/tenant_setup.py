"""What a tenant's config makes of its clients: the token provider's settings, the one
credential source, the clients themselves, and whether a changed config needs new ones."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

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
from .proxies import Proxies
from .tls import TrustStore


class TenantClients:
    """Builds each tenant's token provider and Graph client from what every tenant shares:
    MSAL's thread pool, one MSAL HTTP client per trust setting (sending on the session), the
    proxy settings as they were at start, and the slots that bound concurrent token requests."""

    def __init__(
        self,
        ca_data: str | None,
        *,
        workers: int,
        retry: RetryPolicy | None,
        sleep: Callable[[float], Awaitable[None]],
        on_response: Callable[[str], Callable[[int], None]],
    ) -> None:
        # One MSAL call blocks one thread, and waits for a slot rather than in the pool's queue,
        # where its deadline would run before it had started.
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msal")
        self._trust = TrustStore(ca_data)
        self._proxies = Proxies()
        self._slots = asyncio.Semaphore(workers)
        self._retry = retry
        self._sleep = sleep  # how Graph retries wait (tests record it instead)
        self._on_response = on_response  # per tenant: counts Graph's answers by status

    def build(
        self, session: aiohttp.ClientSession, tenant: TenantConfig, request_timeout: float
    ) -> tuple[MsalTokenProvider, GraphClient]:
        msal_http = self._trust.msal_client(
            session, tenant.ca_file, request_timeout, self._proxies.for_url(tenant.authority_url)
        )
        tokens = MsalTokenProvider(
            auth_settings(tenant, request_timeout),
            http_client=msal_http,
            executor=self._executor,
            slots=self._slots,
        )
        graph = GraphClient(
            session,
            tenant.graph_url,
            tokens,
            timeout=request_timeout,
            ssl_context=self._trust.aiohttp_context(tenant.ca_file),
            retry=self._retry,
            on_response=self._on_response(tenant.name),
            proxy=self._proxies.for_url(tenant.graph_url),
            sleep=self._sleep,
        )
        return tokens, graph

    def close(self) -> None:
        """Abandon token requests in flight (MSAL threads end at their timeout)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._trust.close()


# What a tenant's clients are not built from: a change of these keeps the clients.
_NOT_IN_CLIENTS: Final = frozenset({"name", "thresholds", "collector_intervals"})


def clients_differ(
    old_config: ExporterConfig, old: TenantConfig, config: ExporterConfig, new: TenantConfig
) -> bool:
    """Whether a tenant needs new clients: its credential, endpoints, cloud, `ca_file`,
    collectors or the request timeout changed (secrets compare by value)."""
    if old_config.request_timeout != config.request_timeout:
        return True
    if old_config.collectors_for(old) != config.collectors_for(new):
        return True
    keys = set(type(new).model_fields) - _NOT_IN_CLIENTS
    return any(getattr(old, key) != getattr(new, key) for key in keys)


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


def auth_settings(tenant: TenantConfig, request_timeout: float = 30.0) -> AuthSettings:
    """What the token provider of `tenant` needs, and nothing more of its config."""
    return AuthSettings(
        tenant=tenant.name,
        authority=f"{tenant.authority_url}/{tenant.tenant_id}",
        client_id=tenant.client_id,
        scope=f"{tenant.graph_url}/.default",
        credential=credential_source(tenant),
        # A cold token is two requests (OIDC discovery, then the token), each with the timeout.
        deadline=2 * request_timeout + 5,
    )
