"""The DaqData wire codec: numpy on the image hot path, betterproto2 for everything else.

Images are all of this service's traffic, and pure-Python betterproto2 takes milliseconds per
image. This codec encodes and decodes PanoImage, StreamImagesResponse and UploadImageRequest
directly between bytes and PanoFrame (pixels as numpy arrays, packed varints vectorised), and
plugs into grpclib as a Codec. The fast message forms are `StreamReply` and `UploadItem`; a
handler or stub declares them as its message types to take the fast path. Every other message
(and the betterproto2 forms of those three) goes through betterproto2, or protobuf for the
reflection and health services.

Decoding follows protobuf's rules: fields in any order, unknown fields skipped, packed or
unpacked repeated scalars, the last value of a scalar wins. Malformed bytes raise CodecError,
a well-formed but invalid image raises ImageError (R-PARSE-4); neither can hang.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from grpclib.encoding.base import CodecBase

from ._varint import decode_packed_uint32, encode_packed_uint32, encode_varint, read_varint
from .errors import CodecError, ImageError
from .frames import PanoFrame
from .messages import PanoImage, StreamImagesResponse, Timestamp, UploadImageRequest
from .products import product_for

__all__ = [
    "DaqCodec",
    "StreamReply",
    "UploadItem",
    "decode_pano_image",
    "decode_stream_reply",
    "decode_struct",
    "decode_upload_item",
    "encode_pano_image",
    "encode_stream_reply",
    "encode_struct",
    "encode_upload_item",
    "stream_response_message",
]

_DOUBLE = struct.Struct("<d")
_pack_double = _DOUBLE.pack
_unpack_double = _DOUBLE.unpack_from
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class StreamReply:
    """The fast form of StreamImagesResponse.

    `encoded_image`, when set, holds the PanoImage bytes of `frame`, encoded once by the server
    and reused for every client.
    """

    frame: PanoFrame | None
    name: str = ""
    timestamp_ns: int = 0
    message: str = ""
    encoded_image: bytes | None = None


@dataclass(frozen=True, slots=True)
class UploadItem:
    """The fast form of UploadImageRequest; `frame` None is a request without an image."""

    frame: PanoFrame | None


# --- wire primitives ----------------------------------------------------------------------


def _len_field(tag: bytes, payload: bytes) -> bytes:
    return tag + encode_varint(len(payload)) + payload


def _next_field(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int, Any, int]:
    """(field number, wire type, value, next position); value is an int or a (start, end)."""
    key, pos = read_varint(buf, pos, end)
    number, wire_type = key >> 3, key & 7
    if number == 0:
        raise CodecError(f"{what}: field number 0 at offset {pos}")
    if wire_type == 0:
        value, pos = read_varint(buf, pos, end)
        return number, 0, value, pos
    if wire_type == 2:
        length, pos = read_varint(buf, pos, end)
        if pos + length > end:
            raise CodecError(f"{what}: field {number} claims {length} bytes, {end - pos} remain")
        return number, 2, (pos, pos + length), pos + length
    size = {1: 8, 5: 4}.get(wire_type)
    if size is None:
        raise CodecError(f"{what}: field {number} has unsupported wire type {wire_type}")
    if pos + size > end:
        raise CodecError(f"{what}: field {number} truncated ({8 * size}-bit)")
    return number, wire_type, (pos, pos + size), pos + size


def _fields(buf: bytes, start: int, end: int, what: str):
    """Yield (field number, wire type, value) of a message; value is int or (start, end)."""
    pos = start
    while pos < end:
        number, wire_type, value, pos = _next_field(buf, pos, end, what)
        yield number, wire_type, value


def _expect(what: str, number: int, wire_type: int, want: int) -> None:
    if wire_type != want:
        raise CodecError(f"{what}: field {number} has wire type {wire_type}, expected {want}")


def _text(buf: bytes, span: tuple[int, int], what: str) -> str:
    try:
        return buf[span[0] : span[1]].decode()
    except UnicodeDecodeError:
        raise CodecError(f"{what} is not valid UTF-8") from None


# --- google.protobuf.Struct ---------------------------------------------------------------
# Struct{map<string, Value> fields = 1}; Value{oneof: null 1, number 2, string 3, bool 4,
# struct 5, list 6}; ListValue{repeated Value values = 1}.

_number_prefix: dict[str, bytes] = {}


def _number_entry_prefix(key: str) -> bytes:
    """Everything of a map entry holding a number except the 8 bytes of the double."""
    prefix = _number_prefix.get(key)
    if prefix is None:
        raw = key.encode()
        entry = b"\n" + encode_varint(len(raw)) + raw + b"\x12\x09\x11"
        prefix = b"\n" + encode_varint(len(entry) + 8) + entry
        if len(_number_prefix) < 4096:
            _number_prefix[key] = prefix
    return prefix


def _encode_value(value: Any) -> bytes:
    if value is None:
        return b"\x08\x00"
    if value is True:
        return b"\x20\x01"
    if value is False:
        return b"\x20\x00"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return b"\x11" + _pack_double(float(value))
    if isinstance(value, str):
        return _len_field(b"\x1a", value.encode())
    if isinstance(value, Mapping):
        return _len_field(b"\x2a", encode_struct(value))
    if isinstance(value, (list, tuple)):
        return _len_field(b"\x32", b"".join(_len_field(b"\n", _encode_value(v)) for v in value))
    raise ImageError(f"header value of type {type(value).__name__} is not a JSON value")


def encode_struct(header: Mapping[str, Any]) -> bytes:
    """The google.protobuf.Struct bytes of a JSON-like dict."""
    parts = []
    for key, value in header.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(_number_entry_prefix(key) + _pack_double(value))
        else:
            raw = str(key).encode()
            entry = (
                b"\n" + encode_varint(len(raw)) + raw + _len_field(b"\x12", _encode_value(value))
            )
            parts.append(_len_field(b"\n", entry))
    return b"".join(parts)


_key_cache: dict[bytes, str] = {}


def _decode_value(buf: bytes, start: int, end: int) -> Any:
    # The common case first: a number is exactly 0x11 and 8 bytes.
    if end - start == 9 and buf[start] == 0x11:
        return _unpack_double(buf, start + 1)[0]
    if (
        end - start >= 2
        and buf[start] == 0x2A
        and buf[start + 1] < 0x80
        and start + 2 + buf[start + 1] == end
    ):
        return decode_struct(buf, start + 2, end)
    value: Any = None
    for number, wire_type, data in _fields(buf, start, end, "header Value"):
        if number == 1:
            _expect("header Value", number, wire_type, 0)
            value = None
        elif number == 2:
            _expect("header Value", number, wire_type, 1)
            value = _unpack_double(buf, data[0])[0]
        elif number == 3:
            _expect("header Value", number, wire_type, 2)
            value = _text(buf, data, "header string")
        elif number == 4:
            _expect("header Value", number, wire_type, 0)
            value = bool(data)
        elif number == 5:
            _expect("header Value", number, wire_type, 2)
            value = decode_struct(buf, *data)
        elif number == 6:
            _expect("header Value", number, wire_type, 2)
            value = [
                _decode_value(buf, *item)
                for n, wt, item in _fields(buf, data[0], data[1], "header ListValue")
                if n == 1 and wt == 2
            ]
    return value


def _decode_entry(buf: bytes, start: int, end: int) -> tuple[str, Any]:
    key = ""
    value: Any = None
    for n, wt, data in _fields(buf, start, end, "header entry"):
        if n == 1:
            _expect("header entry", n, wt, 2)
            key = _text(buf, data, "header key")
        elif n == 2:
            _expect("header entry", n, wt, 2)
            value = _decode_value(buf, *data)
    return key, value


def decode_struct(buf: bytes, start: int = 0, end: int | None = None) -> dict[str, Any]:
    """A google.protobuf.Struct as a plain dict (numbers as float)."""
    end = len(buf) if end is None else end
    out: dict[str, Any] = {}
    pos = start
    while pos < end:
        # Fast path: an entry `0a L 0a K key 12 V value` with one-byte lengths, as every
        # Hashpipe header has; anything else goes through the general parser.
        if buf[pos] == 0x0A and pos + 3 < end:
            entry_end = pos + 2 + buf[pos + 1]
            key_end = pos + 4 + buf[pos + 3]
            if (
                buf[pos + 1] < 0x80
                and buf[pos + 2] == 0x0A
                and buf[pos + 3] < 0x80
                and key_end + 2 <= entry_end <= end
                and buf[key_end] == 0x12
                and buf[key_end + 1] < 0x80
                and key_end + 2 + buf[key_end + 1] == entry_end
            ):
                raw = buf[pos + 4 : key_end]
                key = _key_cache.get(raw)
                if key is None:
                    key = _text(buf, (pos + 4, key_end), "header key")
                    if len(_key_cache) < 4096:
                        _key_cache[raw] = key
                value_start = key_end + 2
                if entry_end - value_start == 9 and buf[value_start] == 0x11:
                    out[key] = _unpack_double(buf, value_start + 1)[0]
                else:
                    out[key] = _decode_value(buf, value_start, entry_end)
                pos = entry_end
                continue
        number, wire_type, span, pos = _next_field(buf, pos, end, "header Struct")
        if number == 1:
            _expect("header Struct", number, wire_type, 2)
            key, value = _decode_entry(buf, *span)
            out[key] = value
    return out


# --- PanoImage ----------------------------------------------------------------------------


def encode_pano_image(frame: PanoFrame) -> bytes:
    """The PanoImage bytes of a frame, fields in number order with defaults omitted."""
    product = frame.product
    parts = [
        b"\x08" + encode_varint(int(product.image_type)),
        _len_field(b"\x12", encode_struct(frame.header)),
        _len_field(b"\x1a", encode_packed_uint32(frame.wire_pixels())),
        b"\x22\x02" + bytes(product.shape),
        b"\x28" + encode_varint(product.bytes_per_pixel),
    ]
    if frame.file:
        parts.append(_len_field(b"\x32", frame.file.encode()))
    if frame.frame_number:
        parts.append(b"\x38" + encode_varint(frame.frame_number))
    if frame.module_id:
        parts.append(b"\x40" + encode_varint(frame.module_id))
    return b"".join(parts)


def _uint32(value: int, what: str) -> int:
    # protobuf truncates a varint to the field's 32 bits.
    return value & 0xFFFFFFFF


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def decode_pano_image(
    data: bytes | memoryview, start: int = 0, end: int | None = None
) -> PanoFrame:
    """A validated PanoFrame from PanoImage bytes (CodecError / ImageError on bad input)."""
    buf = data if isinstance(data, bytes) else bytes(data)
    end = len(buf) if end is None else end
    image_type = 0
    header: dict[str, Any] = {}
    chunks: list[np.ndarray] = []
    shape: list[int] = []
    bytes_per_pixel = 0
    file = ""
    frame_number = 0
    module_id = 0
    for number, wire_type, value in _fields(buf, start, end, "PanoImage"):
        if number == 3:
            if wire_type == 2:
                chunks.append(decode_packed_uint32(buf[value[0] : value[1]], "image_array"))
            else:
                _expect("PanoImage", number, wire_type, 0)
                chunks.append(np.array([_uint32(value, "image_array")], dtype=np.uint32))
        elif number == 1:
            _expect("PanoImage", number, wire_type, 0)
            image_type = _int32(value)
        elif number == 2:
            _expect("PanoImage", number, wire_type, 2)
            header = decode_struct(buf, *value)
        elif number == 4:
            if wire_type == 2:
                shape.extend(decode_packed_uint32(buf[value[0] : value[1]], "shape").tolist())
            else:
                _expect("PanoImage", number, wire_type, 0)
                shape.append(_uint32(value, "shape"))
        elif number == 5:
            _expect("PanoImage", number, wire_type, 0)
            bytes_per_pixel = _int32(value)
        elif number == 6:
            _expect("PanoImage", number, wire_type, 2)
            file = _text(buf, value, "PanoImage.file")
        elif number == 7:
            _expect("PanoImage", number, wire_type, 0)
            frame_number = _uint32(value, "frame_number")
        elif number == 8:
            _expect("PanoImage", number, wire_type, 0)
            module_id = _uint32(value, "module_id")
    product = product_for(image_type, shape, bytes_per_pixel)
    if not chunks:
        pixels = np.zeros(0, dtype=np.uint32)
    else:
        pixels = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    if pixels.size != product.pixel_count:
        raise ImageError(
            f"{product.name} needs {product.pixel_count} pixels "
            f"({product.rows}x{product.cols}), got {pixels.size}"
        )
    if pixels.size and int(pixels.max()) > product.max_bit_pattern:
        raise ImageError(
            f"{product.name} pixel values must fit {product.bytes_per_pixel} byte(s) "
            f"(0..{product.max_bit_pattern}), got up to {int(pixels.max())}"
        )
    unsigned = np.dtype(f"u{product.bytes_per_pixel}")
    array = pixels.astype(unsigned).view(product.dtype).reshape(product.shape)
    return PanoFrame(product, header, array, module_id, file, frame_number)


# --- StreamImagesResponse and UploadImageRequest ------------------------------------------


def encode_stream_reply(reply: StreamReply) -> bytes:
    """StreamImagesResponse bytes: name, timestamp, message, pano_image."""
    parts = []
    if reply.name:
        parts.append(_len_field(b"\x0a", reply.name.encode()))
    if reply.timestamp_ns:
        seconds, nanos = divmod(reply.timestamp_ns, _NS)
        stamp = b""
        if seconds:
            stamp += b"\x08" + encode_varint(seconds)
        if nanos:
            stamp += b"\x10" + encode_varint(nanos)
        parts.append(_len_field(b"\x12", stamp))
    if reply.message:
        parts.append(_len_field(b"\x1a", reply.message.encode()))
    image = reply.encoded_image
    if image is None and reply.frame is not None:
        image = encode_pano_image(reply.frame)
    if image is not None:
        parts.append(_len_field(b"\x22", image))
    return b"".join(parts)


def _decode_timestamp_ns(buf: bytes, span: tuple[int, int]) -> int:
    seconds = nanos = 0
    for number, wire_type, value in _fields(buf, span[0], span[1], "Timestamp"):
        if number == 1:
            _expect("Timestamp", number, wire_type, 0)
            seconds = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 2:
            _expect("Timestamp", number, wire_type, 0)
            nanos = _int32(value)
    return seconds * _NS + nanos


def decode_stream_reply(data: bytes | memoryview) -> StreamReply:
    """A StreamReply from StreamImagesResponse bytes."""
    buf = data if isinstance(data, bytes) else bytes(data)
    name = message = ""
    timestamp_ns = 0
    frame = None
    for number, wire_type, value in _fields(buf, 0, len(buf), "StreamImagesResponse"):
        if number == 4:
            _expect("StreamImagesResponse", number, wire_type, 2)
            frame = decode_pano_image(buf, *value)
        elif number == 1:
            _expect("StreamImagesResponse", number, wire_type, 2)
            name = _text(buf, value, "StreamImagesResponse.name")
        elif number == 2:
            _expect("StreamImagesResponse", number, wire_type, 2)
            timestamp_ns = _decode_timestamp_ns(buf, value)
        elif number == 3:
            _expect("StreamImagesResponse", number, wire_type, 2)
            message = _text(buf, value, "StreamImagesResponse.message")
    return StreamReply(frame, name, timestamp_ns, message)


def encode_upload_item(item: UploadItem) -> bytes:
    """UploadImageRequest bytes."""
    if item.frame is None:
        return b""
    return _len_field(b"\x0a", encode_pano_image(item.frame))


def decode_upload_item(data: bytes | memoryview) -> UploadItem:
    """An UploadItem from UploadImageRequest bytes (frame None when pano_image is absent)."""
    buf = data if isinstance(data, bytes) else bytes(data)
    span = None
    for number, wire_type, value in _fields(buf, 0, len(buf), "UploadImageRequest"):
        if number == 1:
            _expect("UploadImageRequest", number, wire_type, 2)
            span = value
    return UploadItem(None if span is None else decode_pano_image(buf, *span))


# --- betterproto2 forms of the image messages ---------------------------------------------


def _frame_of(image: PanoImage | None) -> PanoFrame | None:
    return None if image is None else PanoFrame.from_message(image)


def stream_response_message(reply: StreamReply) -> StreamImagesResponse:
    """The betterproto2 StreamImagesResponse of a StreamReply."""
    stamp = None
    if reply.timestamp_ns:
        seconds, nanos = divmod(reply.timestamp_ns, _NS)
        stamp = Timestamp(seconds=seconds, nanos=nanos)
    return StreamImagesResponse(
        name=reply.name,
        timestamp=stamp,
        message=reply.message,
        pano_image=None if reply.frame is None else reply.frame.to_message(),
    )


def _stream_reply_of(message: StreamImagesResponse) -> StreamReply:
    timestamp_ns = 0
    if message.timestamp is not None:
        timestamp_ns = message.timestamp.seconds * _NS + message.timestamp.nanos
    return StreamReply(_frame_of(message.pano_image), message.name, timestamp_ns, message.message)


class DaqCodec(CodecBase):
    """grpclib codec of the DaqData service: fast paths for images, betterproto2 otherwise."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, StreamReply):
            return encode_stream_reply(message)
        if isinstance(message, UploadItem):
            return encode_upload_item(message)
        if isinstance(message, PanoFrame):
            return encode_pano_image(message)
        if isinstance(message, PanoImage):
            return encode_pano_image(PanoFrame.from_message(message))
        if isinstance(message, UploadImageRequest):
            return encode_upload_item(UploadItem(_frame_of(message.pano_image)))
        if isinstance(message, StreamImagesResponse):
            return encode_stream_reply(_stream_reply_of(message))
        if not isinstance(message, message_type):
            raise TypeError(f"message must be of type {message_type!r}, not {type(message)!r}")
        # betterproto2 and protobuf messages (reflection, health) both serialise this way.
        return message.SerializeToString()

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is StreamReply:
            return decode_stream_reply(data)
        if message_type is UploadItem:
            return decode_upload_item(data)
        if message_type is PanoImage:
            return decode_pano_image(data).to_message()
        if message_type is StreamImagesResponse:
            return stream_response_message(decode_stream_reply(data))
        if message_type is UploadImageRequest:
            item = decode_upload_item(data)
            return UploadImageRequest(
                pano_image=None if item.frame is None else item.frame.to_message()
            )
        # betterproto2 accepts some truncated input silently: check the framing first.
        for _ in _fields(data, 0, len(data), message_type.__name__):
            pass
        try:
            return message_type.FromString(data)
        except Exception as exc:  # betterproto2 raises assorted errors on malformed bytes
            raise CodecError(f"{message_type.__name__}: malformed message: {exc}") from exc
