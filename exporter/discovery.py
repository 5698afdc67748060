"""GDAP discovery: an MSP's customer tenants, read from its partner tenant, as CIPP does.

`GET {graph}/v1.0/tenantRelationships/delegatedAdminCustomers` in the partner tenant (application
permission `DelegatedAdminRelationship.Read.All`) lists the customers with a GDAP relationship.
Each becomes a tenant named by its display name, polled with the `discovery.gdap` block's
credential; a tenant listed in `tenants:` with the same tenant id wins.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from .config import ExporterConfig, GdapDiscovery, TenantConfig
from .errors import PollError, Reason
from .graph import GraphClient
from .timetext import datetime_text

log = logging.getLogger(__name__)

CUSTOMERS_PATH: Final = "/v1.0/tenantRelationships/delegatedAdminCustomers"
PAGE_SIZE: Final = 300  # Graph's largest $top for this collection
# After a failed discovery, try again sooner than the refresh interval (as Prometheus's service
# discovery does), so that a network blip at start does not leave the customers out for hours.
RETRY_AFTER_FAILURE: Final = 300.0
# The longest one discovery may take (every page, with Graph's retries) before it counts as failed.
DISCOVERY_DEADLINE: Final = 300.0
_GUID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")  # a tenant label holds none


@dataclass(frozen=True)
class Customer:
    tenant_id: str
    display_name: str


@dataclass
class DiscoveryState:
    """What `intune_discovery_*` expose and the status page shows."""

    up: bool = False
    last_success_at: float | None = None
    tenants: int = 0  # after include and exclude, before configured tenants win
    errors: Counter[Reason] = field(default_factory=Counter)
    last_error: str | None = None


async def fetch_customers(graph: GraphClient) -> list[Customer]:
    """Every GDAP customer of the partner tenant; raises `PollError` (the poll reasons).

    An item without a usable tenant id is skipped with a warning: it cannot be polled.
    """
    items = await graph.get_collection(
        CUSTOMERS_PATH, ("tenantId", "displayName"), query={"$top": str(PAGE_SIZE)}
    )
    customers = []
    for item in items:
        tenant_id, name = item.get("tenantId"), item.get("displayName")
        if not isinstance(tenant_id, str) or not _GUID.match(tenant_id):
            log.warning(
                "a GDAP customer without a usable tenantId is skipped",
                extra={"customer": str(name)[:80]},
            )
            continue
        label = name.strip() if isinstance(name, str) and name.strip() else tenant_id
        customers.append(Customer(tenant_id.lower(), label))
    return customers


def discovered_tenants(
    gdap: GdapDiscovery, customers: Sequence[Customer], configured: Sequence[TenantConfig]
) -> list[TenantConfig]:
    """The customers to poll, as tenants: filtered by `include`/`exclude`, without the ones
    `tenants:` lists (by tenant id), named uniquely and stably.

    Two customers with one display name (or one named like a configured tenant) get the first
    8 characters of their tenant id appended, so names stay unique and do not depend on order.
    """
    configured_ids = {t.tenant_id.lower() for t in configured}
    wanted = [
        c for c in customers if gdap.wanted(c.display_name) and c.tenant_id not in configured_ids
    ]
    unique = list({c.tenant_id: c for c in wanted}.values())  # one relationship is enough
    # Cut to the tenant name's limit first (Entra allows 256 characters, a name here 128), so
    # that uniqueness is judged on the names actually used.
    base = {c.tenant_id: _base_name(c) for c in unique}
    taken = Counter(base.values())
    names = {t.name for t in configured}
    tenants = []
    used: set[str] = set()
    for customer in unique:
        name = base[customer.tenant_id]
        if taken[name] > 1 or name in names:  # (names: the configured tenants')
            name = f"{name[: MAX_NAME - _SUFFIX].rstrip()} ({customer.tenant_id[:8]})"
        if name in names or name in used:  # still taken: the whole tenant id is unique
            name = customer.tenant_id
        used.add(name)
        try:
            tenants.append(gdap.tenant(customer.tenant_id, name))
        except ValueError as exc:  # pydantic's; never expected, never fatal to discovery
            log.warning(
                "a GDAP customer is skipped: its name cannot be a tenant name",
                extra={"tenant_id": customer.tenant_id, "problem": str(exc)[:200]},
            )
    return tenants


MAX_NAME: Final = 128  # a tenant name's length limit (TenantConfig)
_SUFFIX: Final = len(" (12345678)")


def _base_name(customer: Customer) -> str:
    """The display name without control characters, cut to the limit and stripped again."""
    name = _CONTROL.sub(" ", customer.display_name).strip()[:MAX_NAME].rstrip()
    return name or customer.tenant_id


def merged(config: ExporterConfig, discovered: Sequence[TenantConfig]) -> ExporterConfig:
    """The config with the discovered tenants after the listed ones."""
    return config.model_copy(update={"tenants": (*config.tenants, *discovered)})


def count_filtered(gdap: GdapDiscovery, customers: Sequence[Customer]) -> int:
    """Customers left after `include` and `exclude` (`intune_discovery_tenants`)."""
    return sum(
        1 for c in {c.tenant_id: c for c in customers}.values() if gdap.wanted(c.display_name)
    )


def failure_text(error: PollError) -> str:
    return f"{error.reason}: {error}"


def summary_line(partner_tenant_id: str, state: DiscoveryState) -> str:
    """How discovery is doing, in one line for the status page."""
    found = f"{state.tenants} customers" if state.last_success_at is not None else "nothing"
    last = datetime_text(state.last_success_at)
    if state.up:
        return f"GDAP discovery (partner {partner_tenant_id}): up, {found}; last {last}."
    why = state.last_error or "not run yet"
    return (
        f"GDAP discovery (partner {partner_tenant_id}): failing ({why}); "
        f"last success {last}; the tenants found before stay."
    )
