"""Hashpipe's Unix-socket ingest: frames handed over a stream socket per data product (§12).

Newer Hashpipe versions connect to one Unix stream socket per data product and send, per frame,
a module id and a PFF frame (R-UDS-2; the framing is `panoseti_daq.wire.hashpipe`). Frames
enter the hub like uploads. `run_uds_ingest` runs one listener per product in the server's task
group (R-UDS-1, R-UDS-3).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable

import anyio
from anyio.abc import SocketStream, TaskStatus

from ..config import UdsIngestConfig
from ..errors import PFFError
from ..frames import PanoFrame
from ..products import DataProduct, product_named
from ..wire.hashpipe import UdsFrameDecoder, socket_path
from .sockets import prepare_socket_path

log = logging.getLogger(__name__)

__all__ = ["run_uds_ingest"]

READ_SIZE = 65536


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
