"""Kept state (`--storage.path`): each tenant's last good records, on disk across restarts.

Pushgateway's `--persistence.file`, with its care: one JSON file with a format version, written
atomically (a temporary file in the same directory, fsync, rename, fsync of the directory),
mode 0600, at most once per write interval after a poll changed something, and once more at
clean shutdown. Kept: per tenant its id and cloud, and per collector the last good records and
the time of their success. Never a token, a secret, a certificate or a serial number (each
credential kind names the fields it never keeps). Counters are not kept.

A file that cannot be used never stops the exporter: it is moved aside as
`<name>.corrupt-<unix time>` with a warning, and the exporter starts empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from .kinds import KINDS, CredentialKind
from .records import Records
from .snapshot import SnapshotStore, StoreView, TenantState

log = logging.getLogger(__name__)

FILE_NAME: Final = "state.json"
FORMAT: Final = "intune-apple-token-exporter-state"
VERSION: Final = 1
DEFAULT_WRITE_INTERVAL: Final = 30.0


class StorageError(Exception):
    """The state file cannot be used (its message says why)."""


@dataclass(frozen=True)
class KeptCollector:
    records: Records
    last_success_at: float


@dataclass(frozen=True)
class KeptTenant:
    tenant_id: str
    cloud: str
    last_success_at: float | None
    collectors: Mapping[str, KeptCollector]


@dataclass
class StorageStats:
    """What `intune_exporter_storage_*` expose."""

    last_write_at: float | None = None
    write_errors: int = 0
    restored_records: int = 0
    writes: int = 0  # successful writes (tests count them)


def check_directory(path: Path) -> str | None:
    """Why `path` cannot hold the state file, or None."""
    if not path.exists():
        return f"{str(path)!r} does not exist"
    if not path.is_dir():
        return f"{str(path)!r} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{str(path)!r} is not writable"
    return None


class StateFile:
    """Reads and writes the one state file of a directory."""

    def __init__(
        self,
        directory: Path,
        kinds: Mapping[str, CredentialKind] = KINDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = directory / FILE_NAME
        self._kinds = kinds
        self._clock = clock
        self._adapters = {
            name: TypeAdapter(tuple[kind.record_type, ...])  # type: ignore[name-defined]
            for name, kind in kinds.items()
        }

    # --- reading ----------------------------------------------------------------------------

    def load(self) -> dict[str, KeptTenant]:
        """The kept tenants; {} on a first start, or after moving an unusable file aside."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            return self._set_aside(f"cannot be read: {getattr(exc, 'strerror', None) or exc}")
        try:
            return self._parse(text)
        except StorageError as exc:
            return self._set_aside(str(exc))

    def _set_aside(self, problem: str) -> dict[str, KeptTenant]:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._clock())}")
        try:
            self.path.rename(aside)
            moved = f"moved aside as {aside.name}"
        except OSError as exc:
            moved = f"and cannot be moved aside ({exc.strerror})"
        log.warning(
            f"kept state {self.path} {problem}; {moved}; starting without kept state",
            extra={"file": str(self.path)},
        )
        return {}

    def _parse(self, text: str) -> dict[str, KeptTenant]:
        if not text.strip():
            raise StorageError("is empty")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StorageError(f"is not valid JSON (truncated?): {exc.msg} at {exc.pos}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise StorageError("is not an intune-apple-token-exporter state file")
        if doc.get("version") != VERSION:
            raise StorageError(f"has format version {doc.get('version')!r}; this exporter reads 1")
        tenants = doc.get("tenants")
        if not isinstance(tenants, dict):
            raise StorageError("has no tenants mapping")
        return {name: self._tenant(name, raw) for name, raw in tenants.items()}

    def _tenant(self, name: str, raw: Any) -> KeptTenant:
        if not isinstance(raw, dict):
            raise StorageError(f"tenant {name!r} is not a mapping")
        tenant_id, cloud = raw.get("tenant_id"), raw.get("cloud")
        if not isinstance(tenant_id, str) or not isinstance(cloud, str):
            raise StorageError(f"tenant {name!r} has no tenant_id or cloud")
        collectors: dict[str, KeptCollector] = {}
        for collector, kept in (raw.get("collectors") or {}).items():
            if collector not in self._kinds:
                continue  # a collector this version does not have: nothing to restore
            collectors[collector] = self._collector(name, collector, kept)
        return KeptTenant(tenant_id, cloud, _timestamp(raw.get("last_success_at")), collectors)

    def _collector(self, tenant: str, collector: str, kept: Any) -> KeptCollector:
        where = f"tenant {tenant!r}, collector {collector!r}"
        if not isinstance(kept, dict) or _timestamp(kept.get("last_success_at")) is None:
            raise StorageError(f"{where} has no last_success_at")
        records = kept.get("records")
        if not isinstance(records, list):
            raise StorageError(f"{where} has no records list")
        defaults = self._kinds[collector].unkept
        try:
            parsed = self._adapters[collector].validate_python(
                [{**defaults, **r} if isinstance(r, dict) else r for r in records]
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise StorageError(f"{where} has an invalid record: {first['msg']}") from None
        return KeptCollector(tuple(parsed), float(kept["last_success_at"]))

    # --- writing ----------------------------------------------------------------------------

    def document(self, view: StoreView) -> dict[str, Any]:
        """What is kept of a view of the store (only collectors that succeeded once)."""
        tenants: dict[str, Any] = {}
        for state in view.tenants:
            collectors = {
                name: {
                    "last_success_at": collector.last_success_at,
                    "records": [self._record(name, r) for r in collector.records],
                }
                for name, collector in state.collectors.items()
                if collector.records is not None
                and collector.last_success_at is not None
                and name in self._kinds
            }
            if collectors:
                tenants[state.name] = {
                    "tenant_id": state.tenant_id,
                    "cloud": state.cloud,
                    "last_success_at": state.last_success_at,
                    "collectors": collectors,
                }
        return {
            "format": FORMAT,
            "version": VERSION,
            "written_at": self._clock(),
            "tenants": tenants,
        }

    def _record(self, collector: str, record: Any) -> dict[str, Any]:
        unkept = self._kinds[collector].unkept
        return {f.name: getattr(record, f.name) for f in fields(record) if f.name not in unkept}

    def write(self, document: dict[str, Any]) -> None:
        """Replace the file atomically; raises OSError (the caller counts and retries)."""
        data = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        directory = self.path.parent
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:  # mkstemp's mode is already 0600
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        # The rename is durable only once the directory's entry is on disk too.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _timestamp(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def restore(
    store: SnapshotStore,
    kept: Mapping[str, KeptTenant],
    tenants: Mapping[str, tuple[str, str]],
) -> int:
    """Serve kept records of the configured tenants (`name -> (tenant_id, cloud)`) until their
    first poll; kept state of another tenant id or cloud, or of a collector no longer enabled,
    is dropped. Returns the records restored."""
    restored = 0
    for name, (tenant_id, cloud) in tenants.items():
        tenant = kept.get(name)
        if tenant is None or (tenant.tenant_id, tenant.cloud) != (tenant_id, cloud):
            continue
        restored += store.restore(
            name,
            {c: (k.records, k.last_success_at) for c, k in tenant.collectors.items()},
            tenant.last_success_at,
        )
    return restored


@dataclass
class StateKeeper:
    """Writes the store's state at most once per interval after a change, and at shutdown.

    The JSON is built and written in a thread: at 10,000 tenants it takes long enough to be
    felt by a scrape or a health probe sharing the event loop.
    """

    file: StateFile
    store: SnapshotStore
    interval: float = DEFAULT_WRITE_INTERVAL
    stats: StorageStats = field(default_factory=StorageStats)
    sleep: Callable[[float], Any] = asyncio.sleep
    _dirty: bool = False

    def __post_init__(self) -> None:
        self.store.subscribe(self._changed)
        self._dirty = False  # subscribing replays the tenants as they are: nothing new yet

    def _changed(self, name: str, state: TenantState | None) -> None:
        self._dirty = True

    async def run(self) -> None:
        """Write when something changed, every `interval`, until cancelled."""
        while True:
            await self.sleep(self.interval)
            await self.write_if_changed()

    async def write_if_changed(self) -> bool:
        """One write if anything changed since the last one; False when nothing to do or the
        write failed (logged, counted, retried at the next interval)."""
        if not self._dirty:
            return False
        self._dirty = False
        view = self.store.view()
        try:
            await asyncio.to_thread(self._write, view)
        except (OSError, ValueError) as exc:  # ValueError: a value JSON cannot hold
            self._dirty = True
            self.stats.write_errors += 1
            why = getattr(exc, "strerror", None) or exc
            log.warning(
                f"cannot write kept state {self.file.path}: {why}; retrying at the next interval",
                extra={"file": str(self.file.path)},
            )
            return False
        return True

    def _write(self, view: StoreView) -> None:
        self.file.write(self.file.document(view))
        self.stats.last_write_at = time.time()
        self.stats.writes += 1
