"""Pieces compressed at different times make one gzip member every reader decodes."""

from __future__ import annotations

import gzip
import random
import zlib

import pytest

from exporter.deflate import CRC_DIRECT, Deflated, crc32_combine, deflate, gzip_pieces
from exporter.deflate import _shift_for as shift_for


def _decode_one_member(body: bytes) -> bytes:
    """As a reader that stops after the first gzip member would (aiohttp, browsers)."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = decoder.decompress(body)
    assert decoder.eof, "the member never ended"
    assert decoder.unused_data == b"", "more than one member"
    return out


def _decode_raw(data: bytes) -> bytes:
    decoder = zlib.decompressobj(-zlib.MAX_WBITS)
    return decoder.decompress(data)


@pytest.mark.parametrize("seed", range(20))
def test_crc32_combine_equals_crc32_of_the_concatenation(seed: int) -> None:
    rng = random.Random(seed)
    a = rng.randbytes(rng.randint(0, 5000))
    b = rng.randbytes(rng.choice([0, 1, 7, 255, 256, 65537, rng.randint(0, 300_000)]))
    combined = crc32_combine(zlib.crc32(a), zlib.crc32(b), shift_for(len(b)))
    assert combined == zlib.crc32(a + b)


def test_stitched_pieces_are_one_member_with_the_right_bytes() -> None:
    rng = random.Random(7)
    text = b'intune_ade_token_info{tenant="contoso"} 1.0\n' * 3000
    pieces: list[bytes | Deflated] = [
        b"# HELP a b\n",
        deflate(text, 1),
        b"",  # nothing written for an empty piece
        deflate(b"", 1),  # nor for an empty compressed one
        b"one run " * 500,
        b"of several chunks\n",
        deflate(rng.randbytes(70_000), 6),  # incompressible: stored blocks
        deflate(text[:999], 9),
        b"# EOF\n",
    ]
    expected = b"".join(p if isinstance(p, bytes) else _decode_raw(p.data) for p in pieces)
    body = b"".join(gzip_pieces(pieces))
    assert _decode_one_member(body) == expected
    assert gzip.decompress(body) == expected
    # The trailer carries the CRC and length that gzip readers check.
    assert int.from_bytes(body[-8:-4], "little") == zlib.crc32(expected)
    assert int.from_bytes(body[-4:], "little") == len(expected)


def test_bytes_pieces_are_written_as_stored_blocks() -> None:
    rng = random.Random(11)
    large = rng.randbytes(3 * 0xFFFF + 17)  # four stored blocks, the last one partial
    pieces: list[bytes | Deflated] = [
        b"# HELP a b\n",
        deflate(b"x" * 5000, 1),
        large,
        b"",
        b"y" * 0xFFFF,  # exactly one full block
        deflate(b"z" * 100, 1),
        b"# EOF\n",
    ]
    expected = b"".join(p if isinstance(p, bytes) else _decode_raw(p.data) for p in pieces)
    chunks = gzip_pieces(pieces)
    body = b"".join(chunks)
    assert _decode_one_member(body) == expected
    assert gzip.decompress(body) == expected
    # The large piece went out as views of itself, not copied through zlib.
    views = [c for c in chunks if isinstance(c, memoryview)]
    assert [len(v) for v in views] == [11, 0xFFFF, 0xFFFF, 0xFFFF, 17, 0xFFFF, 6]
    assert all(v.obj is large for v in views[1:5])
    assert len(body) > len(large) + 0xFFFF  # stored, not compressed


def test_a_corrupted_piece_is_caught_by_the_crc() -> None:
    # A piece whose CRC does not match its bytes (as a stale cache would give) fails to decode,
    # whether its CRC is combined (a large piece) or read from the bytes it keeps (a small one).
    large = deflate(b"abc" * CRC_DIRECT, 1)
    assert large.raw is None
    wrong = Deflated(large.data, large.crc ^ 1, large.length, large.shift)
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(b"".join(gzip_pieces([b"x", wrong])))
    small = deflate(b"abc" * 100, 1)
    assert small.raw == b"abc" * 100
    wrong = Deflated(small.data, small.crc, small.length, small.shift, b"abd" * 100)
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(b"".join(gzip_pieces([b"x", wrong])))


def test_only_small_pieces_keep_their_bytes() -> None:
    assert deflate(b"a" * CRC_DIRECT, 1).raw == b"a" * CRC_DIRECT
    assert deflate(b"a" * (CRC_DIRECT + 1), 1).raw is None


def test_no_pieces_is_an_empty_body() -> None:
    assert gzip.decompress(b"".join(gzip_pieces([]))) == b""
