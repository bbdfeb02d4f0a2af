"""Protobuf varints: vectorised with numpy for packed pixel arrays, scalar for small fields.

Pixels are at most 16-bit bit patterns (R-WIRE-3), so their varints are 1 to 3 bytes, and
lookup tables over all 16-bit values turn encoding and decoding into a few whole-array numpy
operations (`take`, one boolean mask). Images whose varints all have the same length (every
img16 sky image: 128..16383) need the fewest. Anything else (longer varints, values beyond 16
bits, unusual layouts) takes the general path, which handles any uint32 and names the error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import CodecError

__all__ = [
    "decode_packed_pixels",
    "decode_packed_uint32",
    "encode_packed_pixels",
    "encode_packed_uint32",
    "encode_varint",
    "read_varint",
]

_SHIFTS = np.array([0, 7, 14, 21, 28], dtype=np.uint32)
_LIMIT_VALUES = (1 << 7, 1 << 14, 1 << 21, 1 << 28)
_ONE_BYTE = [bytes([i]) for i in range(128)]
_minimum = np.minimum.reduce
_maximum = np.maximum.reduce
_U16 = np.dtype("<u2")


def _tables() -> dict[str, np.ndarray]:
    """Lookup tables over all 16-bit values (about 1 MB, built once at import, ~2 ms).

    Encoding v (0..65535): `word` its varint bytes as a little-endian uint32 (1 to 3 bytes
    used), `keep` the matching 4 bytes as booleans, `two` its 2-byte varint as a little-endian
    uint16 (meaningful for 128..16383). Decoding: `two_value` the value of a little-endian
    uint16 word that is one whole 2-byte varint, 0xFFFF if it is not; for the last byte of a
    varint, `lead` and `shift` map the two bytes before it (b[-2] | b[-1] << 8) to the value of
    the varint's earlier bytes and the shift of its last byte.
    """
    v = np.arange(1 << 16, dtype=np.uint32)
    length = 1 + (v >= 0x80).astype(np.uint32) + (v >= 0x4000)
    b0 = (v & 0x7F) | np.where(length > 1, 0x80, 0)
    b1 = ((v >> 7) & 0x7F) | np.where(length > 2, 0x80, 0)
    b2 = v >> 14
    keep = 1 | (length > 1).astype(np.uint32) << 8 | (length > 2).astype(np.uint32) << 16
    two_value = np.where((v & 0x8080) == 0x0080, (v & 0x7F) | ((v >> 8) << 7), 0xFFFF)
    before, last = v & 0xFF, v >> 8  # the bytes two before and one before a varint's end
    one_byte, two_bytes = last < 0x80, before < 0x80
    lead = np.where(
        one_byte, 0, np.where(two_bytes, last & 0x7F, (before & 0x7F) | ((last & 0x7F) << 7))
    )
    shift = np.where(one_byte, 0, np.where(two_bytes, 7, 14))
    return {
        "word": (b0 | (b1 << 8) | (b2 << 16)).astype("<u4"),
        "keep": keep.astype("<u4"),
        "two": ((v & 0x7F) | 0x80 | ((v >> 7) << 8)).astype(_U16),
        "two_value": two_value.astype(_U16),
        "lead": lead.astype(np.uint32),
        "shift": shift.astype(np.uint32),
    }


_TABLES = _tables()
_VARINT_WORD = _TABLES["word"]
_VARINT_KEEP = _TABLES["keep"]
_TWO_BYTE_WORD = _TABLES["two"]
_TWO_BYTE_VALUE = _TABLES["two_value"]
_LEAD_VALUE = _TABLES["lead"]
_LAST_SHIFT = _TABLES["shift"]


def encode_varint(value: int) -> bytes:
    """One varint; negative values as 10-byte two's complement, as protobuf does for int32."""
    if 0 <= value < _SHORT_LIMIT:
        return _SHORT[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SHORT_LIMIT = 1 << 12  # lengths of headers and pixel blocks: precomputed
_SHORT: list[bytes] = _ONE_BYTE + [
    bytes([(v & 0x7F) | 0x80, v >> 7]) for v in range(128, _SHORT_LIMIT)
]


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; CodecError if truncated or too long."""
    start = pos
    result = 0
    shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise CodecError(f"varint longer than 10 bytes at offset {start}")
    raise CodecError(f"truncated varint at offset {start}")


def encode_packed_uint32(values: np.ndarray) -> bytes:
    """The packed-varint payload of uint32 values (no tag, no length).

    Each value is split into 7-bit groups in an (N, L) matrix, L the longest varint; the groups
    above a value's highest non-zero one are masked out row-major, which is protobuf's order.
    """
    v = np.ascontiguousarray(values, dtype=np.uint32).reshape(-1)
    if v.size == 0:
        return b""
    top = int(v.max())
    width = 1 + sum(top >= limit for limit in _LIMIT_VALUES)
    if width == 1:
        return v.astype(np.uint8).tobytes()
    shifted = v[:, None] >> _SHIFTS[:width]
    keep = np.empty(shifted.shape, dtype=bool)
    keep[:, 0] = True
    np.not_equal(shifted[:, 1:], 0, out=keep[:, 1:])
    more = np.zeros(shifted.shape, dtype=np.uint8)
    more[:, :-1] = keep[:, 1:]
    groups = (shifted.astype(np.uint8) & 0x7F) | (more << 7)
    return groups[keep].tobytes()


def encode_packed_pixels(pixels: np.ndarray) -> bytes:
    """The packed-varint payload of unsigned 8- or 16-bit pixels (any shape, row-major)."""
    u = pixels.reshape(-1)
    if u.size == 0:
        return b""
    low, high = int(_minimum(u)), int(_maximum(u))
    if high < 0x80:
        return u.astype(np.uint8).tobytes()
    if high > 0xFFFF:
        return encode_packed_uint32(u)
    if low >= 0x80 and high < 0x4000:  # every varint is 2 bytes: one table word each
        return _TWO_BYTE_WORD.take(u).tobytes()
    words = _VARINT_WORD.take(u).view(np.uint8).reshape(-1, 4)
    if low >= 0x4000:
        return words[:, :3].tobytes()
    return words[_VARINT_KEEP.take(u).view(np.bool_).reshape(-1, 4)].tobytes()


def decode_packed_uint32(data: bytes | memoryview, where: str = "packed field") -> np.ndarray:
    """uint32 values of a packed-varint payload; CodecError for truncated or oversized varints."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.uint32)
    last = b < 0x80
    if not last[-1]:
        raise CodecError(f"{where}: truncated varint at its end")
    ends = np.flatnonzero(last)
    if ends.size == b.size:
        return b.astype(np.uint32)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    longest = int(lengths.max())
    if longest > 5:
        raise CodecError(f"{where}: varint longer than 5 bytes does not fit uint32")
    wide = longest == 5
    values: np.ndarray[Any, np.dtype[np.unsignedinteger[Any]]]
    values = (b[starts] & 0x7F).astype(np.uint64 if wide else np.uint32)
    for k in range(1, longest):
        more = lengths > k
        chunk = (b[starts[more] + k] & 0x7F).astype(values.dtype)
        values[more] |= chunk << (7 * k)
    if wide:
        if int(values.max()) > 0xFFFFFFFF:
            raise CodecError(f"{where}: value {int(values.max())} does not fit uint32")
        return values.astype(np.uint32)
    return values


def decode_packed_pixels(buf: bytes, start: int, end: int, count: int, where: str) -> np.ndarray:
    """Values of the packed varints in buf[start:end], expected to be `count` of them.

    Returns uint16 when every varint has the same length of at most 2 bytes (the fast path),
    uint32 otherwise; the caller checks the count and the value range of the result.
    """
    size = end - start
    if size == count and count:
        b = np.frombuffer(buf, np.uint8, size, start)
        if int(b.max()) < 0x80:
            return b.astype(_U16)
    elif size == 2 * count and count:
        values = _TWO_BYTE_VALUE.take(np.frombuffer(buf, _U16, count, start))
        if int(values.max()) != 0xFFFF:
            return values
    if count:
        short = _decode_short_varints(buf, start, end, count)
        if short is not None:
            return short
    return decode_packed_uint32(memoryview(buf)[start:end], where)


def _decode_short_varints(buf: bytes, start: int, end: int, count: int) -> np.ndarray | None:
    """`count` varints of 1 to 3 bytes each from buf[start:end] as uint32; None otherwise.

    Each varint is read at its last byte: the two bytes before it say (by table) how many of
    them belong to it and what they contribute.
    """
    size = end - start
    b = np.frombuffer(buf, np.uint8, size, start)
    ends = (b < 0x80).nonzero()[0]
    if ends.size != count or ends[-1] != size - 1 or ends[0] > 2:
        return None
    if count > 1 and int((ends[1:] - ends[:-1]).max()) > 3:
        return None
    padded = b"\0\0" + buf[start:end]
    before = np.ndarray((size,), _U16, padded, 0, (1,)).take(ends)
    values: np.ndarray = _LEAD_VALUE.take(before) | (b.take(ends) << _LAST_SHIFT.take(before))
    return values
