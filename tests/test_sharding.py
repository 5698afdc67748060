"""Shard ownership (kube-state-metrics' contract), the flags, and two shards against Graph."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from exporter.cli import build_parser, main, shard_from_args
from exporter.service import Exporter
from exporter.sharding import Shard, fnv1a_64, jump_consistent_hash, ordinal_of, shard_of

from .conftest import World, exposition, samples_by_name
from .graph_data import ade_item

IDS = [str(uuid.uuid5(uuid.NAMESPACE_DNS, f"customer-{n}.example")) for n in range(10_000)]


def test_fnv1a_64_known_values() -> None:
    # The FNV reference values, and ids hashed by an independent C implementation.
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(b"72f988bf-86f1-41af-91ab-2d7cd011db47") == 0x587A9F4F0C3BD4EA
    assert fnv1a_64(b"contoso") == 0x0BC076B507496940


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # Lamping and Veach's C++ function, compiled with g++, for 1, 2, 3, 5, 8, 10, 100, 1000.
        (0, [0, 0, 0, 0, 0, 0, 0, 0]),
        (1, [0, 0, 0, 0, 6, 6, 55, 549]),
        (0xDEADBEEF, [0, 1, 2, 3, 5, 5, 87, 285]),
        (0xFFFFFFFFFFFFFFFF, [0, 1, 2, 2, 7, 9, 92, 313]),
    ],
)
def test_jump_consistent_hash_known_values(key: int, expected: list[int]) -> None:
    buckets = [1, 2, 3, 5, 8, 10, 100, 1000]
    assert [jump_consistent_hash(key, n) for n in buckets] == expected


def test_shard_of_a_tenant_id_is_stable_and_case_insensitive() -> None:
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    assert [shard_of(tenant, m) for m in (1, 2, 3, 5, 8, 10, 100)] == [0, 1, 1, 4, 4, 4, 40]
    assert shard_of(tenant.upper(), 5) == shard_of(tenant, 5) == 4


@pytest.mark.parametrize("total", [3, 5, 8])
def test_every_shard_owns_its_share(total: int) -> None:
    owned = Counter(shard_of(tenant, total) for tenant in IDS)
    assert set(owned) == set(range(total))
    share = len(IDS) / total
    for count in owned.values():
        assert abs(count - share) / share < 0.06, owned


@pytest.mark.parametrize("total", [1, 2, 3, 5, 8])
def test_adding_a_shard_moves_about_one_in_m_plus_one(total: int) -> None:
    moved = sum(1 for t in IDS if shard_of(t, total) != shard_of(t, total + 1))
    expected = len(IDS) / (total + 1)
    assert abs(moved - expected) / expected < 0.08
    # Jump hash only ever moves a tenant to the new shard.
    assert all(
        shard_of(t, total + 1) == total for t in IDS if shard_of(t, total) != shard_of(t, total + 1)
    )


def test_shard_from_the_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "exporter-2")
    args = build_parser().parse_args(["--shard.from-pod-name", "--total-shards=3"])
    assert shard_from_args(args) == Shard(2, 3)
    assert ordinal_of("intune-apple-token-exporter-11") == 11


@pytest.mark.parametrize(
    ("flags", "env", "gist"),
    [
        (["--shard=3", "--total-shards=3"], None, "--shard must be between 0 and"),
        (["--shard=-1", "--total-shards=3"], None, "--shard must be between 0 and"),
        (["--total-shards=0"], None, "--total-shards must be at least 1"),
        (["--shard.from-pod-name", "--total-shards=3"], "exporter", "--shard.from-pod-name:"),
        (["--shard.from-pod-name", "--total-shards=2"], "exporter-2", "--shard must be between"),
    ],
)
def test_bad_shard_flags_exit_2_naming_the_flag(
    flags: list[str],
    env: str | None,
    gist: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if env is not None:
        monkeypatch.setenv("POD_NAME", env)
    assert main([*flags, "--demo", "--check-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid flags: ")
    assert gist in err
    assert "Traceback" not in err


async def test_two_shards_split_the_tenants_between_them(world: World) -> None:
    for n in range(12):
        world.add(f"customer-{n:02d}", ade_tokens=[ade_item(f"Token {n}")])
    config = world.config(collect=["ade"])
    owned: list[set[str]] = []
    for index in range(2):
        exporter = Exporter(config, shard=Shard(index, 2))
        world.exporters.append(exporter)
        await exporter.poll_all_once()
        assert exporter.store.ready
        names = {state.name for state in exporter.store.view().tenants}
        samples = samples_by_name(exposition(exporter))
        assert {labels["tenant"] for labels, _ in samples["intune_ade_token_info"]} == names
        assert samples["intune_exporter_shard_info"] == [
            ({"shard": str(index), "total_shards": "2"}, 1.0)
        ]
        assert samples["intune_exporter_tenants"] == [({}, float(len(names)))]
        owned.append(names)
    assert owned[0] | owned[1] == {t["name"] for t in world.tenants}
    assert owned[0] & owned[1] == set()
    assert owned[0] and owned[1]
    # Each shard asked Graph for its own tenants only.
    asked = {r.tenant_id for r in world.cloud.graph_requests}
    assert asked == {t["tenant_id"] for t in world.tenants}
    assert len(world.cloud.graph_requests) == 12


async def test_a_shard_that_owns_no_tenant_is_ready(world: World) -> None:
    world.add("only", ade_tokens=[ade_item("T")])
    config = world.config(collect=["ade"])
    owner = shard_of(config.tenants[0].tenant_id, 2)
    exporter = Exporter(config, shard=Shard(1 - owner, 2))
    world.exporters.append(exporter)
    await exporter.poll_all_once()
    assert exporter.store.ready
    assert exporter.tenants == ()
    samples = samples_by_name(exposition(exporter))
    assert samples["intune_exporter_tenants"] == [({}, 0.0)]
    assert "intune_tenant_up" not in samples
    assert len(world.cloud.graph_requests) == 0
