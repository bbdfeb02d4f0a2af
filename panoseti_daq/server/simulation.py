"""The simulation's frame sources: archived data replayed as a live run (spec §9).

- filesystem (R-SIM-2): write growing PFF files in the real layout under the simulation
  data_dir, which the scanner then reads like a real run;
- rpc (R-SIM-3): an internal grpclib client uploads the frames with UploadImages.

Sources: the bundled real NGC 7331 pulse-height data (ph256; ph1024 assembled from it) and the
synthetic movie-mode sequence of panoseti_daq.synthetic, or a user's own run directory of PFF
files (`simulate_daq_cfg.source_dir`). Frames keep their headers and pixels; only the module id
changes to the simulated one (R-SIM-4); the source loops (R-SIM-5).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import anyio
from anyio.abc import TaskStatus

from .. import pff
from .._bundled import NGC7331_MODULE_ID, NGC7331_PH256
from ..config import SimulateConfig
from ..frames import PanoFrame
from ..products import DataProduct, product_named
from ..synthetic import ph1024_from_ph256, synthetic_movie_frames

log = logging.getLogger(__name__)

__all__ = [
    "SIM_RUN_DIR",
    "read_source_frames",
    "run_filesystem_simulation",
    "run_rpc_simulation",
    "source_frames",
]

SIM_RUN_DIR = "obs_SIMULATE"


def read_source_frames(path: Path, product: DataProduct, module_id: int) -> list[PanoFrame]:
    """Every frame of one PFF file as PanoFrames."""
    return [
        PanoFrame(product, header, pixels, module_id, path.name, number)
        for number, (header, pixels) in enumerate(pff.iter_frames(path, product))
    ]


def _from_run_dir(run_dir: Path, name: str) -> list[PanoFrame]:
    product = product_named(name)
    files = []
    for path in run_dir.glob("*.pff"):
        parsed = pff.DataFileName.parse(path.name)
        if parsed is not None and parsed.dp == name:
            files.append((parsed.seqno, path, parsed.module or 0))
    frames: list[PanoFrame] = []
    for _, path, module in sorted(files):
        frames.extend(read_source_frames(path, product, module))
    return frames


def source_frames(cfg: SimulateConfig) -> tuple[list[PanoFrame], list[PanoFrame]]:
    """(movie frames, pulse-height frames) the simulation replays."""
    movie: list[PanoFrame] = []
    ph: list[PanoFrame] = []
    if cfg.source_dir is not None:
        movie = _from_run_dir(cfg.source_dir, cfg.movie_type)
        ph = _from_run_dir(cfg.source_dir, cfg.ph_type)
        log.info(
            "simulation source %s: %d movie, %d pulse-height frames",
            cfg.source_dir,
            len(movie),
            len(ph),
        )
    if not movie:
        movie = synthetic_movie_frames(cfg.movie_type, module_id=cfg.real_module_id)
    if not ph:
        ph256 = read_source_frames(NGC7331_PH256, product_named("ph256"), NGC7331_MODULE_ID)
        ph = ph256 if cfg.ph_type == "ph256" else ph1024_from_ph256(ph256)
    return movie, ph


def _cycle(frames: list[PanoFrame]) -> Iterator[PanoFrame]:
    while True:
        yield from frames


def _start_time() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H_%M_%SZ")


class _ProductWriter:
    """Appends one product's frames for one module, starting a new seqno every N frames."""

    def __init__(self, run_dir: Path, frames: list[PanoFrame], module: int, per_file: int) -> None:
        self.run_dir = run_dir
        self.product = frames[0].product
        # One header width for all frames, so that every frame has the same size (R-PFF-2).
        self.header_width = max(len(pff.header_text(f.header)) for f in frames)
        self.module = module
        self.per_file = per_file
        self.start = _start_time()
        self.seqno = -1
        self.in_file = per_file
        self.file: IO[bytes] | None = None

    def write(self, frame: PanoFrame) -> None:
        if self.in_file >= self.per_file:
            self.close()
            self.seqno += 1
            self.in_file = 0
            name = pff.DataFileName(
                self.product.name, self.module, self.seqno, self.product.bytes_per_pixel, self.start
            )
            self.file = open(self.run_dir / name.format(), "ab", buffering=0)  # noqa: SIM115
        assert self.file is not None
        self.file.write(
            pff.encode_frame(frame.header, frame.pixels, self.product, self.header_width)
        )
        self.in_file += 1

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


async def run_filesystem_simulation(
    cfg: SimulateConfig, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Write a simulated run under cfg.data_dir until cancelled; remove it on exit (R-SIM-2)."""
    movie, ph = source_frames(cfg)
    run_dirs: list[Path] = []
    writers: list[tuple[_ProductWriter, Iterator[PanoFrame]]] = []
    try:
        for module in cfg.sim_module_ids:
            run_dir = cfg.data_dir / f"module_{module}" / SIM_RUN_DIR
            if run_dir.exists():
                shutil.rmtree(run_dir)  # left over from a run that was killed
            run_dir.mkdir(parents=True)
            run_dirs.append(run_dir)
            (run_dir / f"module_{module}.daq-active").touch()
            for frames in (movie, ph):
                writer = _ProductWriter(run_dir, frames, module, cfg.frames_per_pff)
                writers.append((writer, _cycle(frames)))
        interval = 1.0 / cfg.frame_rate_hz if cfg.frame_rate_hz > 0 else 0.0
        next_at = anyio.current_time()
        written = 0
        while cfg.frame_limit == 0 or written < cfg.frame_limit:
            for writer, frames in writers:
                writer.write(next(frames))
            written += 1
            if written == 1:
                task_status.started()
            next_at += interval
            await anyio.sleep_until(next_at) if interval else await anyio.lowlevel.checkpoint()
        await anyio.sleep_forever()
    finally:
        for writer, _ in writers:
            writer.close()
        for run_dir in run_dirs:
            shutil.rmtree(run_dir, ignore_errors=True)
            # The module and data directories go too when the simulation was all they held.
            for parent in (run_dir.parent, cfg.data_dir):
                with contextlib.suppress(OSError):
                    parent.rmdir()


async def simulated_frames(cfg: SimulateConfig) -> AsyncIterator[PanoFrame]:
    """The rpc simulation's frames, remapped to the simulated modules and paced (R-SIM-3)."""
    movie, ph = source_frames(cfg)
    interval = 1.0 / cfg.frame_rate_hz if cfg.frame_rate_hz > 0 else 0.0
    next_at = anyio.current_time()
    index = 0
    while cfg.frame_limit == 0 or index < cfg.frame_limit:
        for module in cfg.sim_module_ids:
            yield movie[index % len(movie)].with_module(module)
            yield ph[index % len(ph)].with_module(module)
        index += 1
        if interval:
            next_at += interval
            await anyio.sleep_until(next_at)


async def run_rpc_simulation(cfg: SimulateConfig, channel_factory) -> None:
    """Upload the simulated frames through UploadImages on a channel to this server."""
    from grpclib.const import Cardinality

    from ..codec import UploadItem
    from ..messages import Empty

    channel = channel_factory()
    try:
        async with channel.request(
            "/daqdata.DaqData/UploadImages", Cardinality.STREAM_UNARY, UploadItem, Empty
        ) as stream:
            async for frame in simulated_frames(cfg):
                await stream.send_message(UploadItem(frame))
            await stream.end()
            await stream.recv_message()
    finally:
        channel.close()
