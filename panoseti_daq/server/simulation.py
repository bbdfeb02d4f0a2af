"""The simulation's frame sources: archived data replayed as a live run (spec §9).

- filesystem (R-SIM-2): write growing PFF files in the real layout under the simulation
  data_dir, which the scanner then reads like a real run;
- rpc (R-SIM-3): frames handed, paced, to an uploader that sends them with UploadImages.

Sources: the bundled real NGC 7331 pulse-height data (ph256; ph1024 assembled from it) and the
synthetic movie-mode sequence of panoseti_daq.synthetic, or a user's own run directory of PFF
files (`simulate_daq_cfg.source_dir`). Frames keep their headers and pixels; only the module id
changes to the simulated one (R-SIM-4); the source loops (R-SIM-5).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.abc import TaskStatus

from .. import pff
from .._bundled import NGC7331_MODULE_ID, NGC7331_PH256
from ..config import SimulateConfig
from ..errors import PFFError, SourceError
from ..frames import PanoFrame
from ..products import DataProduct, product_named
from ..synthetic import ph1024_from_ph256, synthetic_movie_frames
from ..wire.hashpipe import hashpipe_frame, socket_path

log = logging.getLogger(__name__)

__all__ = [
    "KEPT_FILES",
    "MAX_SOURCE_FRAMES",
    "SIM_RUN_DIR",
    "read_source_frames",
    "remove_stale_simulation_dirs",
    "run_filesystem_simulation",
    "run_rpc_simulation",
    "simulated_frames",
    "source_frames",
]

SIM_RUN_DIR = "obs_SIMULATE"
# In each simulated run directory: "<pid> <token>" of the simulation that made it (R-SIM-7).
OWNER_FILE = ".panoseti_daq_owner"
# Frames read from one source product: the source loops, it need not be long.
MAX_SOURCE_FRAMES = 10_000
# The filesystem simulation keeps this many files per module and product and deletes older
# ones, so that an endless simulation does not fill the disk; the scanner reads the newest.
KEPT_FILES = 3
# When the writer falls this far behind its schedule it stops catching up.
_MAX_LAG_S = 1.0

Upload = Callable[[AsyncIterable[PanoFrame]], Awaitable[Any]]


def read_source_frames(
    path: Path, product: DataProduct, module_id: int, limit: int = MAX_SOURCE_FRAMES
) -> list[PanoFrame]:
    """Up to `limit` frames of one PFF file, reading no more of it than those frames.

    A corrupt frame ends the file early with a warning: what came before is still replayed.
    """
    frames: list[PanoFrame] = []
    try:
        frame_size = pff.frame_size_of(path, product)
        if frame_size is None:
            return frames
        with open(path, "rb") as f:
            data = f.read(frame_size * limit)
        offset = 0
        while len(frames) < limit:
            decoded = pff.decode_frame(data, product, offset, str(path))
            if decoded is None:
                break
            header, pixels, end = decoded
            if end - offset != frame_size:
                raise PFFError(path, offset, f"frame is {end - offset} bytes, not {frame_size}")
            frames.append(PanoFrame(product, header, pixels, module_id, path.name, len(frames)))
            offset = end
    except PFFError as exc:
        log.warning("simulation source: %s; using the %d frames before it", exc, len(frames))
    return frames


def _from_run_dir(run_dir: Path, name: str, real_module_id: int) -> list[PanoFrame]:
    """The frames of product `name` in a run directory, in seqno order.

    Files of `real_module_id` are preferred; without any, all modules' files are used.
    """
    product = product_named(name)
    files: list[tuple[int, str, int]] = []
    for path in run_dir.glob("*.pff"):
        parsed = pff.DataFileName.parse(path.name)
        if parsed is not None and parsed.dp == name:
            files.append((parsed.seqno, path.name, parsed.module or 0))
    if any(module == real_module_id for _, _, module in files):
        files = [f for f in files if f[2] == real_module_id]
    frames: list[PanoFrame] = []
    for _, file, module in sorted(files):
        frames.extend(read_source_frames(run_dir / file, product, module))
        if len(frames) >= MAX_SOURCE_FRAMES:
            break
    return frames[:MAX_SOURCE_FRAMES]


def source_frames(cfg: SimulateConfig) -> tuple[list[PanoFrame], list[PanoFrame]]:
    """(movie frames, pulse-height frames) the simulation replays, in their source modules.

    From cfg.source_dir when it holds frames of cfg.movie_type / cfg.ph_type; otherwise the
    synthetic movie sequence and the bundled NGC 7331 pulse-height data.
    """
    movie: list[PanoFrame] = []
    ph: list[PanoFrame] = []
    if cfg.source_dir is not None:
        movie = _from_run_dir(cfg.source_dir, cfg.movie_type, cfg.real_module_id)
        ph = _from_run_dir(cfg.source_dir, cfg.ph_type, cfg.real_module_id)
        log.info(
            "simulation source %s: %d %s, %d %s frames",
            cfg.source_dir,
            len(movie),
            cfg.movie_type,
            len(ph),
            cfg.ph_type,
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
        self.frames = _cycle(frames)
        self.module = module
        self.per_file = per_file
        self.start = _start_time()
        # Extra name fields of the source (`synthetic_sky` of the synthetic movie data) stay,
        # so that a reader can tell synthetic data from observations.
        source = pff.DataFileName.parse(frames[0].file)
        self.extra = source.extra if source is not None else ()
        self.seqno = -1
        self.in_file = per_file
        self.file: IO[bytes] | None = None
        self.path: Path | None = None  # of `file`

    def name(self, seqno: int) -> str:
        return pff.DataFileName(
            self.product.name,
            self.module,
            seqno,
            self.product.bytes_per_pixel,
            self.start,
            self.extra,
        ).format()

    def write_next(self) -> None:
        """Append the next source frame, rolling over to the next seqno when the file is full.

        SourceError, naming the file and the cause, when the file cannot be written or is no
        longer in its directory (removed by someone else): never write into an unlinked file.
        """
        try:
            if self.in_file >= self.per_file:
                self.close()
                self.seqno += 1
                self.in_file = 0
                self.path = self.run_dir / self.name(self.seqno)
                self.file = open(self.path, "ab")  # noqa: SIM115
                if self.seqno >= KEPT_FILES:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.run_dir / self.name(self.seqno - KEPT_FILES))
            assert self.file is not None
            if os.fstat(self.file.fileno()).st_nlink == 0:
                raise SourceError(f"simulated run file {self.path} was removed")
            frame = next(self.frames)
            self.file.write(
                pff.encode_frame(frame.header, frame.pixels, self.product, self.header_width)
            )
            # One frame reaches the file whole: a reader sees complete frames or a growing tail.
            self.file.flush()
        except OSError as exc:
            self.close_quietly()
            reason = exc.strerror or type(exc).__name__
            raise SourceError(
                f"cannot write the simulated run file {self.path}: {reason}"
            ) from None
        self.in_file += 1

    def close_quietly(self) -> None:
        """Close after a failed write: what could not be flushed is lost, not raised again."""
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _owner(run_dir: Path) -> tuple[int, str] | None:
    """(pid, token) of the simulation that made `run_dir`, or None when it names none."""
    try:
        pid, token = (run_dir / OWNER_FILE).read_text().split()
        return int(pid), token
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


_DEFAULT_DIR_NAME = re.compile(r"panoseti_daq_sim_(\d+)")


def remove_stale_simulation_dirs(directory: Path) -> list[Path]:
    """R-SRC-2: remove the default simulation directories (`panoseti_daq_sim_<pid>`, see
    config.default_sim_data_dir) under `directory` whose process no longer exists: what a
    server killed without clean-up left behind. Returns those removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        log.warning("cannot look for stale simulation directories in %s: %s", directory, exc)
        return removed
    for entry in entries:
        match = _DEFAULT_DIR_NAME.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            log.info("removed %s, left by the ended server process %d", entry.path, pid)
            removed.append(Path(entry.path))
    return removed


def _make_run_dir(data_dir: Path, module: int, token: str) -> Path:
    """The simulated run directory of `module`, made and marked as this simulation's.

    One left over from a simulation whose process has ended is replaced; one of a live process
    (another server sharing the data_dir) is a SourceError: a server removes only what it
    created, or what a simulation left behind (R-SIM-7).
    """
    run_dir = data_dir / f"module_{module}" / SIM_RUN_DIR
    if run_dir.exists():
        owner = _owner(run_dir)
        if owner is not None and owner[0] != os.getpid() and _alive(owner[0]):
            raise SourceError(
                f"{run_dir} is in use by the simulation of process {owner[0]} "
                "(give each server its own simulate_daq_cfg.data_dir)"
            )
        # Left over from a simulation that was killed (one without an owner file: of an
        # earlier version).
        log.info("replacing the simulated run %s left by an ended simulation", run_dir)
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True)
        (run_dir / OWNER_FILE).write_text(f"{os.getpid()} {token}\n")
        (run_dir / f"module_{module}.daq-active").touch()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SourceError(f"cannot make the simulated run {run_dir}: {reason}") from None
    return run_dir


def _remove_run_dirs(data_dir: Path, run_dirs: list[Path], token: str) -> None:
    """Remove the run directories this simulation made, and parents it leaves empty; a run
    directory that is gone, or that another simulation has made since, is left alone."""
    for run_dir in run_dirs:
        owner = _owner(run_dir)
        if owner is None or owner[1] != token:
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        # The module and data directories go too when the simulation was all they held.
        for parent in (run_dir.parent, data_dir):
            with contextlib.suppress(OSError):
                parent.rmdir()


async def run_filesystem_simulation(
    cfg: SimulateConfig, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Write a simulated run under cfg.data_dir until cancelled; remove it on exit (R-SIM-2).

    For each module of cfg.sim_module_ids: `module_<id>/obs_SIMULATE/` with a
    `module_<id>.daq-active` marker and one growing PFF file per product, cfg.frame_rate_hz
    frames per second each, a new seqno every cfg.frames_per_pff frames. After cfg.frame_limit
    frames (0: never) it stops writing but keeps the run until cancelled. `task_status.started()`
    is called once the first frame of every file exists.

    A run that vanishes or cannot be written raises SourceError naming the path and the cause
    (R-SIM-7); on exit it removes only the directories it made.
    """
    movie, ph = source_frames(cfg)
    token = secrets.token_hex(8)
    run_dirs: list[Path] = []
    writers: list[_ProductWriter] = []
    try:
        for module in cfg.sim_module_ids:
            run_dir = _make_run_dir(cfg.data_dir, module, token)
            run_dirs.append(run_dir)
            for frames in (movie, ph):
                writers.append(_ProductWriter(run_dir, frames, module, cfg.frames_per_pff))
        log.info(
            "filesystem simulation: modules %s under %s, %g frames/s",
            list(cfg.sim_module_ids),
            cfg.data_dir,
            cfg.frame_rate_hz,
        )
        interval = 1.0 / cfg.frame_rate_hz if cfg.frame_rate_hz > 0 else 0.0
        next_at = anyio.current_time()
        written = 0
        while cfg.frame_limit == 0 or written < cfg.frame_limit:
            for writer in writers:
                writer.write_next()
            written += 1
            if written == 1:
                task_status.started()
            if interval:
                next_at = max(next_at + interval, anyio.current_time() - _MAX_LAG_S)
                await anyio.sleep_until(next_at)
            else:
                await anyio.lowlevel.checkpoint()
        await anyio.sleep_forever()
    finally:
        for writer in writers:
            writer.close_quietly()
        _remove_run_dirs(cfg.data_dir, run_dirs, token)


async def simulated_frames(cfg: SimulateConfig) -> AsyncIterator[PanoFrame]:
    """The rpc simulation's frames, remapped to the simulated modules and paced (R-SIM-3).

    Per tick, one movie and one pulse-height frame for each simulated module; cfg.frame_rate_hz
    ticks per second (0: as fast as the consumer takes them); cfg.frame_limit ticks (0: endless).
    """
    sources = source_frames(cfg)
    # Per simulated module, its copy of each source (pixels and headers shared).
    per_module = [
        [_as_module(f, m) for f in frames] for m in cfg.sim_module_ids for frames in sources
    ]
    interval = 1.0 / cfg.frame_rate_hz if cfg.frame_rate_hz > 0 else 0.0
    next_at = anyio.current_time()
    tick = 0
    while cfg.frame_limit == 0 or tick < cfg.frame_limit:
        for frames in per_module:
            yield frames[tick % len(frames)]
        tick += 1
        if interval:
            next_at = max(next_at + interval, anyio.current_time() - _MAX_LAG_S)
            await anyio.sleep_until(next_at)


def _as_module(frame: PanoFrame, module: int) -> PanoFrame:
    """The frame as module `module` took it (R-SIM-4); its file name names that module too."""
    name = pff.DataFileName.parse(frame.file)
    file = frame.file if name is None else dataclasses.replace(name, module=module).format()
    return PanoFrame(frame.product, frame.header, frame.pixels, module, file, frame.frame_number)


async def run_rpc_simulation(
    cfg: SimulateConfig, upload: Upload, *, retry_delay_s: float = 1.0
) -> None:
    """Hand the simulated frames to `upload`, which sends them with UploadImages (R-SIM-3).

    `upload` is an async callable taking an async iterable of PanoFrames (the server's: one
    UploadImages call on a channel to itself). It returns when the iterable is exhausted (after
    cfg.frame_limit ticks; never when the limit is 0), and so does this function. An upload that
    fails is logged and started again, with the source from its beginning, after
    `retry_delay_s`; cancel to stop.
    """
    log.info(
        "rpc simulation: modules %s, %s frames/s",
        list(cfg.sim_module_ids),
        f"{cfg.frame_rate_hz:g}" if cfg.frame_rate_hz else "as many as accepted",
    )
    while True:
        try:
            await upload(simulated_frames(cfg))
            return
        except Exception as exc:  # whatever the uploader's transport raises
            log.warning("rpc simulation upload failed (%s); retrying in %g s", exc, retry_delay_s)
        await anyio.sleep(retry_delay_s)


async def run_uds_simulation(
    cfg: SimulateConfig,
    socket_template: str,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Send the simulated frames into Hashpipe's ingest sockets, as Hashpipe would (R-SIM-6).

    One connection per data product; each frame is a 2-byte big-endian module id and a PFF
    frame whose header is padded to one width, so that every frame of a connection has one size.
    """
    widths = {
        frames[0].product.name: max(len(pff.header_text(f.header)) for f in frames)
        for frames in source_frames(cfg)
    }
    streams: dict[str, Any] = {}
    try:
        for name in widths:
            streams[name] = await anyio.connect_unix(socket_path(socket_template, name))
        task_status.started()
        async for frame in simulated_frames(cfg):
            product = frame.product
            data = pff.encode_frame(frame.header, frame.pixels, product, widths[product.name])
            await streams[product.name].send(hashpipe_frame(frame.module_id, data))
        await anyio.sleep_forever()
    finally:
        for stream in streams.values():
            await stream.aclose()
