"""The PanoImage header as google.protobuf.Struct bytes, fast for the headers Hashpipe writes.

Struct{map<string, Value> fields = 1}; Value{oneof: null_value 1, number_value 2, string_value 3,
bool_value 4, struct_value 5, list_value 6}; ListValue{repeated Value values = 1}.

Every PFF header is either a flat object of numbers (ph256) or an object of such objects (the
quabos of a 32x32 image). For a given set of keys the bytes of such a header are constant except
the 8 bytes of each double, so a *plan* (one struct.Struct alternating constant byte strings
and doubles) encodes it with one `pack` and decodes it with one `unpack_from` plus a comparison
of the constant parts. Plans are cached by key layout (encode) and by byte length (decode);
everything else, and every byte string that does not match a plan exactly, takes the general
parser, which follows protobuf's rules (any order, unknown fields, merged repeats).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any

import numpy as np

from ._varint import encode_varint, read_varint
from .errors import CodecError, ImageError

__all__ = [
    "MAX_DEPTH",
    "MAX_FIELD_NUMBER",
    "decode_struct",
    "encode_struct",
    "next_field",
    "skip_field",
]

_DOUBLE = struct.Struct("<d")
_pack_double = _DOUBLE.pack
_unpack_double = _DOUBLE.unpack_from
_NUMBERS = frozenset((int, float))
_DICT_ONLY = {dict}
_PLAN_CACHE_LIMIT = 256
_PLANS_PER_SIZE = 4
# protobuf parses messages nested at most 100 deep (the outermost counts 1). Headers we encode
# must parse inside StreamImagesResponse / UploadImageRequest, where the Struct is at depth 3.
MAX_DEPTH = 100
MAX_FIELD_NUMBER = (1 << 29) - 1
_HEADER_DEPTH_WRAPPED = 3
_HEADER_DEPTH = 2


# --- wire primitives shared with the message codec ------------------------------------------


def skip_field(
    buf: bytes, pos: int, end: int, number: int, wire_type: int, what: str, depth: int = 0
) -> int:
    """Position after the value of an unknown field whose tag ends at `pos`."""
    if wire_type == 0:
        return read_varint(buf, pos, end)[1]
    if wire_type == 2:
        length, pos = read_varint(buf, pos, end)
        if pos + length > end:
            raise CodecError(
                f"{what}: field {number} at offset {pos} claims {length} bytes, {end - pos} remain"
            )
        return pos + length
    if wire_type == 1 or wire_type == 5:
        size = 8 if wire_type == 1 else 4
        if pos + size > end:
            raise CodecError(f"{what}: field {number} at offset {pos} truncated")
        return pos + size
    if wire_type == 3:  # a group: skip fields up to its end-group tag
        if depth >= MAX_DEPTH:
            raise CodecError(f"{what}: groups nested deeper than {MAX_DEPTH} at offset {pos}")
        while pos < end:
            key, pos = read_varint(buf, pos, end)
            if not 0 < key >> 3 <= MAX_FIELD_NUMBER:
                raise CodecError(f"{what}: invalid field number {key >> 3} in group {number}")
            if key & 7 == 4:
                if key >> 3 != number:
                    raise CodecError(f"{what}: group {number} ended by field {key >> 3}")
                return pos
            pos = skip_field(buf, pos, end, key >> 3, key & 7, what, depth + 1)
        raise CodecError(f"{what}: group {number} is not terminated")
    raise CodecError(f"{what}: field {number} at offset {pos} has invalid wire type {wire_type}")


def next_field(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int, Any, int]:
    """(field number, wire type, value, next position) of the field at `pos`.

    The value is the integer of a varint, (start, end) of a length-delimited or fixed-size
    field, or None for a group (skipped).
    """
    at = pos
    key, pos = read_varint(buf, pos, end)
    number, wire_type = key >> 3, key & 7
    if number == 0 or number > MAX_FIELD_NUMBER:
        raise CodecError(f"{what}: invalid field number {number} at offset {at}")
    if wire_type == 0:
        value, pos = read_varint(buf, pos, end)
        return number, 0, value, pos
    if wire_type == 2:
        length, pos = read_varint(buf, pos, end)
        if pos + length > end:
            raise CodecError(
                f"{what}: field {number} at offset {pos} claims {length} bytes, {end - pos} remain"
            )
        return number, 2, (pos, pos + length), pos + length
    after = skip_field(buf, pos, end, number, wire_type, what)
    return number, wire_type, (None if wire_type == 3 else (pos, after)), after


def _expect(what: str, number: int, wire_type: int, want: int) -> None:
    if wire_type != want:
        raise CodecError(f"{what}: field {number} has wire type {wire_type}, expected {want}")


def _text(buf: bytes, start: int, end: int, what: str) -> str:
    try:
        return buf[start:end].decode()
    except UnicodeDecodeError:
        raise CodecError(f"{what} is not valid UTF-8") from None


# --- plans: fixed layouts of numeric headers ------------------------------------------------


class _Plan:
    """The bytes of one header layout: constants alternating with doubles.

    `keys` is the key tuple of a flat header; `groups` lists (key, inner keys) of a header of
    flat objects.
    """

    __slots__ = ("consts", "groups", "keys", "packer", "size", "template", "unpack_from")

    def __init__(
        self,
        tokens: list[bytes | None],
        keys: tuple[str, ...] = (),
        groups: tuple[tuple[str, tuple[str, ...]], ...] = (),
    ) -> None:
        self.consts = tuple(_constants(tokens))
        self.keys = keys
        self.groups = groups
        self.packer = struct.Struct("<" + "".join(f"{len(c)}sd" for c in self.consts))
        self.unpack_from = self.packer.unpack_from
        self.size = self.packer.size
        template: list[Any] = []
        for const in self.consts:
            template += [const, 0.0]
        self.template = template

    def pack(self, doubles: list[Any]) -> bytes:
        args = self.template.copy()
        args[1::2] = doubles
        return self.packer.pack(*args)

    def unpack(self, buf: bytes, start: int) -> dict[str, Any] | None:
        """The header, or None if the bytes at `start` are not this layout."""
        fields = self.unpack_from(buf, start)
        if fields[0::2] != self.consts:
            return None
        if not self.groups:
            return dict(zip(self.keys, fields[1::2], strict=True))
        # zip stops at the end of each key tuple without taking another double.
        doubles = iter(fields[1::2])
        return {key: dict(zip(inner, doubles)) for key, inner in self.groups}  # noqa: B905


def _constants(tokens: list[bytes | None]) -> list[bytes]:
    """The constant before each double (adjacent constants merged)."""
    out: list[bytes] = []
    pending = b""
    for token in tokens:
        if token is None:
            out.append(pending)
            pending = b""
        else:
            pending += token
    return out


def _flat_tokens(keys: tuple[str, ...]) -> list[bytes | None]:
    tokens: list[bytes | None] = []
    for key in keys:
        raw = key.encode()
        entry = b"\n" + encode_varint(len(raw)) + raw + b"\x12\x09\x11"
        tokens += [b"\n" + encode_varint(len(entry) + 8) + entry, None]
    return tokens


def _flat_plan(keys: tuple[str, ...]) -> _Plan:
    return _Plan(_flat_tokens(keys), keys=keys)


def _nested_plan(layout: tuple[tuple[str, ...], ...]) -> _Plan:
    """The plan of a header of flat objects; layout = (outer keys, inner keys of each)."""
    tokens: list[bytes | None] = []
    groups = []
    for key, inner_keys in zip(layout[0], layout[1:], strict=True):
        inner = _flat_tokens(inner_keys)
        inner_size = sum(8 if token is None else len(token) for token in inner)
        value = b"\x2a" + encode_varint(inner_size)
        raw = key.encode()
        entry = b"\n" + encode_varint(len(raw)) + raw
        entry += b"\x12" + encode_varint(len(value) + inner_size) + value
        tokens.append(b"\n" + encode_varint(len(entry) + inner_size) + entry)
        tokens += inner
        groups.append((key, inner_keys))
    return _Plan(tokens, groups=tuple(groups))


_flat_plans: dict[tuple[str, ...], _Plan | None] = {}
_nested_plans: dict[tuple[tuple[str, ...], ...], _Plan | None] = {}
_decode_plans: dict[int, list[_Plan]] = {}


def _plan_of(header: Mapping[str, Any]) -> tuple[_Plan, list[Any]] | None:
    """(plan, doubles) of a flat or two-level numeric header with str keys; None otherwise."""
    if type(header) is not dict:
        return None
    values = list(header.values())
    kinds = set(map(type, values))
    plans: dict[Any, _Plan | None]  # keyed by a flat or a nested layout, built by `make`
    make: Callable[[Any], _Plan]
    layout: tuple[Any, ...]
    if kinds <= _NUMBERS:
        plans, layout, make, doubles = _flat_plans, tuple(header), _flat_plan, values
    elif kinds == _DICT_ONLY:
        layout = (tuple(header), *map(tuple, values))
        doubles = list(chain.from_iterable(map(dict.values, values)))
        if not _NUMBERS.issuperset(map(type, doubles)):
            return None
        plans, make = _nested_plans, _nested_plan
    else:
        return None
    try:
        plan = plans[layout]
    except KeyError:
        if plans is _flat_plans:
            valid = all(type(key) is str for key in layout)
        else:  # every inner object non-empty, every key a str
            valid = all(layout[1:]) and all(type(key) is str for key in chain.from_iterable(layout))
        if len(plans) >= _PLAN_CACHE_LIMIT:
            plans.clear()
        plan = plans[layout] = make(layout) if valid else None
    return None if plan is None else (plan, doubles)


def _remember_for_decoding(plan: _Plan) -> None:
    plans = _decode_plans.get(plan.size)
    if plans is None:
        if len(_decode_plans) >= _PLAN_CACHE_LIMIT:
            _decode_plans.clear()
        _decode_plans[plan.size] = [plan]
    elif plan not in plans:
        plans.insert(0, plan)
        del plans[_PLANS_PER_SIZE:]


# --- encoding -----------------------------------------------------------------------------


def _double(value: Any) -> bytes:
    try:
        return _pack_double(float(value))
    except OverflowError:
        raise ImageError(f"header number {value} does not fit a double") from None


def _len_field(tag: bytes, payload: bytes) -> bytes:
    return tag + encode_varint(len(payload)) + payload


def _too_deep(depth: int) -> ImageError:
    return ImageError(
        f"header nested too deeply: protobuf parses messages at most {MAX_DEPTH} deep, "
        f"this header needs {depth}"
    )


def _encode_value(value: Any, depth: int) -> bytes:
    """A Value message at message depth `depth`."""
    if depth > MAX_DEPTH:
        raise _too_deep(depth)
    if value is None:
        return b"\x08\x00"
    if value is True:
        return b"\x20\x01"
    if value is False:
        return b"\x20\x00"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return b"\x11" + _double(value)
    if isinstance(value, str):
        return _len_field(b"\x1a", value.encode())
    if isinstance(value, Mapping):
        return _len_field(b"\x2a", _encode_struct_general(value, depth + 1))
    if isinstance(value, (list, tuple)):
        if depth + 1 > MAX_DEPTH:
            raise _too_deep(depth + 1)
        items = (_len_field(b"\n", _encode_value(v, depth + 2)) for v in value)
        return _len_field(b"\x32", b"".join(items))
    raise ImageError(f"header value of type {type(value).__name__} is not a JSON value")


def _encode_struct_general(header: Mapping[str, Any], depth: int) -> bytes:
    """A Struct message at message depth `depth` (its entries one deeper, their Values two)."""
    if depth + (2 if header else 0) > MAX_DEPTH:
        raise _too_deep(depth + 2)
    parts = []
    for key, value in header.items():
        raw = str(key).encode()
        value_bytes = _encode_value(value, depth + 2)
        entry = b"\n" + encode_varint(len(raw)) + raw + _len_field(b"\x12", value_bytes)
        parts.append(_len_field(b"\n", entry))
    return b"".join(parts)


def encode_struct(header: Mapping[str, Any]) -> bytes:
    """The google.protobuf.Struct bytes of a JSON-like dict (numbers become doubles)."""
    found = _plan_of(header)
    if found is not None:
        try:
            return found[0].pack(found[1])
        except struct.error:
            pass  # an int too large for a double: the general path names it
    return _encode_struct_general(header, _HEADER_DEPTH_WRAPPED)


# --- decoding -----------------------------------------------------------------------------


def _deeper_than_protobuf(depth: int, start: int) -> CodecError:
    return CodecError(
        f"header at offset {start}: messages nested {depth} deep, protobuf's limit is {MAX_DEPTH}"
    )


def _decode_value(buf: bytes, start: int, end: int, depth: int) -> Any:
    """A Value message at message depth `depth`."""
    # The common case first: a number is exactly 0x11 and 8 bytes.
    if end - start == 9 and buf[start] == 0x11:
        return _unpack_double(buf, start + 1)[0]
    if depth > MAX_DEPTH:
        raise _deeper_than_protobuf(depth, start)
    value: Any = None
    case = 0
    pos = start
    while pos < end:
        number, wire_type, data, pos = next_field(buf, pos, end, "header Value")
        if number == 1:
            _expect("header Value", number, wire_type, 0)
            value = None
        elif number == 2:
            _expect("header Value", number, wire_type, 1)
            value = _unpack_double(buf, data[0])[0]
        elif number == 3:
            _expect("header Value", number, wire_type, 2)
            value = _text(buf, data[0], data[1], "header string")
        elif number == 4:
            _expect("header Value", number, wire_type, 0)
            value = bool(data)
        elif number == 5:
            _expect("header Value", number, wire_type, 2)
            inner = _decode_struct_general(buf, data[0], data[1], depth + 1)
            # A repeated message field merges into the one before (protobuf's rule).
            value = {**value, **inner} if case == 5 else inner
        elif number == 6:
            _expect("header Value", number, wire_type, 2)
            items = _decode_list(buf, data[0], data[1], depth + 1)
            value = value + items if case == 6 else items
        else:
            continue
        case = number
    return value


def _decode_list(buf: bytes, start: int, end: int, depth: int) -> list[Any]:
    if depth > MAX_DEPTH:
        raise _deeper_than_protobuf(depth, start)
    items = []
    pos = start
    while pos < end:
        number, wire_type, data, pos = next_field(buf, pos, end, "header ListValue")
        if number == 1:
            _expect("header ListValue", number, wire_type, 2)
            items.append(_decode_value(buf, data[0], data[1], depth + 1))
    return items


def _decode_entry(buf: bytes, start: int, end: int, depth: int) -> tuple[str, Any] | None:
    """(key, value) of a map entry; None for an entry with unknown fields, which protobuf
    (upb) keeps as an unknown field of the Struct instead of a map entry."""
    key = ""
    value_spans: list[tuple[int, int]] = []
    unknown = False
    pos = start
    while pos < end:
        number, wire_type, data, pos = next_field(buf, pos, end, "header entry")
        if number == 1:
            _expect("header entry", number, wire_type, 2)
            key = _text(buf, data[0], data[1], "header key")
        elif number == 2:
            _expect("header entry", number, wire_type, 2)
            value_spans.append(data)
        else:
            unknown = True
    if not value_spans:
        value = None
    elif len(value_spans) == 1:
        value_start, value_end = value_spans[0]
        value = _decode_value(buf, value_start, value_end, depth + 1)
    else:
        merged = b"".join(buf[a:b] for a, b in value_spans)
        value = _decode_value(merged, 0, len(merged), depth + 1)
    return None if unknown else (key, value)


def _decode_struct_general(buf: bytes, start: int, end: int, depth: int) -> dict[str, Any]:
    """A Struct message at message depth `depth`."""
    if depth > MAX_DEPTH:
        raise _deeper_than_protobuf(depth, start)
    out: dict[str, Any] = {}
    pos = start
    while pos < end:
        number, wire_type, data, pos = next_field(buf, pos, end, "header Struct")
        if number == 1:
            _expect("header Struct", number, wire_type, 2)
            entry = _decode_entry(buf, data[0], data[1], depth + 1)
            if entry is not None:
                out[entry[0]] = entry[1]  # a repeated map key replaces the earlier entry
    return out


def decode_struct(buf: bytes, start: int = 0, end: int | None = None) -> dict[str, Any]:
    """A google.protobuf.Struct as a plain dict (numbers as float); CodecError if malformed."""
    end = len(buf) if end is None else end
    plans = _decode_plans.get(end - start)
    if plans is not None:
        for plan in plans:
            header = plan.unpack(buf, start)
            if header is not None:
                return header
    header = _decode_struct_general(buf, start, end, _HEADER_DEPTH)
    found = _plan_of(header)
    if found is not None:
        plan, doubles = found
        # Only bytes exactly as the plan writes them may take the plan's path later.
        if plan.size == end - start and plan.pack(doubles) == buf[start:end]:
            _remember_for_decoding(plan)
    return header
