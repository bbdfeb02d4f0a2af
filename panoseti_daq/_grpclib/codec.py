"""DaqCodec: the wire codec (panoseti_daq.wire.codec) as grpclib's codec of the DaqData service."""

from __future__ import annotations

from typing import Any

from grpclib.encoding.base import CodecBase

from ..wire.codec import decode_message, encode_message

__all__ = ["DaqCodec"]


class DaqCodec(CodecBase):
    """grpclib codec of the DaqData service: fast paths for images, betterproto2 otherwise.

    Decoding raises CodecError for malformed bytes and ImageError for an invalid image; a
    handler turns them into a status (grpclib itself would answer UNKNOWN).
    """

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return encode_message(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return decode_message(data, message_type)
