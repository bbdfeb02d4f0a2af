"""The DaqData wire codec: numpy on the image hot path, betterproto2 for everything else.

Images are all of this service's traffic, and pure-Python betterproto2 takes milliseconds per
image. This codec encodes and decodes PanoImage, StreamImagesResponse and UploadImageRequest
directly between bytes and PanoFrame (pixels as numpy arrays, packed varints vectorised, the
header Struct through cached layouts), and plugs into grpclib as a Codec. The fast message forms
are `StreamReply` and `UploadItem`; a handler or stub declares them as its message types to take
the fast path. The betterproto2 forms of those three messages are converted through PanoFrame;
every other message goes through betterproto2 (or protobuf, for the reflection and health
services).

Decoding follows protobuf's rules: fields in any order, unknown fields skipped, packed or
unpacked repeated scalars, the last value of a scalar wins, a repeated message field merges.
Malformed bytes raise CodecError naming the field and offset; a well-formed but invalid image
raises ImageError (R-PARSE-4); neither can hang. Where we reject bytes that protobuf reads, the
reason is one of `STRICTER_THAN_PROTOBUF` (the differential tests hold us to that list).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import CodecError, ImageError
from ..frames import PanoFrame
from ..messages import PanoImage, StreamImagesResponse, Timestamp, UploadImageRequest
from ..products import PRODUCTS, DataProduct, product_for
from .header import MAX_FIELD_NUMBER, decode_struct, encode_struct, next_field
from .varint import decode_packed_pixels, encode_packed_pixels, encode_varint, read_varint

__all__ = [
    "STRICTER_THAN_PROTOBUF",
    "StreamReply",
    "UploadItem",
    "decode_message",
    "decode_pano_image",
    "decode_stream_reply",
    "decode_struct",
    "decode_upload_item",
    "dropped_before",
    "encode_framed_stream_replies",
    "encode_message",
    "encode_pano_image",
    "encode_stream_reply",
    "encode_struct",
    "encode_upload_item",
    "overrun_notice",
    "stream_response_message",
]

_NS = 1_000_000_000

# Every way this codec rejects bytes that protobuf parses: (pattern of our error message, why).
# Anything else we reject, protobuf rejects too.
STRICTER_THAN_PROTOBUF: tuple[tuple[str, str], ...] = (
    (
        r"no data product has type",
        "type, shape and bytes_per_pixel name no data product (R-PARSE-4, R-DP-2)",
    ),
    (r"needs \d+ pixels", "the pixel count is not rows x cols of the product (R-PARSE-4)"),
    (r"pixel values must fit", "a pixel value does not fit bytes_per_pixel (R-PARSE-4)"),
    (
        r"does not fit uint32",
        "a uint32 field (image_array, shape, frame_number, module_id) holds a varint beyond "
        "32 bits; protobuf keeps its low 32 bits",
    ),
    (
        r"wrong wire type|has wire type \d+, expected",
        "a known field arrives with another wire type; protobuf keeps it as an unknown field",
    ),
    (
        r"invalid field number 0 in group",
        "field number 0 inside a group (an unknown field): protobuf skips groups without "
        "checking the field numbers inside",
    ),
)
_REPLY_TAGS = frozenset((0x0A, 0x12, 0x1A, 0x22))  # StreamImagesResponse fields 1..4
_UINT32_MAX = 0xFFFFFFFF


_DROPPED = re.compile(r"dropped (\d+) frames?")


def overrun_notice(dropped: int) -> str:
    """StreamImagesResponse.message for a frame after `dropped` overruns (R-STREAM-11)."""
    return f"dropped {dropped} frames" if dropped else ""


def dropped_before(message: str) -> int:
    """Frames the server dropped just before this one, read from its overrun notice
    (R-STREAM-11, R-CLI-10): "dropped N frames"; 0 for any other message."""
    match = _DROPPED.fullmatch(message) if message else None
    return int(match.group(1)) if match else 0


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

    @property
    def dropped_before(self) -> int:
        """Frames the server dropped just before this one (its overrun notice, R-CLI-10)."""
        return dropped_before(self.message)


@dataclass(frozen=True, slots=True)
class UploadItem:
    """The fast form of UploadImageRequest; `frame` None is a request without an image.

    On decoding, `encoded` holds the received PanoImage bytes, so that the server can pass them
    on to its clients without encoding the frame again.
    """

    frame: PanoFrame | None
    encoded: bytes | None = None


def _len_field(tag: bytes, payload: bytes) -> bytes:
    return tag + encode_varint(len(payload)) + payload


def _text(buf: bytes, start: int, end: int, what: str) -> str:
    try:
        return buf[start:end].decode()
    except UnicodeDecodeError:
        raise CodecError(f"{what} is not valid UTF-8") from None


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _uint32(value: int, what: str) -> int:
    if value > _UINT32_MAX:
        raise CodecError(f"{what}: value {value} does not fit uint32")
    return value


def _wrong_wire_type(what: str, number: int, wire_type: int, offset: int) -> CodecError:
    return CodecError(f"{what}: field {number} at offset {offset} has wrong wire type {wire_type}")


# --- PanoImage ----------------------------------------------------------------------------

# Per product, keyed by name (DataProduct's dataclass hash is slow): the type field, the shape
# and bytes_per_pixel fields, the unsigned dtype of the bit patterns, the shape.
_TYPE_FIELD = {p.name: b"\x08" + encode_varint(int(p.image_type)) for p in PRODUCTS.values()}
_SHAPE_BPP_FIELDS = {
    p.name: b"\x22\x02" + bytes(p.shape) + b"\x28" + encode_varint(p.bytes_per_pixel)
    for p in PRODUCTS.values()
}
_UNSIGNED = {p.name: np.dtype(f"u{p.bytes_per_pixel}") for p in PRODUCTS.values()}
_SHAPES = {p.name: p.shape for p in PRODUCTS.values()}
_BY_LAYOUT = {(int(p.image_type), p.rows, p.cols, p.bytes_per_pixel): p for p in PRODUCTS.values()}
# PanoImage field numbers that may be varints, and that may be length-delimited (3 and 4,
# repeated scalars, may be either: unpacked or packed).
_VARINT_FIELDS = {1, 3, 4, 5, 7, 8}
_LEN_FIELDS = {2, 3, 4, 6}


def encode_pano_image(frame: PanoFrame) -> bytes:
    """The PanoImage bytes of a frame, fields in number order with defaults omitted."""
    product = frame.product
    header = encode_struct(frame.header)
    pixels = encode_packed_pixels(frame.pixels.reshape(-1).view(_UNSIGNED[product.name]))
    parts = [
        _TYPE_FIELD[product.name],
        b"\x12",
        encode_varint(len(header)),
        header,
        b"\x1a",
        encode_varint(len(pixels)),
        pixels,
        _SHAPE_BPP_FIELDS[product.name],
    ]
    if frame.file:
        raw = frame.file.encode()
        parts += [b"\x32", encode_varint(len(raw)), raw]
    if frame.frame_number:
        parts += [b"\x38", encode_varint(frame.frame_number)]
    if frame.module_id:
        parts += [b"\x40", encode_varint(frame.module_id)]
    return b"".join(parts)


def _pixels(
    buf: bytes, parts: list[tuple[int, int] | int], product: DataProduct, where: int
) -> np.ndarray:
    """The frame's pixels from its image_array pieces (packed spans and unpacked values)."""
    count = product.pixel_count
    if len(parts) == 1 and type(parts[0]) is tuple:
        start, end = parts[0]
        values = decode_packed_pixels(buf, start, end, count, f"image_array at offset {where}")
    elif parts:
        chunks = []
        loose: list[int] = []
        for part in parts:
            if isinstance(part, tuple):
                if loose:
                    chunks.append(np.array(loose, dtype=np.uint32))
                    loose = []
                values = decode_packed_pixels(buf, part[0], part[1], 0, "image_array")
                chunks.append(values.astype(np.uint32, copy=False))
            else:
                loose.append(part)
        if loose:
            chunks.append(np.array(loose, dtype=np.uint32))
        values = np.concatenate(chunks)
    else:
        values = np.zeros(0, dtype=np.uint32)
    if values.size != count:
        raise ImageError(
            f"{product.name} needs {count} pixels ({product.rows}x{product.cols}), "
            f"got {values.size}"
        )
    top = product.max_bit_pattern
    # uint16 results of the fast paths fit 16 bits: no range check for 16-bit products.
    if values.dtype.itemsize > product.bytes_per_pixel or top < 0xFFFF:
        high = int(values.max())
        if high > top:
            raise ImageError(
                f"{product.name} pixel values must fit {product.bytes_per_pixel} byte(s) "
                f"(0..{top}), got up to {high}"
            )
    if values.dtype.itemsize != product.bytes_per_pixel:
        values = values.astype(_UNSIGNED[product.name])
    return values.view(product.dtype).reshape(_SHAPES[product.name])


def _decode_canonical(buf: bytes) -> PanoFrame | None:
    """The frame of a PanoImage laid out as we and protobuf write it, or None.

    That layout (fields in number order, shape packed, defaults omitted, one- or two-byte
    lengths) is parsed straight through; for any other layout, or any doubt, this returns None
    and the general parser decides, and reports every error.
    """
    try:
        if buf[0] != 0x08 or buf[2] != 0x12:
            return None
        image_type = buf[1]
        n = buf[3]
        pos = 4
        if n >= 0x80:
            high = buf[4]
            if high >= 0x80:
                return None
            n = (n & 0x7F) | high << 7
            pos = 5
        header_start = pos
        pos += n
        header_end = pos
        if buf[pos] != 0x1A:
            return None
        n = buf[pos + 1]
        pos += 2
        if n >= 0x80:
            high = buf[pos]
            if high >= 0x80:
                return None
            n = (n & 0x7F) | high << 7
            pos += 1
        pixels_start = pos
        pos += n
        pixels_end = pos
        if buf[pos] != 0x22 or buf[pos + 1] != 2 or buf[pos + 4] != 0x28:
            return None
        product = _BY_LAYOUT.get((image_type, buf[pos + 2], buf[pos + 3], buf[pos + 5]))
        if product is None:
            return None
        pos += 6
        end = len(buf)
        file = ""
        frame_number = module_id = 0
        if pos < end and buf[pos] == 0x32:
            n = buf[pos + 1]
            pos += 2
            if n >= 0x80 or pos + n > end:
                return None
            file = buf[pos : pos + n].decode()
            pos += n
        if pos < end and buf[pos] == 0x38:
            frame_number = buf[pos + 1]
            if frame_number < 0x80:
                pos += 2
            else:
                frame_number, pos = read_varint(buf, pos + 1, end)
        if pos < end and buf[pos] == 0x40:
            module_id = buf[pos + 1]
            if module_id < 0x80:
                pos += 2
            else:
                module_id, pos = read_varint(buf, pos + 1, end)
        if pos != end or frame_number > _UINT32_MAX or module_id > _UINT32_MAX:
            return None
    except (IndexError, UnicodeDecodeError, CodecError):
        return None
    header = decode_struct(buf, header_start, header_end)
    pixels = _pixels(buf, [(pixels_start, pixels_end)], product, header_end)
    return PanoFrame(product, header, pixels, module_id, file, frame_number)


def decode_pano_image(
    data: bytes | memoryview, start: int = 0, end: int | None = None
) -> PanoFrame:
    """A validated PanoFrame from PanoImage bytes (CodecError / ImageError on bad input)."""
    buf = data if type(data) is bytes else bytes(data)
    end = len(buf) if end is None else end
    frame = _decode_canonical(buf if start == 0 and end == len(buf) else buf[start:end])
    if frame is not None:
        return frame
    image_type = bytes_per_pixel = frame_number = module_id = 0
    header_spans: list[tuple[int, int]] = []
    pixel_parts: list[tuple[int, int] | int] = []
    shape: list[int] = []
    file = ""
    pixels_at = start
    pos = start
    while pos < end:
        at = pos
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = read_varint(buf, pos, end)
            if tag >> 3 > MAX_FIELD_NUMBER:
                raise CodecError(f"PanoImage: invalid field number {tag >> 3} at offset {at}")
        number = tag >> 3
        wire_type = tag & 7
        if wire_type == 2:
            if pos < end and buf[pos] < 0x80:
                length = buf[pos]
                pos += 1
            else:
                length, pos = read_varint(buf, pos, end)
            after = pos + length
            if after > end:
                raise CodecError(
                    f"PanoImage: field {number} at offset {at} claims {length} bytes, "
                    f"{end - pos} remain"
                )
            if number == 3:
                pixel_parts.append((pos, after))
                pixels_at = at
            elif number == 2:
                header_spans.append((pos, after))
            elif number == 4:
                shape.extend(_packed_uint32s(buf, pos, after, "PanoImage.shape"))
            elif number == 6:
                file = _text(buf, pos, after, "PanoImage.file")
            elif number in _VARINT_FIELDS:
                raise _wrong_wire_type("PanoImage", number, wire_type, at)
            elif number == 0:
                raise CodecError(f"PanoImage: field number 0 at offset {at}")
            pos = after
        elif wire_type == 0:
            if pos < end and buf[pos] < 0x80:
                value = buf[pos]
                pos += 1
            else:
                value, pos = read_varint(buf, pos, end)
            if number == 1:
                image_type = _int32(value)
            elif number == 5:
                bytes_per_pixel = _int32(value)
            elif number == 3:
                pixel_parts.append(_uint32(value, f"image_array at offset {at}"))
            elif number == 7:
                frame_number = _uint32(value, "PanoImage.frame_number")
            elif number == 8:
                module_id = _uint32(value, "PanoImage.module_id")
            elif number == 4:
                shape.append(_uint32(value, "PanoImage.shape"))
            elif number in _LEN_FIELDS:
                raise _wrong_wire_type("PanoImage", number, wire_type, at)
            elif number == 0:
                raise CodecError(f"PanoImage: field number 0 at offset {at}")
        else:
            if 1 <= number <= 8:
                raise _wrong_wire_type("PanoImage", number, wire_type, at)
            pos = next_field(buf, at, end, "PanoImage")[3]
    if not header_spans:
        header: dict[str, Any] = {}
    elif len(header_spans) == 1:
        header = decode_struct(buf, *header_spans[0])
    else:  # a repeated message field merges: parse the concatenation
        header = decode_struct(b"".join(buf[a:b] for a, b in header_spans))
    product = (
        _BY_LAYOUT.get((image_type, shape[0], shape[1], bytes_per_pixel))
        if len(shape) == 2
        else None
    )
    if product is None:
        for part in pixel_parts:  # malformed bytes are a CodecError before an invalid image
            if isinstance(part, tuple):
                decode_packed_pixels(buf, part[0], part[1], 0, f"image_array at offset {pixels_at}")
        product = product_for(image_type, shape, bytes_per_pixel)  # raises the ImageError
    pixels = _pixels(buf, pixel_parts, product, pixels_at)
    return PanoFrame(product, header, pixels, module_id, file, frame_number)


def _packed_uint32s(buf: bytes, start: int, end: int, what: str) -> list[int]:
    values = []
    pos = start
    while pos < end:
        value, pos = read_varint(buf, pos, end)
        values.append(_uint32(value, what))
    return values


# --- StreamImagesResponse and UploadImageRequest ------------------------------------------


@lru_cache(maxsize=8)
def _name_field(name: str) -> bytes:
    """StreamImagesResponse.name as a field ("" omitted); a server sends one name."""
    return _len_field(b"\x0a", name.encode()) if name else b""


def _timestamp_field(timestamp_ns: int) -> bytes:
    """StreamImagesResponse.timestamp as a field (0 omitted)."""
    if not timestamp_ns:
        return b""
    seconds, nanos = divmod(timestamp_ns, _NS)
    stamp = b""
    if seconds:
        stamp += b"\x08" + encode_varint(seconds)
    if nanos:
        stamp += b"\x10" + encode_varint(nanos)
    return _len_field(b"\x12", stamp)


def encode_stream_reply(reply: StreamReply) -> bytes:
    """StreamImagesResponse bytes: name, timestamp, message, pano_image."""
    parts = [_name_field(reply.name), _timestamp_field(reply.timestamp_ns)]
    if reply.message:
        parts.append(_len_field(b"\x1a", reply.message.encode()))
    image = reply.encoded_image
    if image is None and reply.frame is not None:
        image = encode_pano_image(reply.frame)
    if image is not None:
        parts += [b"\x22", encode_varint(len(image)), image]
    return b"".join(parts)


_GRPC_PREFIX = struct.Struct(">BI")  # gRPC message framing: not compressed, length


def encode_framed_stream_replies(
    images: Sequence[tuple[bytes, str]], name: str, timestamp_ns: int
) -> bytes:
    """StreamImagesResponse messages of PanoImage bytes sharing one name and send time, each
    framed for gRPC (its 5-byte prefix), one after another: what one batch of a StreamImages
    call writes. `images` pairs each image's bytes with its message ("" for none).

    Each message is byte for byte `encode_stream_reply(StreamReply(..., name, timestamp_ns,
    message, encoded_image=image))`; the name and timestamp fields are encoded once.
    """
    head = _name_field(name) + _timestamp_field(timestamp_ns)
    pack = _GRPC_PREFIX.pack
    parts: list[bytes] = []
    for image, message in images:
        image_length = encode_varint(len(image))
        size = len(head) + 1 + len(image_length) + len(image)
        if message:
            notice = _len_field(b"\x1a", message.encode())
            parts += (pack(0, size + len(notice)), head, notice)
        else:
            parts += (pack(0, size), head)
        parts += (b"\x22", image_length, image)
    return b"".join(parts)


def _decode_timestamp_ns(buf: bytes, start: int, end: int) -> int:
    # The usual layout first: seconds then nanos, both present and in range.
    if end - start > 2 and buf[start] == 0x08:
        seconds, pos = read_varint(buf, start + 1, end)
        if pos < end and buf[pos] == 0x10:
            nanos, pos = read_varint(buf, pos + 1, end)
            if pos == end and seconds < 1 << 63 and nanos < 1 << 31:
                return seconds * _NS + nanos
    seconds = nanos = 0
    pos = start
    while pos < end:
        at = pos
        number, wire_type, value, pos = next_field(buf, pos, end, "Timestamp")
        if number == 1:
            if wire_type != 0:
                raise _wrong_wire_type("Timestamp", number, wire_type, at)
            value &= (1 << 64) - 1
            seconds = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 2:
            if wire_type != 0:
                raise _wrong_wire_type("Timestamp", number, wire_type, at)
            nanos = _int32(value)
    return seconds * _NS + nanos


def _merged(buf: bytes, spans: list[tuple[int, int]]) -> tuple[bytes, int, int]:
    """One span of a message field, or the concatenation of its repeats (protobuf merges)."""
    if len(spans) == 1:
        return buf, spans[0][0], spans[0][1]
    merged = b"".join(buf[a:b] for a, b in spans)
    return merged, 0, len(merged)


def decode_stream_reply(data: bytes | memoryview) -> StreamReply:
    """A StreamReply from StreamImagesResponse bytes."""
    buf = data if type(data) is bytes else bytes(data)
    name = message = ""
    timestamp_spans: list[tuple[int, int]] = []
    image_spans: list[tuple[int, int]] = []
    pos = 0
    end = len(buf)
    while pos < end:
        at = pos
        tag = buf[pos]
        # Fields 1..4 (all length-delimited) with one- or two-byte lengths inline.
        if tag in _REPLY_TAGS and pos + 2 < end and buf[pos + 2] < 0x80 <= buf[pos + 1]:
            length = (buf[pos + 1] & 0x7F) | buf[pos + 2] << 7
            pos += 3
        elif tag in _REPLY_TAGS and pos + 1 < end and buf[pos + 1] < 0x80:
            length = buf[pos + 1]
            pos += 2
        else:
            number, wire_type, value, pos = next_field(buf, pos, end, "StreamImagesResponse")
            if 1 <= number <= 4 and wire_type != 2:
                raise _wrong_wire_type("StreamImagesResponse", number, wire_type, at)
            tag = number << 3 | wire_type
            length = -1
        if length >= 0:
            value = (pos, pos + length)
            pos += length
            if pos > end:
                raise CodecError(
                    f"StreamImagesResponse: field {tag >> 3} at offset {at} claims {length} "
                    f"bytes, {end - value[0]} remain"
                )
        if tag == 0x22:
            image_spans.append(value)
        elif tag == 0x0A:
            name = _text(buf, value[0], value[1], "StreamImagesResponse.name")
        elif tag == 0x12:
            timestamp_spans.append(value)
        elif tag == 0x1A:
            message = _text(buf, value[0], value[1], "StreamImagesResponse.message")
    timestamp_ns = _decode_timestamp_ns(*_merged(buf, timestamp_spans)) if timestamp_spans else 0
    frame = decode_pano_image(*_merged(buf, image_spans)) if image_spans else None
    return StreamReply(frame, name, timestamp_ns, message)


def encode_upload_item(item: UploadItem) -> bytes:
    """UploadImageRequest bytes."""
    if item.frame is None:
        return b""
    image = encode_pano_image(item.frame)
    return b"".join((b"\x0a", encode_varint(len(image)), image))


# What a default grpcio client accepts (R-PEER-2): a StreamImages reply is at least as long as
# the PanoImage it relays.
RELAY_LIMIT_BYTES = 4 * 1024 * 1024
# The bytes of an UploadImageRequest around its PanoImage: field 1's tag and length.
_UPLOAD_FRAMING_BYTES = 1 + 5


def too_large_to_relay(reply_bytes: int) -> str:
    """The reason an image whose StreamImages reply has `reply_bytes` is refused (R-PEER-2)."""
    return (
        f"it would make a StreamImages reply of {reply_bytes} bytes, more than the "
        f"{RELAY_LIMIT_BYTES} bytes a default gRPC client accepts"
    )


def decode_upload_item(data: bytes | memoryview) -> UploadItem:
    """An UploadItem from UploadImageRequest bytes (frame None when pano_image is absent).

    ImageError, before anything is decoded, for a request whose image no StreamImages reply
    could relay to a default gRPC client (R-PEER-2): decoding a 4 MiB header costs the event
    loop tens of milliseconds.
    """
    if len(data) - _UPLOAD_FRAMING_BYTES > RELAY_LIMIT_BYTES:
        raise ImageError(too_large_to_relay(len(data) - _UPLOAD_FRAMING_BYTES))
    buf = data if type(data) is bytes else bytes(data)
    spans: list[tuple[int, int]] = []
    pos = 0
    end = len(buf)
    while pos < end:
        at = pos
        number, wire_type, value, pos = next_field(buf, pos, end, "UploadImageRequest")
        if number == 1:
            if wire_type != 2:
                raise _wrong_wire_type("UploadImageRequest", number, wire_type, at)
            spans.append(value)
    if not spans:
        return UploadItem(None)
    frame = decode_pano_image(*_merged(buf, spans))
    encoded = buf[spans[0][0] : spans[0][1]] if len(spans) == 1 else None
    return UploadItem(frame, encoded)


# --- betterproto2 forms of the image messages ---------------------------------------------


def _frame_of(image: PanoImage | None) -> PanoFrame | None:
    return None if image is None else PanoFrame.from_message(image)


def stream_response_message(reply: StreamReply) -> StreamImagesResponse:
    """The betterproto2 StreamImagesResponse of a StreamReply."""
    # betterproto2 declares the field a timezone-aware datetime (R-CLI-9): microseconds.
    stamp = None
    if reply.timestamp_ns:
        seconds, nanos = divmod(reply.timestamp_ns, _NS)
        stamp = Timestamp(seconds=seconds, nanos=nanos).to_datetime()
    return StreamImagesResponse(
        name=reply.name,
        timestamp=stamp,
        message=reply.message,
        pano_image=None if reply.frame is None else reply.frame.to_message(),
    )


def _stream_reply_of(message: StreamImagesResponse) -> StreamReply:
    timestamp_ns = 0
    if message.timestamp is not None:
        stamp = Timestamp.from_datetime(message.timestamp)
        timestamp_ns = stamp.seconds * _NS + stamp.nanos
    return StreamReply(_frame_of(message.pano_image), message.name, timestamp_ns, message.message)


def encode_message(message: Any, message_type: Any) -> bytes:
    """The protobuf bytes of a DaqData message, fast paths for images, betterproto2 otherwise.

    Message types with a fast path: StreamReply (StreamImagesResponse), UploadItem
    (UploadImageRequest) and PanoFrame (PanoImage), and the betterproto2 PanoImage,
    StreamImagesResponse and UploadImageRequest (converted through PanoFrame). Any other message
    (reflection, health, the other DaqData messages) serialises itself.
    """
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
    serialized: bytes = message.SerializeToString()
    return serialized


def decode_message(data: bytes, message_type: Any) -> Any:
    """A `message_type` from protobuf bytes (the fast types of `encode_message` included).

    Raises CodecError for malformed bytes and ImageError for an invalid image.
    """
    if message_type is StreamReply:
        return decode_stream_reply(data)
    if message_type is UploadItem:
        return decode_upload_item(data)
    if message_type is PanoFrame:
        return decode_pano_image(data)
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
    pos = 0
    while pos < len(data):
        pos = next_field(data, pos, len(data), message_type.__name__)[3]
    try:
        return message_type.FromString(data)
    except Exception as exc:  # betterproto2 raises assorted errors on malformed bytes
        raise CodecError(f"{message_type.__name__}: malformed message: {exc}") from exc
