"""Basic auth of the web config: the ``basic_auth_users`` bcrypt hashes and the checks' caches.

Mirrors the basic-auth half of exporter-toolkit's ``web/handler.go`` (``validateUsers`` and the
bcrypt check of ``webHandler``) and its ``web/cache.go``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

import bcrypt

from ..yaml_config import ConfigError

_BCRYPT_HASH: Final = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")

# Bounds of the bcrypt caches and of the queue of requests waiting for a bcrypt check.
_SUCCESS_CACHE_SIZE: Final = 256
_FAILURE_CACHE_SIZE: Final = 1024
_MAX_PENDING_BCRYPT: Final = 8


def basic_auth_users(name: str, users: Mapping[str, str]) -> dict[str, bytes]:
    """The ``basic_auth_users`` of web config `name`, checked: user -> bcrypt hash."""
    result: dict[str, bytes] = {}
    for user, hashed in users.items():
        key = f"basic_auth_users.{user}"
        if not user or ":" in user:
            raise ConfigError(name, key, "a user name must be non-empty and contain no ':'")
        if not _BCRYPT_HASH.fullmatch(hashed):
            raise ConfigError(
                name,
                key,
                "not a bcrypt hash (expected $2y$/$2b$/$2a$, a cost from 04 to 31 and 53 "
                "characters; make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')",
            )
        result[user] = hashed.encode("ascii")
    return result


class _LRU:
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, key: bytes) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


class TooBusy(Exception):
    """Too many distinct bcrypt checks are queued; the request should be retried later."""


class BasicAuth:
    """Checks basic-auth credentials against bcrypt hashes without paying bcrypt on every request.

    - Cache: a verified (user, password) pair is remembered as an HMAC of the pair under a
      random per-process key (so memory never holds the password or a fast unsalted hash of it),
      mapped to the bcrypt hash it matched. A hit is valid only while that hash is the one in
      force, and concurrent requests with the same credentials share one in-flight check, so a
      scrape storm with good credentials costs one bcrypt in total.
    - Wrong passwords: the same (user, password) pair that failed is remembered in a bounded
      failure cache, so a misconfigured scraper retrying the same bad password costs one bcrypt.
      Fresh wrong passwords (guessing) cannot be cached away; instead bcrypt runs in a worker
      thread one at a time (at most one core, and the event loop keeps serving /-/healthy and
      cached scrapes), and when 8 distinct checks are already queued the request is refused
      with 429 without any bcrypt work. CPU spent on guessing is therefore bounded by one core,
      and memory by the two caches and the queue bound.
    - Timing: the user name is compared against every configured user with compare_digest, and
      an unknown user still pays one bcrypt against a dummy hash, so responses do not reveal
      which users exist. bcrypt.checkpw compares in constant time itself.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = [(u.encode("utf-8"), h) for u, h in users.items()]
        self._mac_key = secrets.token_bytes(32)
        self._ok = _LRU(_SUCCESS_CACHE_SIZE)
        self._failed = _LRU(_FAILURE_CACHE_SIZE)
        self._max_cost = max(int(h[4:6]) for _, h in self._users)
        # Made on first use, in the worker thread: at a high cost it takes a second or more.
        self._dummy_hash: bytes | None = None
        self._inflight: dict[bytes, asyncio.Future[bool]] = {}
        self._bcrypt_lock: asyncio.Lock | None = None

    def _lookup(self, user: bytes) -> bytes | None:
        found: bytes | None = None
        for name, hashed in self._users:
            if hmac.compare_digest(name, user):
                found = hashed
        return found

    def _cache_key(self, user: bytes, password: bytes) -> bytes:
        message = struct.pack(">I", len(user)) + user + password
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()

    def _cached(self, key: bytes, hashed: bytes | None) -> bool | None:
        ok = self._ok.get(key)
        if ok is not None and hashed is not None and hmac.compare_digest(ok, hashed):
            return True
        if self._failed.get(key) == (hashed or b""):
            return False
        return None

    async def check(self, user: bytes, password: bytes) -> bool:
        """True if the credentials are right. Raises TooBusy when too many checks are queued."""
        hashed = self._lookup(user)
        key = self._cache_key(user, password)
        cached = self._cached(key, hashed)
        if cached is not None:
            return cached
        # Concurrent requests with the same credentials (a scrape storm right after start-up)
        # share one check instead of queueing one each.
        inflight = self._inflight.get(key)
        if inflight is not None:
            return await asyncio.shield(inflight)
        if len(self._inflight) >= _MAX_PENDING_BCRYPT:
            raise TooBusy
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            ok = await self._bcrypt(password, hashed)
        except BaseException as exc:
            # Waiters of a cancelled check are told to retry (429) rather than seeing the
            # cancellation; the exception is marked retrieved because there may be no waiter.
            future.set_exception(exc if isinstance(exc, Exception) else TooBusy())
            future.exception()
            raise
        finally:
            del self._inflight[key]
        if ok and hashed is not None:
            self._ok.put(key, hashed)
        else:
            self._failed.put(key, hashed or b"")
        future.set_result(ok)
        return ok

    async def _bcrypt(self, password: bytes, hashed: bytes | None) -> bool:
        if self._bcrypt_lock is None:
            self._bcrypt_lock = asyncio.Lock()
        async with self._bcrypt_lock:
            ok = await asyncio.to_thread(self._checkpw, password, hashed)
        return ok and hashed is not None

    def _checkpw(self, password: bytes, hashed: bytes | None) -> bool:
        if hashed is None:
            if self._dummy_hash is None:
                salt = bcrypt.gensalt(self._max_cost)
                self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), salt)
            hashed = self._dummy_hash
        return bcrypt.checkpw(password, hashed)


def parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from an ``Authorization: Basic`` header, or None if it is not one."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user, password
