"""`python -m panoseti_daq.replay`: replay PFF files into Hashpipe's ingest sockets.

Sends each frame as newer Hashpipe does: a 2-byte big-endian module id, then the PFF frame, on
the Unix stream socket of the frame's data product (`--socket-template`, with {dp_name}).

    python -m panoseti_daq.replay --rate 100 --loop FILES...
    python -m panoseti_daq.replay --module-id 254 panoseti_daq/data/*.pff

The product of each file comes from its name (dp_...) or --product; the module id from the name
(module_...) or --module-id.
"""

# The --help text is this docstring: rule IDs (R-SIM-6, R-UDS-1) stay in the comments.

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from . import pff
from .config import UdsIngestConfig
from .products import DataProduct, product_named
from .wire.hashpipe import module_id_prefix, socket_path

log = logging.getLogger(__name__)

__all__ = ["replay", "replay_frames"]


def replay_frames(
    path: Path, product: DataProduct | None = None, module_id: int | None = None
) -> tuple[DataProduct, list[bytes]]:
    """The product of a PFF file and its frames in the ingest's framing; ValueError naming
    the file for one that is missing or cannot be replayed."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    name = pff.DataFileName.parse(path.name)
    if product is None:
        if name is None:
            raise ValueError(f"{path.name}: no dp_ field in the name; give --product")
        product = name.product
    if module_id is None:
        if name is None or name.module is None:
            raise ValueError(f"{path.name}: no module_ field in the name; give --module-id")
        module_id = name.module
    try:
        prefix = module_id_prefix(module_id)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    size = pff.frame_size_of(path, product)
    if size is None:
        return product, []
    data = path.read_bytes()
    # The frames exactly as the file holds them (all of one size, R-PFF-2), checked first.
    count = sum(1 for _ in pff.iter_frames(path, product))
    return product, [prefix + data[i * size : (i + 1) * size] for i in range(count)]


async def replay(
    paths: Sequence[Path],
    socket_template: str = UdsIngestConfig().socket_path_template,
    rate_hz: float = 0.0,
    loop: bool = False,
    product: DataProduct | None = None,
    module_id: int | None = None,
) -> int:
    """Send every frame of `paths` to the sockets of their products; returns frames sent.

    One connection per file, all files at once; `rate_hz` frames per second per file (0: as
    fast as the server reads). With `loop`, start again at the first frame, until cancelled.
    """
    sent = 0
    prepared = [(path, *replay_frames(path, product, module_id)) for path in paths]

    async def send_file(path: Path, file_product: DataProduct, frames: list[bytes]) -> None:
        nonlocal sent
        target = socket_path(socket_template, file_product)
        interval = 1.0 / rate_hz if rate_hz > 0 else 0.0
        try:
            stream = await anyio.connect_unix(target)
        except OSError as exc:
            raise OSError(
                f"{path}: cannot connect to {target} ({exc.strerror or exc}): is a server "
                f"running with acquisition_methods.uds enabled for {file_product.name}?"
            ) from None
        count = 0
        try:
            async with stream:
                next_at = anyio.current_time()
                while True:
                    for frame in frames:
                        await stream.send(frame)
                        sent += 1
                        count += 1
                        if interval:
                            next_at += interval
                            await anyio.sleep_until(next_at)
                    if not loop:
                        return
        except (anyio.BrokenResourceError, OSError) as exc:
            raise OSError(f"{path}: {target} closed after {count} frames ({exc})") from None
        finally:
            log.info("%s: %d frames sent to %s", path, count, target)

    async with anyio.create_task_group() as tg:
        for path, file_product, frames in prepared:
            tg.start_soon(send_file, path, file_product, frames)
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m panoseti_daq.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--socket-template", default=UdsIngestConfig().socket_path_template)
    parser.add_argument("--rate", type=float, default=0.0, help="frames/s per file (0: max)")
    parser.add_argument("--loop", action="store_true", help="replay again and again")
    parser.add_argument("--product", help="data product of every file (default: from names)")
    parser.add_argument("--module-id", type=int, help="module id (default: from names)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        product = product_named(args.product) if args.product else None
        sent = anyio.run(
            replay, args.files, args.socket_template, args.rate, args.loop, product, args.module_id
        )
    except Exception as exc:  # task groups wrap what their tasks raise
        cause = exc
        while getattr(cause, "exceptions", None):
            cause = cause.exceptions[0]  # type: ignore[attr-defined]
        if not isinstance(cause, (ValueError, OSError)):
            raise
        print(f"replay: {cause}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"replayed {sent} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
