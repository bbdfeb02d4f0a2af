"""Hashpipe's Unix-socket ingest: frames handed over a stream socket per data product (§12).

Newer Hashpipe versions connect to one Unix stream socket per data product and send, per frame,
a 2-byte big-endian module id followed by a PFF frame of that product (R-UDS-2): a JSON header
ending in a blank line, `*`, then the pixels. The header length is learned from the first frame
of a connection; every later frame of the connection has the same size. Frames enter the hub
like uploads.

`UdsFrameDecoder` is the sans-IO framing; `run_uds_ingest` runs one listener per product in the
server's task group (R-UDS-1, R-UDS-3).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable

import anyio
from anyio.abc import SocketStream, TaskStatus

from .. import pff
from ..config import UdsIngestConfig
from ..errors import PFFError
from ..frames import PanoFrame
from ..products import DataProduct, product_named
from .sockets import prepare_socket_path

log = logging.getLogger(__name__)

__all__ = ["UdsFrameDecoder", "run_uds_ingest", "socket_path"]

MODULE_ID_BYTES = 2
READ_SIZE = 65536


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


async def _serve_connection(
    stream: SocketStream,
    product: DataProduct,
    path: str,
    read_timeout_s: float,
    publish: Callable[[PanoFrame], None],
) -> None:
    decoder = UdsFrameDecoder(product, f"uds:{product.name}")
    async with stream:
        try:
            while True:
                with anyio.fail_after(read_timeout_s):
                    data = await stream.receive(READ_SIZE)
                for frame in decoder.feed(data):
                    publish(frame)
        except anyio.EndOfStream:
            if decoder.pending:
                log.warning(
                    "%s: sender closed in the middle of frame %d (%d bytes); %d frames received",
                    path,
                    decoder.frames,
                    decoder.pending,
                    decoder.frames,
                )
        except TimeoutError:
            log.warning(
                "%s: no data for %g s; connection closed after %d frames",
                path,
                read_timeout_s,
                decoder.frames,
            )
        except PFFError as exc:
            log.warning("%s: malformed framing, connection dropped: %s", path, exc)
        except (anyio.BrokenResourceError, OSError) as exc:
            log.warning("%s: connection failed: %s", path, exc)


async def _listen(
    product: DataProduct,
    path: str,
    read_timeout_s: float,
    publish: Callable[[PanoFrame], None],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    prepare_socket_path(path, "acquisition_methods.uds.socket_path_template")
    listener = await anyio.create_unix_listener(path)
    log.info("Hashpipe ingest for %s on %s", product.name, path)
    try:
        async with listener:
            task_status.started()
            await listener.serve(
                lambda stream: _serve_connection(stream, product, path, read_timeout_s, publish)
            )
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def run_uds_ingest(
    cfg: UdsIngestConfig,
    products: Iterable[DataProduct | str],
    publish: Callable[[PanoFrame], None],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on one socket per configured product until cancelled (R-UDS-1, R-UDS-3).

    Only the products both in `cfg.data_products` and in `products` are served.
    """
    served = {str(p) for p in products}
    async with anyio.create_task_group() as tg:
        for name in cfg.data_products:
            if name not in served:
                log.warning("Hashpipe ingest: %s is not a served data product; skipped", name)
                continue
            product = product_named(name)
            path = socket_path(cfg.socket_path_template, product)
            await tg.start(_listen, product, path, cfg.read_timeout_s, publish)
        task_status.started()
