"""The read buffer of asyncio's TLS transport, sized for what the exporter reads.

asyncio's `SSLProtocol` gives every TLS connection a read buffer of `SSLProtocol.max_size`
bytes (256 KiB on Python 3.11), allocated and zero-filled when the connection opens, so resident
from then on. The shared HTTP session keeps up to ``4 x max_concurrency`` Graph connections and
one per token fetched ahead (128 at the default concurrency of 16): their buffers alone held
16 MiB, a seventh of the process at 1,000 tenants. Graph's and Entra ID's answers are a few
kilobytes to a few hundred, and a TLS record carries at most 16 KiB: a smaller buffer only
means more socket reads for a large answer.

Measured with scripts/benchmark.py's helpers at 1,000 tenants, 256 KiB and 32 KiB in the same
sitting: resident memory when ready 117.5 -> 103.5 MiB, first round 6.7 s both times.

`SSLProtocol.max_size` is a class attribute of the standard library, not a documented knob:
`limit()` sets it once, at start, where it exists and is larger; a Python that drops it is left
alone.
"""

from __future__ import annotations

import asyncio.sslproto
from typing import Final

READ_BUFFER: Final = 32 * 1024


def limit() -> None:
    """Give TLS connections opened from now on a read buffer of `READ_BUFFER` bytes."""
    protocol = getattr(asyncio.sslproto, "SSLProtocol", None)
    size = getattr(protocol, "max_size", None)
    if protocol is not None and isinstance(size, int) and size > READ_BUFFER:
        protocol.max_size = READ_BUFFER


__all__ = ["READ_BUFFER", "limit"]
