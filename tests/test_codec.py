"""The wire codec against protobuf, the reference implementation (R-WIRE-2, R-WIRE-3, R-PARSE-4)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
import socket
from dataclasses import dataclass

import numpy as np
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from panoseti_daq import CodecError, ImageError, PanoFrame
from panoseti_daq._grpclib.codec import DaqCodec
from panoseti_daq.messages import (
    Empty,
    InitHpIoRequest,
    PanoImage,
    StreamImagesRequest,
    StreamImagesResponse,
)
from panoseti_daq.products import PRODUCTS, product_for
from panoseti_daq.wire.codec import (
    STRICTER_THAN_PROTOBUF,
    StreamReply,
    UploadItem,
    decode_pano_image,
    decode_stream_reply,
    decode_struct,
    decode_upload_item,
    encode_framed_stream_replies,
    encode_pano_image,
    encode_stream_reply,
    encode_struct,
    encode_upload_item,
)
from panoseti_daq.wire.varint import decode_packed_uint32, encode_packed_uint32
from tests.conftest import examples
from tests.reference import modules

pb2, _ = modules()

json_leaf = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**53), 2**53),
    st.booleans(),
    st.none(),
    st.text(max_size=10),
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
headers = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


def plain(value):
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@st.composite
def frames(draw):
    product = draw(st.sampled_from(list(PRODUCTS.values())))
    return PanoFrame.create(
        product,
        draw(headers),
        draw(hnp.arrays(product.dtype, product.shape)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.text(max_size=30)),
        draw(st.integers(0, 2**32 - 1)),
    )


def reference_struct(struct) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(struct)


@given(st.lists(st.integers(0, 2**32 - 1), max_size=300))
def test_packed_varints_match_protobuf(values):
    """R-WIRE-2: our packed uint32 payload is byte-identical to protobuf's."""
    reference = pb2.PanoImage(shape=values).SerializeToString()
    ours = encode_packed_uint32(np.array(values, dtype=np.uint32))
    assert reference == (b"\x22" + _varint(len(ours)) + ours if values else b"")
    assert decode_packed_uint32(ours).tolist() == values


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@given(frames())
@settings(max_examples=examples(150), deadline=None)
def test_protobuf_parses_what_we_encode(frame):
    """R-WIRE-2, R-WIRE-3: every field as protobuf reads it, pixels as bit patterns."""
    reference = pb2.PanoImage.FromString(encode_pano_image(frame))
    assert reference.type == int(frame.type)
    assert list(reference.shape) == list(frame.shape)
    assert reference.bytes_per_pixel == frame.bytes_per_pixel
    assert list(reference.image_array) == frame.wire_pixels().tolist()
    assert (reference.file, reference.frame_number, reference.module_id) == (
        frame.file,
        frame.frame_number,
        frame.module_id,
    )
    assert reference_struct(reference.header) == plain(frame.header)


@given(frames())
@settings(max_examples=examples(150), deadline=None)
def test_we_decode_what_protobuf_encodes(frame):
    """R-WIRE-2: protobuf's bytes decode to the same frame."""
    message = pb2.PanoImage.FromString(encode_pano_image(frame))
    decoded = decode_pano_image(message.SerializeToString())
    assert decoded.product is frame.product
    np.testing.assert_array_equal(decoded.pixels, frame.pixels)
    assert decoded.header == plain(frame.header)
    assert (decoded.file, decoded.frame_number, decoded.module_id) == (
        frame.file,
        frame.frame_number,
        frame.module_id,
    )


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    tag = _varint(number << 3 | wire_type)
    return tag + (_varint(len(payload)) + payload if wire_type == 2 else payload)


@given(
    pixels=st.lists(st.integers(0, 65535), min_size=256, max_size=256),
    split=st.integers(0, 256),
    order=st.permutations(range(6)),
    unknown=st.binary(max_size=20),
)
@settings(max_examples=examples(100), deadline=None)
def test_unpacked_reordered_and_unknown_fields(pixels, split, order, unknown):
    """R-WIRE-2: unpacked and mixed image_array chunks, any field order, unknown fields."""
    unpacked = b"".join(_field(3, 0, _varint(v)) for v in pixels[:split])
    packed = _field(3, 2, encode_packed_uint32(np.array(pixels[split:], dtype=np.uint32)))
    pieces = [
        _field(1, 0, b"\x01"),
        _field(4, 0, b"\x10") + _field(4, 0, b"\x10"),
        _field(5, 0, b"\x02"),
        _field(8, 0, _varint(2**32 - 1)),
        _field(99, 2, unknown) + _field(98, 0, b"\x05") + _field(97, 5, b"abcd"),
        _field(6, 2, b"x.pff"),
    ]
    data = unpacked + b"".join(pieces[i] for i in order) + packed
    reference = pb2.PanoImage.FromString(data)
    frame = decode_pano_image(data)
    assert frame.wire_pixels().tolist() == list(reference.image_array) == pixels
    assert frame.module_id == reference.module_id == 2**32 - 1
    assert frame.file == "x.pff" and frame.header == {}


def test_defaults_omitted_and_negative_int32():
    """R-WIRE-2, R-PARSE-4: a negative bytes_per_pixel (10-byte varint) is an invalid image."""
    data = pb2.PanoImage(type=2, shape=[32, 32], bytes_per_pixel=-2).SerializeToString()
    with pytest.raises(ImageError, match="-2 byte"):
        decode_pano_image(data)
    empty = pb2.PanoImage().SerializeToString()
    with pytest.raises(ImageError, match="UNDEFINED"):
        decode_pano_image(empty)


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (dict(type=2, shape=[32, 32], bytes_per_pixel=2, image_array=[0] * 1023), "1024 pixels"),
        (dict(type=2, shape=[32, 32], bytes_per_pixel=1, image_array=[256] * 1024), "fit 1 byte"),
        (
            dict(type=1, shape=[32, 32], bytes_per_pixel=1, image_array=[0] * 1024),
            "no data product",
        ),
        (dict(type=2, shape=[16, 16], bytes_per_pixel=2, image_array=[0] * 256), "no data product"),
        (dict(type=5, shape=[16, 16], bytes_per_pixel=2, image_array=[0] * 256), "unknown type 5"),
    ],
)
def test_invalid_images_are_rejected_with_a_reason(message, problem):
    """R-PARSE-4: length, value range and (type, shape, bpp) are checked."""
    with pytest.raises(ImageError, match=problem):
        decode_pano_image(pb2.PanoImage(**message).SerializeToString())


@given(st.binary(max_size=200))
@settings(max_examples=examples(500), deadline=None)
def test_garbage_never_crashes_or_hangs(data):
    """R-WIRE-5: malformed bytes raise CodecError or ImageError, nothing else."""
    for decode in (decode_pano_image, decode_stream_reply, decode_upload_item):
        with contextlib.suppress(CodecError, ImageError):
            decode(data)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x1a\x05\x01", "claims 5 bytes"),
        (b"\x1a\x02\xff\xff", "truncated varint"),
        (b"\x1a\x06\xff\xff\xff\xff\xff\x01", "longer than 5 bytes"),
        (b"\x1a\x05\xff\xff\xff\xff\x7f", "does not fit uint32"),
        (b"\x0b", "wire type 3"),
        (b"\x08", "truncated varint"),
        (b"\x12\x02\x0a\x00\x32\x02\xc3\x28", "not valid UTF-8"),
    ],
)
def test_malformed_bytes_name_the_problem(data, problem):
    """R-WIRE-5: the error says what is wrong."""
    with pytest.raises((CodecError, ImageError), match=problem):
        decode_pano_image(data)


@given(headers)
def test_struct_round_trip_against_protobuf(header):
    """The header Struct: ours <-> protobuf's, nested values included."""
    from google.protobuf.struct_pb2 import Struct

    ours = encode_struct(header)
    reference = Struct.FromString(ours)
    assert reference_struct(reference) == plain(header)
    assert decode_struct(reference.SerializeToString()) == plain(header)


@given(frames(), st.text(max_size=20), st.integers(0, 2**62), st.text(max_size=20))
@settings(max_examples=examples(50), deadline=None)
def test_stream_reply_against_protobuf(frame, name, timestamp_ns, message):
    """R-WIRE-4: name, timestamp, message and pano_image of StreamImagesResponse."""
    data = encode_stream_reply(StreamReply(frame, name, timestamp_ns, message))
    reference = pb2.StreamImagesResponse.FromString(data)
    assert reference.name == name and reference.message == message
    assert reference.timestamp.seconds * 10**9 + reference.timestamp.nanos == timestamp_ns
    assert list(reference.pano_image.image_array) == frame.wire_pixels().tolist()
    back = decode_stream_reply(reference.SerializeToString())
    assert (back.name, back.timestamp_ns, back.message) == (name, timestamp_ns, message)
    np.testing.assert_array_equal(back.frame.pixels, frame.pixels)


@given(
    st.lists(st.tuples(st.binary(max_size=300), st.text(max_size=12)), max_size=5),
    st.text(max_size=20),
    st.integers(0, 2**62),
)
def test_framed_batch_of_replies_is_each_reply_framed(images, name, timestamp_ns):
    """R-WIRE-4, R-STREAM-11: a batch of StreamImagesResponse messages is, byte for byte, each
    reply (name, send time, overrun notice, image) with its gRPC prefix, one after another."""
    expected = b""
    for image, message in images:
        reply = encode_stream_reply(
            StreamReply(None, name, timestamp_ns, message, encoded_image=image)
        )
        expected += b"\0" + len(reply).to_bytes(4, "big") + reply
    assert encode_framed_stream_replies(images, name, timestamp_ns) == expected


def test_pre_encoded_image_is_reused():
    """The server encodes a frame once and sends the same bytes to every client."""
    frame = PanoFrame.create("ph256", {"a": 1}, np.arange(256), 3)
    encoded = encode_pano_image(frame)
    once = encode_stream_reply(StreamReply(frame, "n", 5, encoded_image=encoded))
    assert once == encode_stream_reply(StreamReply(frame, "n", 5))


def test_upload_item_with_and_without_image():
    """R-UP-2: an UploadImageRequest may lack pano_image."""
    assert decode_upload_item(b"").frame is None
    frame = PanoFrame.create("img8", {}, np.full(1024, 255), 9)
    data = encode_upload_item(UploadItem(frame))
    assert pb2.UploadImageRequest.FromString(data).pano_image.module_id == 9
    assert decode_upload_item(data).frame.pixels.max() == 255


def test_codec_betterproto2_forms_and_fallback():
    """DaqCodec: betterproto2 image messages take the fast path; other messages fall back."""
    codec = DaqCodec()
    frame = PanoFrame.create("img16", {"quabo_0": {"pkt_num": 1}}, np.arange(1024), 1, "f", 2)
    message = frame.to_message()
    data = codec.encode(message, PanoImage)
    assert data == encode_pano_image(frame)
    assert codec.decode(data, PanoImage).image_array == message.image_array
    reply = StreamReply(frame, "n", 7_000_123_000)
    response = codec.decode(encode_stream_reply(reply), StreamImagesResponse)
    # R-CLI-9: the timestamp as betterproto2 declares it, an aware datetime.
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    assert response.pano_image.module_id == 1
    assert response.timestamp == epoch + datetime.timedelta(seconds=7, microseconds=123)
    assert codec.encode(response, StreamImagesResponse) == encode_stream_reply(reply)
    assert codec.decode(codec.encode(frame, PanoFrame), PanoFrame).header == plain(frame.header)
    request = InitHpIoRequest(data_dir="/x", update_interval_seconds=0.5, module_ids=[1, 2])
    assert codec.decode(codec.encode(request, InitHpIoRequest), InitHpIoRequest) == request
    with pytest.raises(CodecError, match="InitHpIoRequest"):
        codec.decode(b"\x0a\x05ab", InitHpIoRequest)


# --- DaqCodec inside grpclib, on a real loopback socket ----------------------------------


class _TinyDaqData:
    """A minimal DaqData: StreamImages sends fixed frames, UploadImages collects frames."""

    def __init__(self, frames: list[PanoFrame]) -> None:
        self.frames = frames
        self.uploaded: list[PanoFrame | None] = []

    async def stream_images(self, stream) -> None:
        request = await stream.recv_message()
        assert request.stream_movie_data
        encoded = encode_pano_image(self.frames[0])
        await stream.send_message(StreamReply(self.frames[0], "node", 5, encoded_image=encoded))
        for frame in self.frames[1:]:
            await stream.send_message(StreamReply(frame, "node", 6, "m"))

    async def upload_images(self, stream) -> None:
        index = 0
        while True:
            try:
                item = await stream.recv_message()
            except (CodecError, ImageError) as exc:  # R-UP-3
                raise GRPCError(Status.INVALID_ARGUMENT, f"image {index}: {exc}") from exc
            if item is None:
                break
            self.uploaded.append(item.frame)
            index += 1
        await stream.send_message(Empty())

    def __mapping__(self):
        return {
            "/daqdata.DaqData/StreamImages": Handler(
                self.stream_images, Cardinality.UNARY_STREAM, StreamImagesRequest, StreamReply
            ),
            "/daqdata.DaqData/UploadImages": Handler(
                self.upload_images, Cardinality.STREAM_UNARY, UploadItem, Empty
            ),
        }


async def _through_grpclib(service: _TinyDaqData, bad_upload: bytes):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = Server([service], codec=DaqCodec())
    await server.start(sock=listener)
    channel = Channel("127.0.0.1", port, codec=DaqCodec())
    try:
        request = StreamImagesRequest(stream_movie_data=True)
        async with channel.request(
            "/daqdata.DaqData/StreamImages",
            Cardinality.UNARY_STREAM,
            StreamImagesRequest,
            StreamReply,
        ) as stream:
            await stream.send_message(request, end=True)
            replies = [reply async for reply in stream]
        # The betterproto2 form of the same RPC takes the codec's other branch.
        async with channel.request(
            "/daqdata.DaqData/StreamImages",
            Cardinality.UNARY_STREAM,
            StreamImagesRequest,
            StreamImagesResponse,
        ) as stream:
            await stream.send_message(request, end=True)
            messages = [message async for message in stream]
        async with channel.request(
            "/daqdata.DaqData/UploadImages", Cardinality.STREAM_UNARY, UploadItem, Empty
        ) as stream:
            for frame in service.frames:
                await stream.send_message(UploadItem(frame))
            await stream.send_message(UploadItem(None), end=True)
            await stream.recv_message()
        # An invalid image, sent as raw bytes by a client whose codec does not check it.
        with pytest.raises(GRPCError) as failure:
            async with channel.request(
                "/daqdata.DaqData/UploadImages", Cardinality.STREAM_UNARY, _RawBytes, Empty
            ) as stream:
                await stream.send_message(_RawBytes(bad_upload), end=True)
                await stream.recv_message()
        return replies, messages, failure.value
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


@dataclass(frozen=True)
class _RawBytes:
    """Bytes sent as they are, through DaqCodec's fallback (SerializeToString)."""

    data: bytes

    def SerializeToString(self) -> bytes:
        return self.data


def test_daq_codec_plugs_into_grpclib_server_and_channel():
    """DaqCodec in grpclib.server.Server and grpclib.client.Channel over loopback TCP:
    StreamReply / StreamImagesResponse streams, UploadItem uploads, and an invalid uploaded
    image that becomes INVALID_ARGUMENT naming it (R-WIRE-4, R-WIRE-5, R-UP-2, R-UP-3)."""
    frames_sent = [
        PanoFrame.create("img16", {"quabo_0": {"pkt_num": 7}}, np.arange(1024), 1, "a.pff", 4),
        PanoFrame.create("ph256", {"quabo_num": 2}, np.arange(-128, 128), 3, "b.pff", 9),
    ]
    service = _TinyDaqData(frames_sent)
    bad = _field(1, 2, pb2.PanoImage(type=2, shape=[32, 32], bytes_per_pixel=2).SerializeToString())
    replies, messages, failure = asyncio.run(
        asyncio.wait_for(_through_grpclib(service, bad), timeout=20)
    )
    assert [(r.name, r.timestamp_ns, r.message) for r in replies] == [
        ("node", 5, ""),
        ("node", 6, "m"),
    ]
    for reply, message, uploaded, frame in zip(
        replies, messages, service.uploaded[:2], frames_sent, strict=True
    ):
        for got in (reply.frame, PanoFrame.from_message(message.pano_image), uploaded):
            assert got.product is frame.product and got.module_id == frame.module_id
            np.testing.assert_array_equal(got.pixels, frame.pixels)
            assert got.header == plain(frame.header)
    # 6 ns after the epoch: a datetime holds whole microseconds (R-CLI-9).
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    assert messages[0].name == "node" and messages[1].timestamp == epoch
    assert len(service.uploaded) == 3 and service.uploaded[2] is None
    assert failure.status is Status.INVALID_ARGUMENT
    assert "image 0" in failure.message and "1024 pixels" in failure.message


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x02\x0a", b"\x0a\x01\x0a", b"\x0a\x05\x0a\x00\x12\x01\x2a", b"\x0a\x03\x0a\x01"],
)
def test_truncated_struct_entries_raise_codec_error(data):
    """R-WIRE-5: a header entry cut short is a CodecError, never an IndexError."""
    with pytest.raises(CodecError):
        decode_struct(data)


# --- differential tests against protobuf -----------------------------------------------------


def _reference_value(value):
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "struct_value":
        return _reference_header(value.struct_value)
    if kind == "list_value":
        return [_reference_value(v) for v in value.list_value.values]
    return getattr(value, kind)


def _reference_header(struct) -> dict:
    return {key: _reference_value(value) for key, value in struct.fields.items()}


def _comparable(value):
    """NaN-safe form of a header for equality (mutated doubles may be NaN)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, float) and value != value:
        return "NaN"
    return value


def _assert_same_as_reference(frame: PanoFrame, reference) -> None:
    assert (int(frame.type), list(frame.shape), frame.bytes_per_pixel) == (
        reference.type,
        list(reference.shape),
        reference.bytes_per_pixel,
    )
    assert frame.wire_pixels().tolist() == list(reference.image_array)
    assert (frame.file, frame.frame_number, frame.module_id) == (
        reference.file,
        reference.frame_number,
        reference.module_id,
    )
    assert _comparable(frame.header) == _comparable(_reference_header(reference.header))


def _mutated(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, where, byte in edits:
        at = int(where * len(out))
        if kind == "flip":
            out[at] ^= 1 << (byte % 8)
        elif kind == "set":
            out[at] = byte
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out.insert(at, byte)
        else:
            del out[at]
        if not out:
            break
    return bytes(out)


def _image_of(message):
    return message.pano_image if hasattr(message, "pano_image") else message


def _assert_protobuf_rejects_or_documented(exc: Exception, data: bytes, message_type) -> None:
    """Issue 17: when we reject bytes, protobuf rejects them too, or the reason is one of the
    documented validations of ours (codec.STRICTER_THAN_PROTOBUF); the image validations
    (R-PARSE-4) are checked against what protobuf read, not taken from our message."""
    from google.protobuf.message import DecodeError

    try:
        reference = message_type.FromString(data)
    except DecodeError:
        event("compared: both reject")
        return
    reasons = [why for pattern, why in STRICTER_THAN_PROTOBUF if re.search(pattern, str(exc))]
    assert reasons, f"we reject what protobuf reads, for no documented reason: {exc}"
    event(f"ours stricter: {reasons[0]}")
    if isinstance(exc, ImageError):
        image = _image_of(reference)
        try:
            product = product_for(image.type, list(image.shape), image.bytes_per_pixel)
        except ImageError:
            return  # no data product
        values = list(image.image_array)
        assert len(values) != product.pixel_count or max(values) > product.max_bit_pattern


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
        st.floats(0, 1, exclude_max=True),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=3,
)


@given(frames(), mutations)
@settings(max_examples=examples(300), deadline=None)
def test_mutated_images_fail_cleanly_or_decode_as_protobuf_does(frame, edits):
    """R-WIRE-5, R-PARSE-4: damaged bytes raise CodecError/ImageError, or, when they still
    decode, give exactly what protobuf reads from them: never a silently wrong image. A
    rejection is compared too: protobuf rejects the bytes, or the reason is a documented
    validation of ours (codec.STRICTER_THAN_PROTOBUF); `--hypothesis-show-statistics` shows
    the share of each outcome."""
    data = _mutated(encode_pano_image(frame), edits)
    try:
        ours = decode_pano_image(data)
    except (CodecError, ImageError) as exc:
        _assert_protobuf_rejects_or_documented(exc, data, pb2.PanoImage)
        return
    event("compared: both accept")
    _assert_same_as_reference(ours, pb2.PanoImage.FromString(data))


def _single_field_messages(frame: PanoFrame) -> list[bytes]:
    """The frame's PanoImage as one serialised message per field (protobuf's own bytes)."""
    full = pb2.PanoImage.FromString(encode_pano_image(frame))
    pieces = []
    for name in ("type", "bytes_per_pixel", "file", "frame_number", "module_id"):
        pieces.append(pb2.PanoImage(**{name: getattr(full, name)}).SerializeToString())
    header = pb2.PanoImage()
    header.header.CopyFrom(full.header)
    pieces.append(header.SerializeToString())
    pieces.append(pb2.PanoImage(shape=full.shape).SerializeToString())
    return pieces


@given(frames(), st.data())
@settings(max_examples=examples(100), deadline=None)
def test_any_field_order_split_arrays_and_unknown_fields(frame, data):
    """R-WIRE-2: protobuf's bytes with fields in any order, image_array split into packed and
    unpacked pieces, defaults omitted and unknown fields decode to the same frame."""
    pixels = frame.wire_pixels().tolist()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(pixels)), max_size=3)))
    pieces = _single_field_messages(frame)
    for a, b in zip([0, *cuts], [*cuts, len(pixels)], strict=True):
        chunk = pixels[a:b]
        if data.draw(st.booleans()):
            pieces.append(pb2.PanoImage(image_array=chunk).SerializeToString())
        else:
            pieces.append(b"".join(_field(3, 0, _varint(v)) for v in chunk))
    pieces.append(_field(17, 2, b"future") + _field(18, 1, b"\x00" * 8) + _field(19, 0, b"\x01"))
    order = data.draw(st.permutations(range(len(pieces))))
    # Pixel pieces keep their relative order; everything else goes anywhere.
    pixel_pieces = iter(pieces[7:-1])
    arranged = [next(pixel_pieces) if 7 <= i < len(pieces) - 1 else pieces[i] for i in order]
    wire = b"".join(arranged)
    reference = pb2.PanoImage.FromString(wire)
    ours = decode_pano_image(wire)
    _assert_same_as_reference(ours, reference)
    np.testing.assert_array_equal(ours.pixels, frame.pixels)


@pytest.mark.parametrize(
    ("product", "value"),
    [
        (product, value)
        for product in PRODUCTS.values()
        for value in (0, 127, 128, 255, 16383, 16384, 65535)
        if value <= product.max_bit_pattern
    ],
    ids=str,
)
def test_uniform_varint_lengths_and_maximum_values(product, value):
    """R-WIRE-3: every varint length (1, 2, 3 bytes) and the largest bit pattern of each
    product, on the fast and the general paths, both ways against protobuf."""
    for pixels in (
        np.full(product.pixel_count, value),
        np.arange(product.pixel_count) % (value + 1),
    ):
        frame = PanoFrame.create(product, {}, pixels, 2**32 - 1, "f", 2**32 - 1)
        data = encode_pano_image(frame)
        reference = pb2.PanoImage.FromString(data)
        assert list(reference.image_array) == frame.wire_pixels().tolist()
        _assert_same_as_reference(decode_pano_image(reference.SerializeToString()), reference)


def _padded_varint(value: int, extra: int) -> bytes:
    """`value` as a varint `extra` bytes longer than needed (protobuf reads such varints)."""
    raw = bytearray(_varint(value))
    extra = min(extra, 5 - len(raw))  # longer than 5 bytes: STRICTER_THAN_PROTOBUF
    if extra > 0:
        raw[-1] |= 0x80
        raw += b"\x80" * (extra - 1) + b"\x00"
    return bytes(raw)


@given(st.data())
@settings(max_examples=50, deadline=None)
def test_any_mix_of_varint_lengths_decodes_as_protobuf_does(data):
    """R-WIRE-3, R-PARSE-4: pixels mixing 1-, 2- and 3-byte varints (the mixed fast path),
    with some varints written up to 2 bytes longer than needed (the general path) and values
    beyond the product's range (ImageError), the pixel field placed first or last, read as
    protobuf reads them."""
    product = data.draw(st.sampled_from(list(PRODUCTS.values())), label="product")
    top = data.draw(st.sampled_from([0x7F, 0x3FFF, product.max_bit_pattern, 0x1FFFFF, 2**32 - 1]))
    count = product.pixel_count
    values = data.draw(
        hnp.arrays(np.uint32, count, elements=st.integers(0, top)), label="values"
    ).tolist()
    extras = data.draw(
        hnp.arrays(np.uint8, count, elements=st.integers(0, 2), fill=st.just(0)),
        label="extra bytes",
    ).tolist()
    payload = b"".join(_padded_varint(v, e) for v, e in zip(values, extras, strict=True))
    rest = pb2.PanoImage(
        type=int(product.image_type),
        shape=list(product.shape),
        bytes_per_pixel=product.bytes_per_pixel,
        module_id=7,
    ).SerializeToString()
    pixels = _field(3, 2, payload)
    message = rest + pixels if data.draw(st.booleans(), label="pixels last") else pixels + rest
    reference = pb2.PanoImage.FromString(message)
    assert list(reference.image_array) == values
    event("extra bytes" if any(extras) else "canonical varints")
    if max(values) > product.max_bit_pattern:
        with pytest.raises(ImageError, match="pixel values must fit"):
            decode_pano_image(message)
        return
    _assert_same_as_reference(decode_pano_image(message), reference)


@pytest.mark.parametrize("pixels_last", [False, True])
def test_packed_pixels_ending_in_a_cut_varint_are_a_codec_error(pixels_last):
    """R-WIRE-5: a packed image_array whose last varint is cut short (its last byte still
    says "more follows") is malformed, also when the bytes after it would complete it."""
    payload = b"".join(_varint(v) for v in [5, 300, 40000] * 341) + b"\x81"  # 1,024 starts
    rest = pb2.PanoImage(type=2, shape=[32, 32], bytes_per_pixel=2).SerializeToString()
    pixels = _field(3, 2, payload)
    with pytest.raises(CodecError, match="truncated varint"):
        decode_pano_image(rest + pixels if pixels_last else pixels + rest)


def test_unpacked_value_beyond_uint32_is_a_codec_error():
    """R-WIRE-5: an unpacked image_array value that does not fit uint32 is rejected."""
    data = (
        _field(3, 0, _varint(2**32))
        + pb2.PanoImage(type=2, shape=[32, 32], bytes_per_pixel=2).SerializeToString()
    )
    with pytest.raises(CodecError, match="does not fit uint32"):
        decode_pano_image(data)


def test_repeated_message_fields_merge_like_protobuf():
    """R-WIRE-2: a repeated header or pano_image field merges into the earlier one."""
    frame = PanoFrame.create("ph256", {"a": 1, "b": 2}, np.arange(256), 5, "x", 1)
    first = pb2.PanoImage.FromString(encode_pano_image(frame))
    second = pb2.PanoImage(module_id=6, frame_number=0)
    second.header.update({"b": 3, "c": "z"})
    wire = first.SerializeToString() + second.SerializeToString()
    _assert_same_as_reference(decode_pano_image(wire), pb2.PanoImage.FromString(wire))
    response = _field(4, 2, first.SerializeToString()) + _field(4, 2, second.SerializeToString())
    merged = decode_stream_reply(response).frame
    assert merged.module_id == 6 and merged.header == {"a": 1.0, "b": 3.0, "c": "z"}


def _quabo_header(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    keys = ("pkt_num", "pkt_tai", "pkt_nsec", "tv_sec", "tv_usec")
    return {f"quabo_{q}": {k: int(rng.integers(0, 2**31)) for k in keys} for q in range(4)}


def test_header_plans_match_the_general_encoding_and_parse():
    """Headers of numbers and of quabo objects take cached layouts: same bytes as the general
    encoder and protobuf, and bytes of the same size but other keys still parse correctly."""
    from panoseti_daq.wire.header import _decode_struct_general, _encode_struct_general

    for header in (_quabo_header(1), _quabo_header(2)["quabo_0"], {"x": 1.5, "quabo_num": 3}):
        data = encode_struct(header)
        assert data == _encode_struct_general(header, 3)
        assert _reference_header(_reference_struct(data)) == plain(header)
        assert decode_struct(data) == decode_struct(data) == plain(header)
    renamed = {k.replace("quabo", "QUABO"): v for k, v in _quabo_header(3).items()}
    data = encode_struct(renamed)
    assert len(data) == len(encode_struct(_quabo_header(3)))
    assert decode_struct(data) == _decode_struct_general(data, 0, len(data), 2) == plain(renamed)
    with_bool = {"quabo_0": {"pkt_num": True}}
    assert decode_struct(encode_struct(with_bool)) == with_bool


def _reference_struct(data: bytes):
    from google.protobuf.struct_pb2 import Struct

    return Struct.FromString(data)


@given(frames(), st.text(max_size=10), st.integers(-(2**62), 2**62))
@settings(max_examples=examples(50), deadline=None)
def test_upload_and_stream_messages_as_protobuf_writes_them(frame, name, timestamp_ns):
    """R-WIRE-2, R-UP-2: UploadImageRequest and StreamImagesResponse from protobuf."""
    upload = pb2.UploadImageRequest()
    upload.pano_image.ParseFromString(encode_pano_image(frame))
    item = decode_upload_item(upload.SerializeToString())
    _assert_same_as_reference(item.frame, upload.pano_image)
    response = pb2.StreamImagesResponse(name=name, message="m")
    response.timestamp.FromNanoseconds(timestamp_ns)
    response.pano_image.CopyFrom(upload.pano_image)
    reply = decode_stream_reply(response.SerializeToString())
    assert (reply.name, reply.message, reply.timestamp_ns) == (name, "m", timestamp_ns)
    _assert_same_as_reference(reply.frame, upload.pano_image)


@given(st.binary(max_size=60))
@settings(max_examples=examples(300), deadline=None)
def test_small_messages_garbage_is_a_codec_error(data):
    """R-WIRE-5: the betterproto2 fallback also reports malformed bytes as CodecError."""
    codec = DaqCodec()
    for message_type in (StreamImagesRequest, InitHpIoRequest, Empty):
        with contextlib.suppress(CodecError):
            codec.decode(data, message_type)


@given(frames())
@settings(max_examples=examples(25), deadline=None)
def test_decoded_frame_equals_the_betterproto2_route(frame):
    """The fast decode gives exactly what PanoFrame.from_message(PanoImage.parse(...)) gives."""
    data = encode_pano_image(frame)
    fast = decode_pano_image(data)
    slow = PanoFrame.from_message(PanoImage.parse(data))
    assert fast.header == slow.header
    assert fast.pixels.dtype == slow.pixels.dtype and fast.pixels.shape == slow.pixels.shape
    np.testing.assert_array_equal(fast.pixels, slow.pixels)
    assert (fast.product, fast.module_id, fast.file, fast.frame_number) == (
        slow.product,
        slow.module_id,
        slow.file,
        slow.frame_number,
    )


def _nested_header(levels: int, leaf) -> dict:
    header: dict = {}
    inner = header
    for _ in range(levels - 1):
        inner["a"] = {}
        inner = inner["a"]
    inner["a"] = leaf
    return header


def test_header_nesting_stops_where_protobuf_stops():
    """R-WIRE-2, R-WIRE-5: we encode no header protobuf cannot parse inside a
    StreamImagesResponse (its depth limit is 100 messages), and deep nesting in received bytes
    (headers, unknown groups) is a CodecError, never a RecursionError."""
    deepest = {}
    for leaf in (1.0, {}, [], [[1.0]]):
        for levels in range(25, 40):
            header = _nested_header(levels, leaf)
            frame = PanoFrame.create("ph256", header, np.zeros(256, dtype=np.int16), 1)
            try:
                data = encode_stream_reply(StreamReply(frame))
            except ImageError as exc:
                assert "nested too deeply" in str(exc)
                continue
            reference = pb2.StreamImagesResponse.FromString(data)
            _assert_same_as_reference(decode_stream_reply(data).frame, reference.pano_image)
            deepest[repr(leaf)] = levels
    assert deepest["1.0"] >= 32
    value = b"\x11" + b"\x00" * 8
    for _ in range(3000):  # Struct{"a": Value{struct_value: Struct{"a": ...}}}, 3000 deep
        value = _field(5, 2, _field(1, 2, b"\x0a\x01a" + _field(2, 2, value)))
    with pytest.raises(CodecError, match="nested"):
        decode_struct(_field(1, 2, b"\x0a\x01a" + _field(2, 2, value)))
    image = encode_pano_image(PanoFrame.create("ph256", {}, np.arange(256), 1))
    groups = b"\x4b" * 5000 + b"\x4c" * 5000  # unknown field 9: 5000 nested groups
    with pytest.raises(CodecError, match="nested deeper"):
        decode_pano_image(image + groups)
    shallow = image + groups[:3] + groups[-3:]
    _assert_same_as_reference(decode_pano_image(shallow), pb2.PanoImage.FromString(shallow))


@given(frames(), mutations, st.text(max_size=5), st.integers(-(2**62), 2**62))
@settings(max_examples=examples(150), deadline=None)
def test_mutated_stream_replies_fail_cleanly_or_decode_as_protobuf_does(
    frame, edits, name, timestamp_ns
):
    """R-WIRE-4, R-WIRE-5: the same for StreamImagesResponse, what streaming clients decode,
    rejections compared both ways."""
    data = _mutated(encode_stream_reply(StreamReply(frame, name, timestamp_ns, "m")), edits)
    try:
        ours = decode_stream_reply(data)
    except (CodecError, ImageError) as exc:
        _assert_protobuf_rejects_or_documented(exc, data, pb2.StreamImagesResponse)
        return
    event("compared: both accept")
    reference = pb2.StreamImagesResponse.FromString(data)
    assert (ours.name, ours.message) == (reference.name, reference.message)
    stamp = reference.timestamp
    assert ours.timestamp_ns == stamp.seconds * 10**9 + stamp.nanos
    if ours.frame is None:
        assert not reference.HasField("pano_image")
    else:
        _assert_same_as_reference(ours.frame, reference.pano_image)


@pytest.mark.parametrize(
    ("decode", "data", "error"),
    [
        (decode_stream_reply, b"\x0a\x01a\x08\x01", "StreamImagesResponse: field 1 at offset 3 "),
        (decode_stream_reply, b"\x0a\x01\xff", "StreamImagesResponse.name is not valid UTF-8"),
        (decode_stream_reply, b"\x1a\x01\xff", "StreamImagesResponse.message is not valid UTF-8"),
        (decode_stream_reply, b"\x12\x09\x09" + bytes(8), "Timestamp: field 1 at offset 2 "),
        (decode_stream_reply, b"\x12\x04\x08\x01\x15\x00", "Timestamp: field 2 at offset 5 "),
        (decode_upload_item, b"\x08\x01", "UploadImageRequest: field 1 at offset 0 "),
        (decode_upload_item, b"\x0a\x03\x32\x01\xff", "PanoImage.file is not valid UTF-8"),
    ],
)
def test_malformed_bytes_name_the_message_the_field_and_the_offset(decode, data, error):
    """R-WIRE-5: what cannot be decoded is a CodecError naming the message (and field) and
    where in the bytes, which an upload's INVALID_ARGUMENT passes on to the client."""
    with pytest.raises(CodecError) as info:
        decode(data)
    assert str(info.value).startswith(error), str(info.value)


def test_an_upload_too_large_to_relay_is_refused_before_decoding():
    """R-PEER-2: an UploadImageRequest whose image could not fit a default grpcio client's
    StreamImages reply is an ImageError from its length alone: even garbage of that size is
    not parsed."""
    with pytest.raises(ImageError, match="StreamImages reply of 4194305 bytes"):
        decode_upload_item(b"\xff" * (4 * 1024 * 1024 + 6 + 1))
    with pytest.raises(CodecError):
        decode_upload_item(b"\xff" * (4 * 1024 * 1024 + 6))
