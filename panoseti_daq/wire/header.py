"""The PanoImage header as google.protobuf.Struct bytes, fast for every layout a producer repeats.

Struct{map<string, Value> fields = 1}; Value{oneof: null_value 1, number_value 2, string_value 3,
bool_value 4, struct_value 5, list_value 6}; ListValue{repeated Value values = 1}.

A producer writes the same header layout frame after frame: for a given layout the bytes are
constant except the 8 bytes of each double (and the characters of strings). Encoding: every PFF
header is a flat object of numbers (ph256) or an object of such objects (the quabos of a 32x32
image), and a *plan* (one struct.Struct alternating constant byte strings and doubles) encodes
it with one `pack`; plans are cached by key layout. Decoding: the general parser follows
protobuf's rules (any order, unknown fields, merged repeats, every Value kind); a layout it has
read twice becomes a *template* (constant bytes, variable doubles and strings, and a generated
function building the dict), so any header a producer repeats decodes with one `unpack_from`,
a comparison of the constant parts and one call. Templates are cached by byte length.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any

import numpy as np

from ..errors import CodecError, ImageError
from .varint import encode_varint, read_varint

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
    """The bytes of one numeric header layout, for encoding: constants alternating with
    doubles."""

    __slots__ = ("consts", "packer", "size", "template")

    def __init__(self, tokens: list[bytes | None]) -> None:
        self.consts = tuple(_constants(tokens))
        self.packer = struct.Struct("<" + "".join(f"{len(c)}sd" for c in self.consts))
        self.size = self.packer.size
        template: list[Any] = []
        for const in self.consts:
            template += [const, 0.0]
        self.template = template

    def pack(self, doubles: list[Any]) -> bytes:
        args = self.template.copy()
        args[1::2] = doubles
        return self.packer.pack(*args)


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
    return _Plan(_flat_tokens(keys))


def _nested_plan(layout: tuple[tuple[str, ...], ...]) -> _Plan:
    """The plan of a header of flat objects; layout = (outer keys, inner keys of each)."""
    tokens: list[bytes | None] = []
    for key, inner_keys in zip(layout[0], layout[1:], strict=True):
        inner = _flat_tokens(inner_keys)
        inner_size = sum(8 if token is None else len(token) for token in inner)
        value = b"\x2a" + encode_varint(inner_size)
        raw = key.encode()
        entry = b"\n" + encode_varint(len(raw)) + raw
        entry += b"\x12" + encode_varint(len(value) + inner_size) + value
        tokens.append(b"\n" + encode_varint(len(entry) + inner_size) + entry)
        tokens += inner
    return _Plan(tokens)


_flat_plans: dict[tuple[Any, ...], _Plan | None] = {}
_nested_plans: dict[tuple[Any, ...], _Plan | None] = {}


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


class _Slot:
    """Where the general parser read a double (or a string) while recording a template."""

    __slots__ = ("index", "length", "offset")

    def __init__(self, index: int, offset: int, length: int | None) -> None:
        self.index = index
        self.offset = offset
        self.length = length  # None: a double (8 bytes); else the bytes of a string


class _Recorder:
    """The variable parts of one header's bytes, noted by the general parser."""

    __slots__ = ("plannable", "slots")

    def __init__(self) -> None:
        self.slots: list[_Slot] = []
        self.plannable = True

    def double(self, offset: int) -> _Slot:
        slot = _Slot(len(self.slots), offset, None)
        self.slots.append(slot)
        return slot

    def text(self, start: int, end: int) -> _Slot:
        slot = _Slot(len(self.slots), start, end - start)
        self.slots.append(slot)
        return slot


def _deeper_than_protobuf(depth: int, start: int) -> CodecError:
    return CodecError(
        f"header at offset {start}: messages nested {depth} deep, protobuf's limit is {MAX_DEPTH}"
    )


def _decode_value(buf: bytes, start: int, end: int, depth: int, rec: _Recorder | None) -> Any:
    """A Value message at message depth `depth`."""
    # The common case first: a number is exactly 0x11 and 8 bytes.
    if end - start == 9 and buf[start] == 0x11:
        return _unpack_double(buf, start + 1)[0] if rec is None else rec.double(start + 1)
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
            value = _unpack_double(buf, data[0])[0] if rec is None else rec.double(data[0])
        elif number == 3:
            _expect("header Value", number, wire_type, 2)
            value = _text(buf, data[0], data[1], "header string")
            if rec is not None:
                value = rec.text(data[0], data[1])
        elif number == 4:
            _expect("header Value", number, wire_type, 0)
            value = bool(data)
        elif number == 5:
            _expect("header Value", number, wire_type, 2)
            inner = _decode_struct_general(buf, data[0], data[1], depth + 1, rec)
            # A repeated message field merges into the one before (protobuf's rule).
            value = {**value, **inner} if case == 5 else inner
        elif number == 6:
            _expect("header Value", number, wire_type, 2)
            items = _decode_list(buf, data[0], data[1], depth + 1, rec)
            value = value + items if case == 6 else items
        else:
            continue
        case = number
    return value


def _decode_list(buf: bytes, start: int, end: int, depth: int, rec: _Recorder | None) -> list[Any]:
    if depth > MAX_DEPTH:
        raise _deeper_than_protobuf(depth, start)
    items = []
    pos = start
    while pos < end:
        number, wire_type, data, pos = next_field(buf, pos, end, "header ListValue")
        if number == 1:
            _expect("header ListValue", number, wire_type, 2)
            items.append(_decode_value(buf, data[0], data[1], depth + 1, rec))
    return items


def _decode_entry(
    buf: bytes, start: int, end: int, depth: int, rec: _Recorder | None
) -> tuple[str, Any] | None:
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
        value = _decode_value(buf, *value_spans[0], depth + 1, rec)
    else:
        merged = b"".join(buf[a:b] for a, b in value_spans)
        # Offsets in the merged copy are not offsets in `buf`: no template for this header.
        if rec is not None:
            rec.plannable = False
        value = _decode_value(merged, 0, len(merged), depth + 1, None)
    return None if unknown else (key, value)


def _decode_struct_general(
    buf: bytes, start: int, end: int, depth: int, rec: _Recorder | None = None
) -> dict[str, Any]:
    """A Struct message at message depth `depth`; `rec` notes where its variable parts are."""
    if depth > MAX_DEPTH:
        raise _deeper_than_protobuf(depth, start)
    out: dict[str, Any] = {}
    pos = start
    while pos < end:
        number, wire_type, data, pos = next_field(buf, pos, end, "header Struct")
        if number == 1:
            _expect("header Struct", number, wire_type, 2)
            entry = _decode_entry(buf, data[0], data[1], depth + 1, rec)
            if entry is not None:
                out[entry[0]] = entry[1]  # a repeated map key replaces the earlier entry
    return out


# --- templates: the fast path of every header layout seen more than once --------------------
#
# A producer writes the same header layout frame after frame; only the numbers (8 bytes each)
# and perhaps the characters of some strings change. Once the general parser has read bytes of
# one size twice, it reads them once more noting where each double and string lies (`_Recorder`)
# and makes a *template*: a struct.Struct of the constant bytes between them, and a function
# generated for the header's shape that builds the dict from the unpacked fields. Bytes of that
# size whose constant parts are equal parse the same way by construction (the parser reads the
# variable parts only as a double or as a string), so the template gives the general parser's
# output for them: any keys, any order, unknown fields, nested structs and lists, every kind of
# value. Strings are checked to be UTF-8; anything else takes the general parser.

_TEMPLATE_MAX_BYTES = 16384
_TEMPLATE_MAX_SLOTS = 1024
_TEMPLATE_MAX_DEPTH = 24
_PYTHON_NAME = "f"


class _Template:
    __slots__ = ("build", "consts", "size", "unpack_from")

    def __init__(self, packer: struct.Struct, consts: tuple[bytes, ...], build: Any) -> None:
        self.unpack_from = packer.unpack_from
        self.size = packer.size
        self.consts = consts
        self.build = build

    def decode(self, buf: bytes, start: int) -> dict[str, Any] | None:
        """The header, or None if the bytes at `start` are not this template's."""
        fields = self.unpack_from(buf, start)
        if fields[0::2] != self.consts:
            return None
        try:
            header: dict[str, Any] = self.build(fields)
        except UnicodeDecodeError:
            return None  # the general parser names the bad string
        return header


def _expression(value: Any, depth: int) -> str | None:
    """Python source building `value` from the unpacked fields `f`; None if too deep."""
    if depth > _TEMPLATE_MAX_DEPTH:
        return None
    if type(value) is _Slot:
        field = f"{_PYTHON_NAME}[{2 * value.index + 1}]"
        return field if value.length is None else f"{field}.decode()"
    if type(value) is dict:
        items = []
        for key, item in value.items():
            inner = _expression(item, depth + 1)
            if inner is None:
                return None
            items.append(f"{key!r}: {inner}")
        return "{" + ", ".join(items) + "}"
    if type(value) is list:
        inner_items = [_expression(item, depth + 1) for item in value]
        if None in inner_items:
            return None
        return "[" + ", ".join(inner_items) + "]"  # type: ignore[arg-type]
    if value is None or type(value) is bool or type(value) is str:
        return repr(value)
    return None  # not produced by the recording parser


def _make_template(
    buf: bytes, start: int, end: int, header: dict[str, Any], rec: _Recorder
) -> _Template | None:
    if not rec.plannable or len(rec.slots) > _TEMPLATE_MAX_SLOTS:
        return None
    slots = sorted(rec.slots, key=lambda s: s.offset)
    # The slots in byte order are the unpacked fields 1, 3, 5, ...
    for order, slot in enumerate(slots):
        slot.index = order
    source = _expression(header, 0)
    if source is None:
        return None
    formats = ["<"]
    consts = []
    pos = start
    for slot in slots:
        if slot.offset < pos:
            return None  # overlapping reads cannot happen in a well-formed parse; be safe
        consts.append(buf[pos : slot.offset])
        formats.append(f"{slot.offset - pos}s")
        formats.append("d" if slot.length is None else f"{slot.length}s")
        pos = slot.offset + (8 if slot.length is None else slot.length)
    consts.append(buf[pos:end])
    formats.append(f"{end - pos}s")
    # Keys are str, whose repr is a literal; the source holds literals, dicts, lists and f[i].
    build = eval(f"lambda {_PYTHON_NAME}: {source}", {"__builtins__": {}})
    return _Template(struct.Struct("".join(formats)), tuple(consts), build)


_templates: dict[int, list[_Template]] = {}
_general_parses: dict[int, int] = {}


def _remember(size: int, template: _Template) -> None:
    templates = _templates.get(size)
    if templates is None:
        if len(_templates) >= _PLAN_CACHE_LIMIT:
            _templates.clear()
        _templates[size] = [template]
    else:
        templates.insert(0, template)
        del templates[_PLANS_PER_SIZE:]


def decode_struct(buf: bytes, start: int = 0, end: int | None = None) -> dict[str, Any]:
    """A google.protobuf.Struct as a plain dict (numbers as float); CodecError if malformed."""
    end = len(buf) if end is None else end
    size = end - start
    templates = _templates.get(size)
    if templates is not None:
        for template in templates:
            header = template.decode(buf, start)
            if header is not None:
                return header
    if size > _TEMPLATE_MAX_BYTES:
        return _decode_struct_general(buf, start, end, _HEADER_DEPTH)
    seen = _general_parses.get(size, 0)
    if not seen:
        if len(_general_parses) >= _PLAN_CACHE_LIMIT:
            _general_parses.clear()
        _general_parses[size] = 1
        return _decode_struct_general(buf, start, end, _HEADER_DEPTH)
    # A second header of this size: it may be a layout that comes again. Record it.
    rec = _Recorder()
    recorded = _decode_struct_general(buf, start, end, _HEADER_DEPTH, rec)
    made = _make_template(buf, start, end, recorded, rec)
    if made is not None:
        header = made.decode(buf, start)
        if header is not None:
            _remember(size, made)
            return header
    # No template for this layout (this time): the recorded values, without parsing again.
    resolved: dict[str, Any] = _resolved(recorded, buf)
    return resolved


def _resolved(value: Any, buf: bytes) -> Any:
    """A recorded header with every slot replaced by the double or string it marks."""
    kind = type(value)
    if kind is _Slot:
        if value.length is None:
            return _unpack_double(buf, value.offset)[0]
        return buf[value.offset : value.offset + value.length].decode()  # checked when recorded
    if kind is dict:
        return {key: _resolved(item, buf) for key, item in value.items()}
    if kind is list:
        return [_resolved(item, buf) for item in value]
    return value
