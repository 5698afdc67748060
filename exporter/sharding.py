"""Which replica owns which tenant: kube-state-metrics' sharding (`pkg/sharding/listwatch.go`).

A tenant belongs to shard ``jump_consistent_hash(fnv1a_64(tenant_id.lower()), total_shards)``.
Both functions are a contract: other tools may compute a tenant's shard, so they must never
change. Jump hash moves only about 1/M of the tenants when the number of shards M changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_FNV_OFFSET: Final = 0xCBF29CE484222325
_FNV_PRIME: Final = 0x100000001B3
_MASK64: Final = 0xFFFFFFFFFFFFFFFF
_JUMP_MULTIPLIER: Final = 2862933555777941757
_ORDINAL_RE: Final = re.compile(r"-(\d+)$")


def fnv1a_64(data: bytes) -> int:
    """FNV-1a, 64 bits: for each byte, xor then multiply modulo 2^64."""
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & _MASK64
    return value


def jump_consistent_hash(key: int, buckets: int) -> int:
    """Lamping and Veach (2014): the bucket in [0, buckets) of a 64-bit key."""
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_of(tenant_id: str, total_shards: int) -> int:
    """The shard that owns a tenant (by its tenant id, case-insensitively)."""
    return jump_consistent_hash(fnv1a_64(tenant_id.lower().encode("utf-8")), total_shards)


def ordinal_of(pod_name: str) -> int:
    """The StatefulSet ordinal at the end of a pod name (``exporter-2`` -> 2)."""
    match = _ORDINAL_RE.search(pod_name.strip())
    if match is None:
        raise ValueError(f"pod name {pod_name!r} does not end in a StatefulSet ordinal (-N)")
    return int(match.group(1))


@dataclass(frozen=True)
class Shard:
    """This process's share of the tenants: shard `index` of `total`."""

    index: int = 0
    total: int = 1

    def __post_init__(self) -> None:
        if self.total < 1:
            raise ValueError(f"--total-shards must be at least 1, not {self.total}")
        if not 0 <= self.index < self.total:
            raise ValueError(
                f"--shard must be between 0 and --total-shards - 1 ({self.total - 1}), "
                f"not {self.index}"
            )

    def owns(self, tenant_id: str) -> bool:
        """Whether this shard polls and exposes the tenant."""
        return self.total == 1 or shard_of(tenant_id, self.total) == self.index
