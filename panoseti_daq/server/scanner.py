"""The hp_io filesystem scanner: the newest complete frame of every module and product (spec §8).

`RunScanner.scan()` takes one snapshot of `data_dir/module_<id>/<newest run dir>/*.pff` and
returns the frames that are new since the last snapshot; it costs a directory listing, a stat
per data file and one small read per new frame (R-SCAN-3), and never raises for what it finds on
disk (R-SCAN-4). `run_scanner` repeats it every interval in a worker thread and publishes the
frames.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio

from .. import pff
from ..errors import PFFError
from ..frames import PanoFrame
from ..products import DataProduct

log = logging.getLogger(__name__)

__all__ = ["RunScanner", "daq_is_active", "run_scanner"]

RECENT_WRITE_S = 10.0


@dataclass
class _FileState:
    """What the scanner remembers of one data file."""

    frame_size: int | None = None
    inode: int = -1
    last_index: int = -1
    corrupt_logged: bool = False


def _entries(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def _newest_run_dir(module_dir: Path) -> Path | None:
    """The run directory with the newest mtime (R-NAME-1); any directory counts."""
    newest: tuple[float, str] | None = None
    for entry in _entries(module_dir):
        try:
            if entry.is_dir():
                key = (entry.stat().st_mtime, entry.name)
                if newest is None or key > newest:
                    newest = key
        except FileNotFoundError:
            continue
    return None if newest is None else module_dir / newest[1]


class RunScanner:
    """Snapshots of a run directory tree; remembers what it has already published."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        module_ids: Collection[int],
        products: Iterable[DataProduct],
    ) -> None:
        self.data_dir = Path(data_dir)
        self.module_ids = frozenset(module_ids)
        self.products = {p.name: p for p in products}
        self._files: dict[Path, _FileState] = {}
        # (module, product) -> (file, index) last published: never publish an older frame.
        self._published: dict[tuple[int, str], tuple[str, int]] = {}

    def modules(self) -> dict[int, Path]:
        """module id -> module directory, for the modules this scanner follows (R-SCAN-1)."""
        found = {}
        for entry in _entries(self.data_dir):
            module = pff.module_dir_id(entry.name)
            if module is None or (self.module_ids and module not in self.module_ids):
                continue
            found[module] = Path(entry.path)
        return found

    def scan(self) -> list[PanoFrame]:
        """One snapshot: the frames that are new since the last one (R-SCAN-2)."""
        frames: list[PanoFrame] = []
        seen: set[Path] = set()
        for module, module_dir in sorted(self.modules().items()):
            run_dir = _newest_run_dir(module_dir)
            if run_dir is None:
                continue
            for name, path in self._newest_files(run_dir).items():
                seen.add(path)
                frame = self._newest_frame(module, self.products[name], path)
                if frame is not None:
                    frames.append(frame)
        for path in list(self._files):
            if path not in seen:
                del self._files[path]
        return frames

    def _newest_files(self, run_dir: Path) -> dict[str, Path]:
        """product name -> the file with the highest seqno (R-NAME-2, R-SCAN-5)."""
        newest: dict[str, tuple[int, Path]] = {}
        for entry in _entries(run_dir):
            name = pff.DataFileName.parse(entry.name)
            if name is None or name.dp not in self.products:
                continue
            best = newest.get(name.dp)
            if best is None or name.seqno > best[0]:
                newest[name.dp] = (name.seqno, Path(entry.path))
        return {dp: path for dp, (_, path) in newest.items()}

    def _newest_frame(self, module: int, product: DataProduct, path: Path) -> PanoFrame | None:
        state = self._files.get(path)
        try:
            stat = path.stat()
            if state is None or stat.st_ino != state.inode:
                # A file not seen before, or a new file under an old name.
                state = self._files[path] = _FileState(inode=stat.st_ino)
            if state.frame_size is None:
                state.frame_size = pff.frame_size_of(path, product)
                if state.frame_size is None:
                    return None
            count = pff.frame_count(stat.st_size, state.frame_size)
            if count == 0:
                return None
            index = count - 1
            if index < state.last_index:
                # Truncated: that frame was seen before; frames appended later are new.
                state.last_index = index
                return None
            if index == state.last_index or self._published.get((module, product.name)) == (
                path.name,
                index,
            ):
                return None
            header, pixels = pff.read_frame(path, product, index, state.frame_size)
        except FileNotFoundError:
            self._files.pop(path, None)
            return None
        except (PFFError, OSError, ValueError) as exc:
            if not state.corrupt_logged:
                log.warning("skipping corrupt frame in %s: %s", path, exc)
                state.corrupt_logged = True
            # Re-measure the frame size next time: the file may have been replaced.
            state.frame_size = None
            return None
        state.last_index = index
        self._published[(module, product.name)] = (path.name, index)
        return PanoFrame(product, header, pixels, module, path.name, index)


async def run_scanner(
    scanner: RunScanner,
    interval_s: float,
    publish: Callable[[PanoFrame], None],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Scan every `interval_s` seconds and publish new frames; runs until cancelled."""
    started = False
    next_at = anyio.current_time()
    while True:
        try:
            frames = await anyio.to_thread.run_sync(scanner.scan)
        except Exception:  # R-SCAN-4: the scanner never dies from data it finds
            log.exception("scan of %s failed; retrying", scanner.data_dir)
            frames = []
        for frame in frames:
            publish(frame)
        if not started:
            task_status.started()
            started = True
        next_at = max(next_at + interval_s, anyio.current_time())
        await anyio.sleep_until(next_at)


_HASHPIPE = re.compile(rb"hashpipe")


def _hashpipe_running() -> bool:
    for entry in _entries(Path("/proc")):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm", "rb") as f:
                if _HASHPIPE.search(f.read()):
                    return True
        except OSError:
            continue
    return False


def _marker_exists(data_dir: Path) -> bool:
    for module_dir in _entries(data_dir):
        if pff.module_dir_id(module_dir.name) is None:
            continue
        for run_dir in _entries(Path(module_dir.path)):
            for entry in _entries(Path(run_dir.path)) if run_dir.is_dir() else []:
                if entry.name.endswith(".daq-active"):
                    return True
    return False


def _recent_write(data_dir: Path, now: float) -> bool:
    for module_dir in _entries(data_dir):
        if pff.module_dir_id(module_dir.name) is None:
            continue
        for run_dir in _entries(Path(module_dir.path)):
            for entry in _entries(Path(run_dir.path)) if run_dir.is_dir() else []:
                if pff.DataFileName.parse(entry.name) is None:
                    continue
                try:
                    if now - entry.stat().st_mtime <= RECENT_WRITE_S:
                        return True
                except FileNotFoundError:
                    continue
    return False


def daq_is_active(
    data_dir: str | os.PathLike[str], checks: Collection[str], now: float | None = None
) -> bool:
    """Whether a DAQ is writing under data_dir (R-INIT-4), by the checks the config names."""
    now = time.time() if now is None else now
    path = Path(data_dir)
    return (
        ("marker" in checks and _marker_exists(path))
        or ("recent_write" in checks and _recent_write(path, now))
        or ("process" in checks and _hashpipe_running())
    )
