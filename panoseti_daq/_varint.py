"""Protobuf varints: vectorised with numpy for packed pixel arrays, scalar for small fields."""

from __future__ import annotations

import numpy as np

from .errors import CodecError

__all__ = ["decode_packed_uint32", "encode_packed_uint32", "encode_varint", "read_varint"]

_SHIFTS = np.array([0, 7, 14, 21, 28], dtype=np.uint32)
_LIMIT_VALUES = (1 << 7, 1 << 14, 1 << 21, 1 << 28)
_ONE_BYTE = [bytes([i]) for i in range(128)]


def encode_varint(value: int) -> bytes:
    """One varint; negative values as 10-byte two's complement, as protobuf does for int32."""
    if 0 <= value < 128:
        return _ONE_BYTE[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; CodecError if truncated or too long."""
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
            raise CodecError(f"varint longer than 10 bytes at offset {pos - 10}")
    raise CodecError(f"truncated varint at offset {pos}")


def encode_packed_uint32(values: np.ndarray) -> bytes:
    """The packed-varint payload of uint32 values (no tag, no length).

    Each value is split into 7-bit groups in an (N, L) matrix, L the longest varint; the groups
    above a value's highest non-zero one are masked out row-major, which is protobuf's order.
    """
    v = np.ascontiguousarray(values, dtype=np.uint32)
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
