"""The `$select` contract: every property a parser reads is selected, and every selected
property is read (removing it from `$select` changes what the exporter knows)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from exporter.graph import GraphClient
from exporter.kinds import KINDS, ade, ade_devices, apns, vpp

from .conftest import World
from .graph_data import ade_item, apns_item, device_item, vpp_item


class Recording(dict[str, Any]):
    """A Graph item that remembers which properties were read."""

    def __init__(self, item: dict[str, Any]) -> None:
        super().__init__(item)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


def rich_ade() -> dict[str, Any]:
    # Every property differs from what the parser assumes when it is missing.
    return ade_item(
        "Rich ADE", error_code=3, devices=42, token_type="appleSchoolManager", apple_id="a@b.c"
    )


def rich_vpp() -> dict[str, Any]:
    return vpp_item(
        "Rich VPP",
        state="invalid",
        sync_status="failed",
        organization="Rich Org",
        account_type="education",
        location="Rich Location",
    )


def rich_apns() -> dict[str, Any]:
    item = apns_item()
    item["certificateUploadStatus"] = "Failed"
    return item


def rich_devices() -> list[dict[str, Any]]:
    # Between them, every property matters: a platform, a state, a profile assigned to a device
    # not yet enrolled, a device waiting without one since its creation, a deleted one, one an
    # admin imported, and their last contacts.
    return [
        device_item("waiting", platform="macOS", state="notContacted", profile_id=None),
        device_item("assigned", state="failed", profile_id="profile-ios"),
        device_item("deleted", deleted=True),
        device_item("imported", source="adminImport"),
    ]


def rich_device() -> dict[str, Any]:
    return device_item("rich", platform="macOS", state="notContacted", source="adminImport")


CASES: list[tuple[str, ModuleType, Callable[[dict[str, Any]], Any], Callable[[], Any]]] = [
    ("ade", ade, ade.parse_token, rich_ade),
    ("vpp", vpp, vpp.parse_token, rich_vpp),
    ("apns", apns, apns.parse_certificate, rich_apns),
    ("ade_devices", ade_devices, ade_devices.parse_device, rich_device),
]


@pytest.mark.parametrize(("name", "module", "parse", "item"), CASES, ids=[c[0] for c in CASES])
def test_every_property_a_parser_reads_is_selected(
    name: str, module: ModuleType, parse: Callable[[dict[str, Any]], Any], item: Callable[[], Any]
) -> None:
    recording = Recording(item())
    assert parse(recording) is not None
    assert recording.read - {"@odata.type"} <= set(module.SELECT)
    assert recording.read, "the parser read nothing"


@pytest.mark.parametrize(("name", "module", "parse", "item"), CASES, ids=[c[0] for c in CASES])
async def test_removing_any_selected_property_changes_the_records(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    module: ModuleType,
    parse: Callable[[dict[str, Any]], Any],
    item: Callable[[], Any],
) -> None:
    if name == "ade_devices":
        token = ade_item("Devices")
        world.add("contoso", ade_tokens=[token], devices={token["id"]: rich_devices()})
    else:
        data = {"ade": "ade_tokens", "vpp": "vpp_tokens", "apns": "apns_certificate"}[name]
        value = item()
        world.add("contoso", **{data: value if name == "apns" else [value]})
    exporter = await world.exporter(collect=[name])
    await exporter.poll_all_once()
    graph: GraphClient = exporter._scheduler._pollers["contoso"]._graph  # type: ignore[assignment]
    kind = KINDS[name]
    full = await kind.fetch(graph)
    assert full, "the rich item parsed"
    # Graph always returns `id`; every other property must matter to the records.
    for dropped in (p for p in module.SELECT if p != "id"):
        monkeypatch.setattr(module, "SELECT", tuple(p for p in module.SELECT if p != dropped))
        assert await kind.fetch(graph) != full, f"{name}: {dropped} is selected but unused"
        monkeypatch.undo()
