"""Config reload: SIGHUP, `POST /-/reload` and `--config.auto-reload-interval`, as Prometheus does.

A new config is validated completely (the same loader and messages as `--check-config`) before
anything changes; an invalid one is refused and the running one stays in force. A valid one is
applied as a difference (`Exporter.apply`). Reloads run one at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from .config import ExporterConfig, load_config
from .service import Exporter
from .yaml_config import ConfigError

log = logging.getLogger(__name__)


class Reloader:
    """Reloads one config file into one exporter; remembers how the last reload went."""

    def __init__(
        self,
        path: str,
        exporter: Exporter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._exporter = exporter
        self._clock = clock
        self._lock = asyncio.Lock()
        self._digest = _digest(path)  # of the file as loaded at start
        exporter.reload_status = (True, clock())

    async def reload(self) -> str | None:
        """Load, validate and apply the file; None when in force, else why it was refused."""
        async with self._lock:
            self._digest = await asyncio.to_thread(_digest, self.path)
            try:
                config: ExporterConfig = await asyncio.to_thread(load_config, self.path)
            except ConfigError as exc:
                message = f"invalid configuration: {exc}"
                self._exporter.reload_status = (False, self._exporter.reload_status[1])
                log.error(f"reload refused, the running config stays in force: {message}")
                return message
            summary = await self._exporter.apply(config)
            self._exporter.reload_status = (True, self._clock())
            # Discovery runs again at every reload; a failure keeps the customers found before.
            await self._exporter.refresh_discovery()
            log.info(
                "config reloaded",
                extra={
                    "file": self.path,
                    "added": len(summary.added),
                    "removed": len(summary.removed),
                    "changed": len(summary.changed),
                    "unchanged": len(summary.unchanged),
                },
            )
            return None

    async def watch(self, interval: float) -> None:
        """Reload whenever the file's content changed, checked every `interval` (until
        cancelled). A file that briefly cannot be read is checked again next time."""
        while True:
            await asyncio.sleep(interval)
            digest = await asyncio.to_thread(_digest, self.path)
            if digest is not None and digest != self._digest:
                await self.reload()


def _digest(path: str) -> str | None:
    """The file's content hash, or None while it cannot be read (a ConfigMap being swapped)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
