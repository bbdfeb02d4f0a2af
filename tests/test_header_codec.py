"""The PanoImage header (google.protobuf.Struct) against protobuf, on every decoding path.

Headers are built and serialised by protobuf itself (`ParseDict`, `Struct.update`), or laid out
by hand the ways protobuf also accepts (value before key, unknown fields, repeated keys, merged
values), and our decoder must give exactly what protobuf reads: on the general parser (first
sight of a layout), while recording a template (second), and from the template (every later
header of that layout, with other numbers and strings) (R-WIRE-3, R-PARSE-4). Hostile headers
are a clear INVALID_ARGUMENT naming the image, through a grpcio client (R-UP-3, R-WIRE-5).
"""

from __future__ import annotations

import contextlib
import math
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import event, given, settings
from hypothesis import strategies as st

from panoseti_daq import CodecError, PanoFrame
from panoseti_daq.wire import header as header_codec
from panoseti_daq.wire.codec import decode_pano_image, decode_struct, encode_pano_image
from tests.conftest import examples
from tests.helpers import server_process
from tests.reference import modules

pb2, _ = modules()

numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
leaves = numbers | st.booleans() | st.none() | st.text(max_size=8)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
headers = st.dictionaries(st.text(max_size=8), values, max_size=8)


def reference_value(value):
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "struct_value":
        return reference_header(value.struct_value)
    if kind == "list_value":
        return [reference_value(v) for v in value.list_value.values]
    return getattr(value, kind)


def reference_header(message) -> dict:
    """What protobuf reads: a dict with every number a float, as our decoder returns."""
    return {key: reference_value(value) for key, value in message.fields.items()}


def reference_of(data: bytes) -> dict:
    return reference_header(struct_pb2.Struct.FromString(data))


def same(ours, reference) -> bool:
    """Equal values of equal types (a float is not an int, True is not 1.0)."""
    if type(ours) is not type(reference):
        return False
    if isinstance(ours, dict):
        return ours.keys() == reference.keys() and all(same(ours[k], reference[k]) for k in ours)
    if isinstance(ours, list):
        return len(ours) == len(reference) and all(map(same, ours, reference))
    if isinstance(ours, float) and math.isnan(ours):
        return math.isnan(reference)
    return ours == reference


def protobuf_bytes(header: dict, how: str) -> bytes:
    message = struct_pb2.Struct()
    if how == "ParseDict":
        json_format.ParseDict(header, message)
    else:
        message.update(header)
    return message.SerializeToString()


def relabelled(value, draw):
    """The same layout with other numbers, and other strings of the same UTF-8 length."""
    if isinstance(value, dict):
        return {key: relabelled(item, draw) for key, item in value.items()}
    if isinstance(value, list):
        return [relabelled(item, draw) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return draw(st.floats(allow_nan=False, allow_infinity=False))
    size = len(value.encode())
    return draw(st.text(st.characters(max_codepoint=127), min_size=size, max_size=size))


def decode_on_every_path(data: bytes) -> list[dict]:
    """Our decode of `data` on its first, second and third sight."""
    header_codec._templates.clear()
    header_codec._general_parses.clear()
    return [decode_struct(data) for _ in range(3)]


def templated(data: bytes) -> bool:
    return any(t.size == len(data) for t in header_codec._templates.get(len(data), ()))


@contextlib.contextmanager
def general_parser_calls() -> Iterator[list[int]]:
    """The calls of the general parser (nested structs included) while the block runs: none
    means the header came from a template."""
    calls: list[int] = []
    general = header_codec._decode_struct_general

    def counted(*args):
        calls.append(1)
        return general(*args)

    header_codec._decode_struct_general = counted
    try:
        yield calls
    finally:
        header_codec._decode_struct_general = general


def decode_noting_path(data: bytes) -> tuple[dict, str]:
    """Our decode of `data` and the path that gave it: "template" or "general"."""
    with general_parser_calls() as calls:
        header = decode_struct(data)
    return header, "general" if calls else "template"


# Values of one size in every layout: a number and a string of 7 UTF-8 bytes are 9 bytes as a
# Value; null, true, false, "", {} and [] are 2 bytes each.
TWO_BYTE_VALUES = (None, True, False, "", {}, [])


def _two_bytes(value) -> bool:
    return value is None or type(value) is bool or (type(value) in (str, dict, list) and not value)


def _paths(value, path=()):
    """The path (keys and indices) of every value inside `value`."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        yield (*path, key)
        if isinstance(item, (dict, list)):
            yield from _paths(item, (*path, key))


def _at(value, path):
    for key in path:
        value = value[key]
    return value


def _replaced(value, path, new, rename=False):
    """A copy of `value` with the value at `path` replaced by `new` (or its key renamed)."""
    if not path:
        return new
    key, rest = path[0], path[1:]
    if isinstance(value, list):
        return [
            _replaced(item, rest, new, rename) if i == key else item for i, item in enumerate(value)
        ]
    if rename and not rest:
        return {(new if k == key else k): item for k, item in value.items()}
    return {
        k: _replaced(item, rest, new, rename) if k == key else item for k, item in value.items()
    }


def same_size_other_layout(header: dict, draw) -> dict | None:
    """`header` with one value of another kind of the same encoded size, or one key renamed to
    another of the same UTF-8 length: the same byte size, other constant bytes. None when the
    header has no value or key to change so."""
    changes = []
    for path in _paths(header):
        value = _at(header, path)
        if type(value) in (int, float):
            changes.append(
                (path, st.text(st.characters(max_codepoint=127), min_size=7, max_size=7), False)
            )
        elif type(value) is str and len(value.encode()) == 7:
            changes.append((path, st.floats(allow_nan=False), False))
        elif _two_bytes(value):
            others = [two for two in TWO_BYTE_VALUES if (type(two), two) != (type(value), value)]
            changes.append((path, st.sampled_from(others), False))
        if isinstance(path[-1], str) and path[-1]:
            siblings = _at(header, path[:-1]).keys()
            size = len(path[-1].encode())
            keys = st.text(st.characters(max_codepoint=127), min_size=size, max_size=size)
            changes.append((path, keys.filter(lambda k, s=siblings: k not in s), True))
    if not changes:
        return None
    path, replacement, rename = draw(st.sampled_from(changes))
    return _replaced(header, path, draw(replacement), rename)


@pytest.mark.timeout(60)  # 300 examples: ~5 s alone, twice that on a busy host
@given(headers, st.sampled_from(["ParseDict", "update"]), st.data())
@settings(max_examples=examples(300), deadline=None)
def test_headers_protobuf_builds_decode_as_protobuf_reads_them(header, how, data):
    """Any header protobuf writes: extra keys at any level, nested structs and lists, every
    Value kind; the same output on the general path, the recording pass and the template; a
    second header of the same layout with other numbers and strings comes from the template,
    and one of the same size but another layout (a value of another kind, a key renamed)
    from the general parser."""
    first = protobuf_bytes(header, how)
    reference = reference_of(first)
    for ours in decode_on_every_path(first):
        assert same(ours, reference)
    made = templated(first)
    event("template made" if made else "general parser only")
    second = protobuf_bytes(relabelled(header, data.draw), how)
    assert len(second) == len(first)
    ours, path = decode_noting_path(second)
    assert same(ours, reference_of(second))
    assert path == ("template" if made else "general")
    other = same_size_other_layout(header, data.draw)
    if other is None:
        return
    third = protobuf_bytes(other, how)
    assert len(third) == len(first)
    event("another layout of the same size, after a template" if made else "another layout")
    ours, path = decode_noting_path(third)
    assert same(ours, reference_of(third))
    assert path == "general"
    # Both layouts of that size keep their templates.
    ours, path = decode_noting_path(second)
    assert same(ours, reference_of(second))
    assert path == ("template" if made else "general")


def _len(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _value_bytes(value) -> bytes:
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message.SerializeToString()


entry_layouts = st.sampled_from(["key first", "value first", "unknown in value", "split value"])


@st.composite
def hand_laid_structs(draw):
    """(entries, layouts): header entries protobuf accepts but does not itself write: value
    before key, an unknown field inside the Value, a Value split in two that protobuf merges
    (last field wins), and repeated keys (the last entry wins)."""
    keys = draw(st.lists(st.text(max_size=4), min_size=1, max_size=6))  # repeats allowed
    entries = [(key, draw(values)) for key in keys]
    return entries, [draw(entry_layouts) for _ in entries]


def _struct_bytes(entries, layouts) -> bytes:
    out = b""
    for (key, value), layout in zip(entries, layouts, strict=True):
        key_field = _len(0x0A, key.encode())
        value_bytes = _value_bytes(value)
        if layout == "unknown in value":
            value_bytes = b"\x48\x07" + value_bytes + b"\x55\x01\x02\x03\x04"  # fields 9, 10
        if layout == "split value":  # a string first, then the real value: the last wins
            value_field = _len(0x12, _len(0x1A, b"old")) + _len(0x12, value_bytes)
        else:
            value_field = _len(0x12, value_bytes)
        body = value_field + key_field if layout == "value first" else key_field + value_field
        out += _len(0x0A, body)
    return out


@pytest.mark.timeout(60)  # 300 examples: ~5 s alone, twice that on a busy host
@given(hand_laid_structs(), st.data())
@settings(max_examples=examples(300), deadline=None)
def test_any_entry_order_unknown_fields_and_repeats_decode_as_protobuf_does(laid, data):
    entries, layouts = laid
    first = _struct_bytes(entries, layouts)
    reference = reference_of(first)
    for ours in decode_on_every_path(first):
        assert same(ours, reference)
    event("template made" if templated(first) else "general parser only")
    again = [(key, relabelled(value, data.draw)) for key, value in entries]
    second = _struct_bytes(again, layouts)
    assert same(decode_struct(second), reference_of(second))
    # The same size, another layout: one entry's key and value the other way round.
    flippable = [i for i, layout in enumerate(layouts) if layout in FLIPPED]
    if flippable:
        index = data.draw(st.sampled_from(flippable))
        flipped = [FLIPPED[x] if i == index else x for i, x in enumerate(layouts)]
        third = _struct_bytes(entries, flipped)
        assert len(third) == len(first) and third != first
        made = templated(first)
        event("entry order flipped, after a template" if made else "entry order flipped")
        ours, path = decode_noting_path(third)
        assert same(ours, reference_of(third))
        assert path == "general"


FLIPPED = {"key first": "value first", "value first": "key first"}


def test_templates_take_repeated_layouts_and_check_their_strings():
    """A layout read twice becomes a template; a header of that layout with a string that is
    not UTF-8 is still a CodecError, and one with other constant bytes parses generally."""
    header = {"quabo_0": {"pkt_num": 1.0, "tag": "zz"}, "send_ns": 2.0, "ok": [True, None]}
    data = protobuf_bytes(header, "update")
    assert decode_on_every_path(data) == [header] * 3
    assert templated(data)
    other = data.replace(b"zz", b"cd")
    assert decode_struct(other)["quabo_0"]["tag"] == "cd"
    with pytest.raises(CodecError, match="UTF-8"):
        decode_struct(data.replace(b"zz", b"\xff\xfe"))
    renamed = data.replace(b"send_ns", b"recv_ns")  # same size, another key
    assert decode_struct(renamed) == {
        **{k: v for k, v in header.items() if k != "send_ns"},
        "recv_ns": 2.0,
    }


def test_a_header_inside_other_bytes_takes_the_template_too():
    """A header read where it lies in a PanoImage's bytes (not at offset 0) becomes a template
    and is read from it, the bytes around it left alone."""
    header = {"quabo_0": {"pkt_num": 1.0, "pkt_tai": 2.0}, "tag": "zz"}
    data = protobuf_bytes(header, "update")
    before, after = b"\x0a\x03xyz\x12", b"\x18\x07"
    buf = before + data + after
    start, end = len(before), len(before) + len(data)
    assert [decode_struct(buf, start, end) for _ in range(3)] == [header] * 3
    other = buf.replace(b"zz", b"cd")
    with general_parser_calls() as calls:
        assert decode_struct(other, start, end) == {**header, "tag": "cd"}
    assert not calls, "the general parser read a header of a known layout"


def test_an_extra_key_keeps_the_fast_path():
    """Issue 13: one key more than Hashpipe's layout decodes from a template, like the layout
    itself (the plan's figures are in `make bench`)."""
    quabos = {
        f"quabo_{q}": {"pkt_num": 5.0, "pkt_tai": 529.0, "pkt_nsec": 7.0, "tv_sec": 1.0}
        for q in range(4)
    }
    for header in (quabos, {**quabos, "send_ns": 1.7e18}):
        data = protobuf_bytes(header, "update")
        decode_on_every_path(data)
        assert templated(data)
        stamped = data[:-8] + struct.pack("<d", 3.5) if "send_ns" in header else data
        assert decode_struct(stamped) == reference_of(stamped)


# --- hostile headers through a grpcio client --------------------------------------------------


def _deep_struct(levels: int) -> bytes:
    value = b"\x11" + b"\x00" * 8
    for _ in range(levels):  # Struct{"a": Value{struct_value: Struct{"a": ...}}}
        value = _len(0x2A, _len(0x0A, b"\x0a\x01a" + _len(0x12, value)))
    return _len(0x0A, b"\x0a\x01a" + _len(0x12, value))


def _pano_image_with_header(header: bytes) -> bytes:
    """PanoImage bytes of a ph256 image whose header field holds `header` (the empty header
    field after it merges into it, as protobuf merges a repeated message field)."""
    frame = PanoFrame.create("ph256", {}, np.arange(256), 7)
    return _len(0x12, header) + encode_pano_image(frame)


def _image_with_header(header: bytes) -> bytes:
    """UploadImageRequest bytes of that image."""
    return _len(0x0A, _pano_image_with_header(header))


HOSTILE_HEADERS = {
    "nested 3000 deep": (_deep_struct(3000), "nested"),
    "huge length": (b"\x0a\xff\xff\xff\xff\x0f\x0a\x01a", "claims"),
    "truncated entry": (b"\x0a\x05\x0a\x03ab", "claims"),
    "truncated double": (b"\x0a\x09\x0a\x01a\x12\x04\x11\x00\x00\x00", "truncated"),
    "bad varint": (b"\x0a" + b"\xff" * 11, "varint longer"),
}


def test_hostile_headers_are_codec_errors():
    """R-WIRE-5: deep nesting, huge lengths, truncated entries: a CodecError naming the problem,
    never a hang, a RecursionError or an allocation of the claimed size."""
    for header, problem in HOSTILE_HEADERS.values():
        for _ in range(3):  # every decoding path
            with pytest.raises(CodecError, match=problem):
                decode_struct(header)
        with pytest.raises(CodecError, match=problem):
            decode_pano_image(_pano_image_with_header(header))


@pytest.fixture(scope="module")
def grpcio_channel():
    """A grpcio channel to a server process (default limits; data roots: its temp dir)."""
    with (
        tempfile.TemporaryDirectory(prefix="pdaqhdr", dir="/tmp") as tmp,
        server_process(Path(tmp)) as (_, port, _uds),
    ):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield channel
        channel.close()


@pytest.fixture(scope="module")
def grpcio_upload(grpcio_channel):
    return grpcio_channel.stream_unary(
        "/daqdata.DaqData/UploadImages",
        request_serializer=None,
        response_deserializer=None,
    )


@pytest.mark.parametrize("name", list(HOSTILE_HEADERS))
def test_hostile_header_upload_is_invalid_argument_naming_the_image(grpcio_upload, name):
    """R-UP-3, R-WIRE-5 through grpcio: the hostile header's image is named, those before it
    count, and the server answers the next upload."""
    header, _ = HOSTILE_HEADERS[name]
    good = _image_with_header(protobuf_bytes({"quabo_num": 1.0}, "update"))
    with pytest.raises(grpc.RpcError) as info:
        grpcio_upload(iter([good, _image_with_header(header)]), timeout=15)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 1 of the upload is invalid" in info.value.details()
    assert grpcio_upload(iter([good]), timeout=15) == b""


def test_template_caches_stay_bounded():
    """A producer that changes its layout every frame costs the general parser each time, never
    unbounded memory: at most 256 byte lengths with 4 templates each are kept."""
    header_codec._templates.clear()
    header_codec._general_parses.clear()
    for n in range(3000):
        data = protobuf_bytes({f"k{n}": 1.0, "pad": "x" * (n % 700)}, "update")
        for _ in range(2):
            assert decode_struct(data) == {f"k{n}": 1.0, "pad": "x" * (n % 700)}
    assert 0 < len(header_codec._templates) <= header_codec._PLAN_CACHE_LIMIT
    assert all(
        len(kept) <= header_codec._PLANS_PER_SIZE for kept in header_codec._templates.values()
    )
    assert len(header_codec._general_parses) <= header_codec._PLAN_CACHE_LIMIT


# --- hostile requests through a grpcio client (spec section 15) ----------------------------------

MIB = 1024 * 1024


def _padded_header_image(message_bytes: int) -> bytes:
    """UploadImageRequest bytes of a ph256 image whose header holds one string, `message_bytes`
    long in all."""
    base = len(_image_with_header(protobuf_bytes({"s": ""}, "update")))
    pad = message_bytes - base
    for _ in range(4):  # the enclosing varint lengths grow with the string
        data = _image_with_header(protobuf_bytes({"s": "x" * pad}, "update"))
        pad -= len(data) - message_bytes
    assert len(data) == message_bytes
    return data


HOSTILE_UPLOADS = {
    # R-PEER-1: larger than max_message_bytes (4 MiB by default): refused from its prefix.
    "oversized header field": (_padded_header_image(5 * MIB), "RESOURCE_EXHAUSTED", "bytes"),
    # R-PEER-2: fits the receive limit, but its StreamImages reply would not fit a default
    # grpcio client's.
    "header too big to relay": (_padded_header_image(4 * MIB - 8), "INVALID_ARGUMENT", "reply"),
    # R-CLI-11: odd floats in the time fields are data, relayed as they are.
    "tv_sec infinite": (_image_with_header(protobuf_bytes({"tv_sec": math.inf}, "update")), "", ""),
    "tv_sec NaN": (_image_with_header(protobuf_bytes({"tv_sec": math.nan}, "update")), "", ""),
    "tv_sec 1e300": (_image_with_header(protobuf_bytes({"tv_sec": 1e300}, "update")), "", ""),
}


@pytest.mark.timeout(60)  # 5 MB uploads through grpcio
@pytest.mark.parametrize("name", list(HOSTILE_UPLOADS))
def test_hostile_upload_sizes_and_floats(grpcio_upload, name):
    """R-PEER-1, R-PEER-2, R-CLI-11 through grpcio: oversized fields end the upload with the
    status that names why; odd floats in headers are accepted; the next upload is answered."""
    data, status, detail = HOSTILE_UPLOADS[name]
    if status:
        with pytest.raises(grpc.RpcError) as info:
            grpcio_upload(iter([data]), timeout=30)
        assert info.value.code().name == status
        assert detail in info.value.details()
    else:
        assert grpcio_upload(iter([data]), timeout=30) == b""
    good = _image_with_header(protobuf_bytes({"quabo_num": 1.0}, "update"))
    assert grpcio_upload(iter([good]), timeout=15) == b""


def _init_hp_io(channel, data_dir: str, interval: float) -> grpc.StatusCode:
    request = pb2.InitHpIoRequest(data_dir=data_dir, update_interval_seconds=interval)
    call = channel.unary_unary(
        "/daqdata.DaqData/InitHpIo",
        request_serializer=pb2.InitHpIoRequest.SerializeToString,
        response_deserializer=pb2.InitHpIoResponse.FromString,
    )
    try:
        call(request, timeout=15)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


ODD_INTERVALS = [math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 60.000001]
LONG_PATHS = ["/tmp/" + "x" * 300, "/a" * 2500, "/tmp/" + "é" * 200, "/tmp/nul\0byte", ""]


@pytest.mark.parametrize("interval", ODD_INTERVALS)
def test_odd_hp_io_intervals_are_invalid_argument(grpcio_channel, interval):
    """R-INIT-1, R-INIT-10 through grpcio: NaN, infinities, huge, zero and subnormal
    intervals are INVALID_ARGUMENT."""
    assert _init_hp_io(grpcio_channel, "/tmp", interval) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("data_dir", LONG_PATHS, ids=["300", "5000", "utf8", "nul", "empty"])
def test_long_and_odd_paths_are_invalid_argument(grpcio_channel, data_dir):
    """R-INIT-2, R-INIT-11 through grpcio: names too long, NUL bytes, an empty path:
    INVALID_ARGUMENT, never UNKNOWN."""
    assert _init_hp_io(grpcio_channel, data_dir, 0.1) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.timeout(90)  # one InitHpIo call per example, on a shared machine
@settings(max_examples=60, deadline=None)
@given(
    st.text(max_size=400).map(lambda t: "/tmp/" + t) | st.text(max_size=40),
    st.floats() | st.floats(0.01, 60),
)
def test_any_hp_io_request_is_answered_with_a_clear_status(grpcio_channel, data_dir, interval):
    """R-INIT-11, R-WIRE-5: whatever path and interval a client sends, InitHpIo answers with
    a status that names the problem, never UNKNOWN (an exception escaping the handler)."""
    code = _init_hp_io(grpcio_channel, data_dir, interval)
    assert code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OK,
    ), (data_dir, interval, code)
