"""The framing of Hashpipe's ingest sockets (R-UDS-2), without the sockets.

Newer Hashpipe versions connect to one Unix stream socket per data product and send, per frame,
a 2-byte big-endian module id followed by a PFF frame of that product: a JSON header ending in
a blank line, `*`, then the pixels. The header length is learned from the first frame of a
connection; every later frame of the connection has the same size. `UdsFrameDecoder` turns a
connection's bytes into frames; `hashpipe_frame` writes one (the simulation and `replay`).
"""

from __future__ import annotations

from .. import pff
from ..errors import PFFError
from ..frames import PanoFrame
from ..products import DataProduct

__all__ = [
    "MODULE_ID_BYTES",
    "UdsFrameDecoder",
    "hashpipe_frame",
    "module_id_prefix",
    "socket_path",
]

MODULE_ID_BYTES = 2


def socket_path(template: str, product: DataProduct | str) -> str:
    """The socket path of one product: `template` with {dp_name} filled in."""
    return template.format(dp_name=str(product))


class UdsFrameDecoder:
    """Frames of one connection, from its bytes in whatever chunks they arrive."""

    def __init__(self, product: DataProduct, source: str = "") -> None:
        self.product = product
        self.source = source
        self.frame_size: int | None = None  # module id + PFF frame, learned from frame one
        self.frames = 0
        self._buffer = bytearray()
        self._offset = 0  # bytes consumed before the buffer, for error messages

    @property
    def pending(self) -> int:
        """Bytes of a frame not complete yet (an early close leaves these behind)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[PanoFrame]:
        """The frames completed by `data`; PFFError for framing that can never be valid."""
        self._buffer += data
        frames: list[PanoFrame] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return frames
            frames.append(frame)

    def _next_frame(self) -> PanoFrame | None:
        buf = self._buffer
        if self.frame_size is None:
            if len(buf) <= MODULE_ID_BYTES:
                return None
            decoded = pff.decode_frame(
                memoryview(buf)[MODULE_ID_BYTES:], self.product, 0, self.source
            )
            if decoded is None:
                return None
            self.frame_size = MODULE_ID_BYTES + decoded[2]
        size = self.frame_size
        if len(buf) < size:
            return None
        module_id = int.from_bytes(buf[:MODULE_ID_BYTES], "big")
        chunk = bytes(buf[MODULE_ID_BYTES:size])
        try:
            decoded = pff.decode_frame(chunk, self.product, 0, self.source)
        except PFFError as exc:
            offset = self._offset + MODULE_ID_BYTES + exc.offset
            raise PFFError(self.source, offset, exc.reason) from None
        if decoded is None or decoded[2] != size - MODULE_ID_BYTES:
            raise PFFError(
                self.source,
                self._offset,
                f"frame {self.frames} is not {size} bytes like the connection's first frame",
            )
        header, pixels, _ = decoded
        del buf[:size]
        self._offset += size
        frame = PanoFrame(self.product, header, pixels, module_id, self.source, self.frames)
        self.frames += 1
        return frame


def module_id_prefix(module_id: int) -> bytes:
    """The bytes before each frame of `module_id`; ValueError when it does not fit them."""
    if not 0 <= module_id < 1 << (8 * MODULE_ID_BYTES):
        raise ValueError(f"module id {module_id} does not fit {MODULE_ID_BYTES} bytes")
    return module_id.to_bytes(MODULE_ID_BYTES, "big")


def hashpipe_frame(module_id: int, pff_frame: bytes) -> bytes:
    """What Hashpipe sends for one frame: the module id, then the PFF frame's bytes."""
    return module_id_prefix(module_id) + pff_frame
