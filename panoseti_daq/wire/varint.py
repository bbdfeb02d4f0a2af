"""Protobuf varints: vectorised with numpy for packed pixel arrays, scalar for small fields.

Pixels are at most 16-bit bit patterns (R-WIRE-3), so their varints are 1 to 3 bytes, and
lookup tables over all 16-bit values turn encoding and decoding into a few whole-array numpy
operations (`take`, one boolean mask). Images whose varints all have the same length (every
img16 sky image: 128..16383) need the fewest; any mix of 1-, 2- and 3-byte varints (dark
pixels beside bright ones, negative pulse heights) a few more. Anything else (longer varints,
values beyond 16 bits, unusual layouts) takes the general path, which handles any uint32 and
names the error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CodecError

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
    uint16 word that is one whole 2-byte varint, 0xFFFF if it is not; `first_two` maps the first
    two bytes of a varint (b[0] | b[1] << 8) to what they contribute to its value (bits 0..13)
    and, when both continue (a varint of 3 or more bytes), the mask 0x3FC000 that lets the third
    byte in (see `_decode_short_varints`).
    """
    v = np.arange(1 << 16, dtype=np.uint32)
    length = 1 + (v >= 0x80).astype(np.uint32) + (v >= 0x4000)
    b0 = (v & 0x7F) | np.where(length > 1, 0x80, 0)
    b1 = ((v >> 7) & 0x7F) | np.where(length > 2, 0x80, 0)
    b2 = v >> 14
    keep = 1 | (length > 1).astype(np.uint32) << 8 | (length > 2).astype(np.uint32) << 16
    two_value = np.where((v & 0x8080) == 0x0080, (v & 0x7F) | ((v >> 8) << 7), 0xFFFF)
    first, second = v & 0xFF, v >> 8  # the first two bytes of a varint
    first_two = np.where(
        first < 0x80,
        first,
        np.where(
            second < 0x80,
            (first & 0x7F) | (second << 7),
            (first & 0x7F) | ((second & 0x7F) << 7) | _THIRD_BYTE_MASK,
        ),
    )
    return {
        "word": (b0 | (b1 << 8) | (b2 << 16)).astype("<u4"),
        "keep": keep.astype("<u4"),
        "two": ((v & 0x7F) | 0x80 | ((v >> 7) << 8)).astype(_U16),
        "two_value": two_value.astype(_U16),
        "first_two": first_two.astype(_U32),
    }


# A varint's third byte, shifted right by 2 in its little-endian word, lands on bits 14..21:
# its 7 value bits and (bit 21) its continuation bit, set only for a varint of 4 or more bytes.
_THIRD_BYTE_MASK = 0x3FC000
_LOW_TWO_BYTES = 0x3FFF
_U32 = np.dtype("<u4")
_TABLES = _tables()
_VARINT_WORD = _TABLES["word"]
_VARINT_KEEP = _TABLES["keep"]
_TWO_BYTE_WORD = _TABLES["two"]
_TWO_BYTE_VALUE = _TABLES["two_value"]
_FIRST_TWO = _TABLES["first_two"]


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

    Returns uint16 when every value fits 16 bits and every varint has at most 3 bytes (the
    fast paths: every pixel of a 16-bit image, whatever the mix of lengths), uint32 otherwise;
    the caller checks the count and the value range of the result.
    """
    size = end - start
    if size == count and count:
        b = np.frombuffer(buf, np.uint8, size, start)
        if int(_maximum(b)) < 0x80:
            return b.astype(_U16)
    elif size == 2 * count and count:
        values = _TWO_BYTE_VALUE.take(np.frombuffer(buf, _U16, count, start))
        if int(_maximum(values)) != 0xFFFF:
            return values
    if count:
        short = _decode_short_varints(buf, start, end, count)
        if short is not None:
            return short
    return decode_packed_uint32(memoryview(buf)[start:end], where)


def _decode_short_varints(buf: bytes, start: int, end: int, count: int) -> np.ndarray | None:
    """`count` varints of 1 to 3 bytes each from buf[start:end] with values up to 0xFFFF, as
    uint16; None otherwise (the general path decides).

    Each varint is read from its start: one gather of the 4 bytes there as a little-endian
    word, one table lookup of its first two bytes (`first_two`: their contribution, and a mask
    that admits the third byte only when both continue), then `first_two & (word >> 2 | 0x3FFF)`
    adds the third byte in place. A varint of 4 or more bytes shows as bit 21 (its third byte's
    continuation bit), a value beyond 16 bits as bits 16..20: both fail the final range check.
    """
    size = end - start
    if start >= 1 and buf[start - 1] < 0x80 and end + 3 <= len(buf):
        at = start
    else:  # a byte before that ends a varint, and room to read 4 bytes at the last start
        buf = b"\0" + buf[start:end] + b"\0\0\0"
        at = 1
    if buf[at + size - 1] >= 0x80:
        return None
    # A varint starts where the byte before it ends one.
    starts = (np.frombuffer(buf, np.uint8, size, at - 1) < 0x80).nonzero()[0]
    if starts.size != count:
        return None
    words = np.ndarray((size,), _U32, buf, at, (1,)).take(starts)
    first_two = _FIRST_TWO.take(np.ndarray((count,), _U16, words, 0, (4,)))
    np.right_shift(words, 2, out=words)
    np.bitwise_or(words, _LOW_TWO_BYTES, out=words)
    np.bitwise_and(words, first_two, out=words)
    if int(_maximum(words)) > 0xFFFF:
        return None
    return words.astype(_U16)
