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
from ..products import DataProduct, product_named
from .inotify import Inotify

log = logging.getLogger(__name__)

__all__ = ["RunScanner", "daq_is_active", "run_scanner"]

RECENT_WRITE_S = 10.0


@dataclass
class _FileState:
    """What the scanner remembers of one data file: enough to read only new frames."""

    inode: int
    size: int = 0
    frame_size: int | None = None
    last_index: int = -1
    # Set when the first header is corrupt: nothing in the file is readable until it shrinks.
    unreadable: bool = False
    logged: bool = False


def _entries(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


# A directory's mtime changes when entries are added, removed or renamed, not when files grow.
# File system timestamps are coarse (a clock tick), so a listing is trusted only once its
# directory's mtime is older than this.
LISTING_SETTLE_NS = 200_000_000
# How often each module's choice of run directory is made again (new runs are rare).
RUN_DIR_RECHECK_S = 1.0


@dataclass(frozen=True)
class _Listing:
    """The entry names of a directory from one read of it.

    `read` numbers the reads (a new read, a new number; 0: the directory does not exist), so
    what is derived from a listing is valid as long as the directory's listing has the same
    `read`: the scanner's caches keep the number they were computed from.
    """

    names: tuple[str, ...]
    read: int


_MISSING = _Listing((), 0)


class _Listings:
    """Directory listings, re-read only when they may have changed (R-SCAN-3).

    With inotify, a watched directory's listing stands until an event says its entries changed.
    Without (or where a watch cannot be added), a listing is re-read when the directory's mtime
    changes.
    """

    def __init__(self, inotify: Inotify | None = None) -> None:
        self._inotify = inotify
        self._reads = 0
        # Polled directories: (mtime_ns, listing) of those whose mtime had settled.
        self._cache: dict[Path, tuple[int, _Listing]] = {}
        # Watched directories whose entries have not changed since they were listed.
        self._clean: dict[Path, _Listing] = {}

    def _read(self, path: Path) -> _Listing | None:
        try:
            names = tuple(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None
        self._reads += 1
        return _Listing(names, self._reads)

    def names(self, path: Path) -> _Listing:
        """The entries of a directory (`_MISSING` when it does not exist)."""
        clean = self._clean.get(path)
        if clean is not None:
            return clean
        if self._inotify is not None and self._inotify.watch(str(path)):
            # Watched first, listed second: a change after the listing is an event.
            listing = self._read(path)
            if listing is None:
                self._inotify.unwatch(str(path))
                return _MISSING
            self._clean[path] = listing
            return listing
        try:
            mtime_ns = os.stat(path).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            self._cache.pop(path, None)
            return _MISSING
        cached = self._cache.get(path)
        if cached is not None and cached[0] == mtime_ns:
            return cached[1]
        listing = self._read(path)
        if listing is None:
            return _MISSING
        if time.time_ns() - mtime_ns > LISTING_SETTLE_NS:
            self._cache[path] = (mtime_ns, listing)
        return listing

    def is_watched(self, path: Path) -> bool:
        """Whether every change to the directory's entries and files is reported by inotify."""
        return path in self._clean

    def changed(self, directories: Iterable[str]) -> None:
        """inotify reported that these directories' entries changed."""
        for directory in directories:
            self._clean.pop(Path(directory), None)

    def reset(self) -> None:
        """Events were lost: list every directory again."""
        self._clean.clear()

    def forget(self, keep: set[Path]) -> None:
        for path in self._cache.keys() - keep:
            del self._cache[path]
        for path in self._clean.keys() - keep:
            del self._clean[path]
            if self._inotify is not None:
                self._inotify.unwatch(str(path))


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
    """Snapshots of a run directory tree; remembers what it has already published.

    `module_ids` empty follows every module found (R-INIT-9); files of products outside
    `products` are ignored (R-SCAN-5). Not thread-safe: one scan (or `quiet`) at a time.

    With `watch` (the default) and Linux inotify, directories are watched and only what changed
    is looked at: a scan costs a `stat` per changed file and one small read per new frame, and
    `quiet()` tells without touching the file system that a scan would find nothing new. Every
    RUN_DIR_RECHECK_S the whole tree is looked at anyway (a run directory that is not watched
    may have become the newest). Without inotify, every scan polls: a `stat` per directory and
    per data file.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        module_ids: Collection[int],
        products: Iterable[DataProduct | str],
        *,
        watch: bool = True,
        allowed_roots: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        """`allowed_roots`, if given, are the only places directories may be read from: a
        module or run directory (a link) that resolves outside all of them is skipped with one
        log line (R-INIT-12)."""
        self.data_dir = Path(data_dir)
        self.allowed_roots = tuple(Path(root).resolve() for root in allowed_roots)
        self._outside_roots: set[Path] = set()
        self._data_dir_missing = False
        self.module_ids = frozenset(module_ids)
        self.products = {
            p.name: p for p in (product_named(p) if isinstance(p, str) else p for p in products)
        }
        self._files: dict[Path, _FileState] = {}
        # Per module, the run directory followed; per (module, product), the seqno of the file
        # last published from it. A file with a lower seqno in the same run holds older frames
        # (the newer file was deleted): never publish from it again.
        self._run_dirs: dict[int, Path] = {}
        # Per module, when its run directory was chosen and from which read of its listing.
        self._run_dir_checked: dict[int, tuple[float, int]] = {}
        self._published_seqno: dict[tuple[int, str], int] = {}
        self._inotify = Inotify.open() if watch else None
        self._listings = _Listings(self._inotify)
        # Files inotify reported as changed since the last scan; every file after lost events.
        self._dirty: set[str] = set()
        self._all_dirty = True
        # Whether the last scan relied on polling somewhere, and when the next full look is due.
        self._polled = True
        self._next_full_scan = 0.0
        # Names of the module directories with changes since the last scan (inotify only).
        self._touched: set[str] = set()
        # Results derived from a directory listing, with the `_Listing.read` they came from.
        self._modules_cache: tuple[int, dict[int, Path]] = (-1, {})
        self._names: dict[str, pff.DataFileName | None] = {}
        # run dir -> (listing read, product -> (seqno, newest file))
        self._newest_cache: dict[Path, tuple[int, dict[str, tuple[int, Path]]]] = {}

    @property
    def watching(self) -> bool:
        """Whether inotify is in use (see the class docstring)."""
        return self._inotify is not None

    def close(self) -> None:
        """Release the inotify instance; the scanner polls from now on."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
            self._listings = _Listings()
            self._all_dirty = self._polled = True

    def quiet(self) -> bool:
        """True when a scan now would find nothing new, by inotify alone; cheap (one read).

        False whenever it cannot tell: no inotify, a directory followed by polling, events
        pending, or a full look due.
        """
        if self._inotify is None:
            return False
        self._take_events()
        return not (
            self._dirty
            or self._all_dirty
            or self._polled
            or time.monotonic() >= self._next_full_scan
        )

    def _take_events(self) -> None:
        if self._inotify is None:
            return
        changes = self._inotify.read()
        if changes.overflow:
            log.info("inotify queue overflowed: looking at every directory and file again")
            self._listings.reset()
            self._all_dirty = True
        self._listings.changed(changes.directories)
        self._dirty |= changes.files
        # The module directories these changes are in; a change to data_dir's own entries
        # (modules added or removed) means a look at every module.
        top = str(self.data_dir)
        prefix = top + os.sep
        for path in (*changes.directories, *changes.files):
            if path.startswith(prefix):
                self._touched.add(path[len(prefix) :].split(os.sep, 1)[0])
            elif path == top:
                self._all_dirty = True

    def modules(self) -> dict[int, Path]:
        """module id -> module directory, for the modules this scanner follows (R-SCAN-1)."""
        listing = self._listings.names(self.data_dir)
        if (listing.read == 0) != self._data_dir_missing:  # R-SRC-1: logged once each way
            self._data_dir_missing = listing.read == 0
            if self._data_dir_missing:
                log.warning("data_dir %s has vanished: looking for it at every scan", self.data_dir)
            else:
                log.info("data_dir %s is back", self.data_dir)
        read, cached = self._modules_cache
        if listing.read == read:
            return cached
        found = {}
        for name in listing.names:
            module = pff.module_dir_id(name)
            if module is None or (self.module_ids and module not in self.module_ids):
                continue
            module_dir = self.data_dir / name
            if self._allowed(module_dir):
                found[module] = module_dir
        self._modules_cache = (listing.read, found)
        return found

    def _allowed(self, directory: Path) -> bool:
        """R-INIT-12: whether `directory`, resolved, is inside an allowed root (always, with
        none given); logs a directory outside them once."""
        if not self.allowed_roots:
            return True
        try:
            resolved = directory.resolve()
        except (OSError, RuntimeError):
            return False  # a loop of links or a vanished directory: nothing to read
        if any(resolved == root or root in resolved.parents for root in self.allowed_roots):
            return True
        if directory not in self._outside_roots:
            self._outside_roots.add(directory)
            log.warning(
                "skipping %s: it leads to %s, outside the allowed data roots", directory, resolved
            )
        return False

    def _run_dir(self, module: int, module_dir: Path, now: float) -> Path | None:
        """The module's newest run directory (R-NAME-1).

        Chosen again when the module directory's entries change (a new run appears), and at
        least every RUN_DIR_RECHECK_S; otherwise the last choice stands.
        """
        listing = self._listings.names(module_dir)
        run_dir = self._run_dirs.get(module)
        checked = self._run_dir_checked.get(module)
        if (
            run_dir is not None
            and checked is not None
            and checked[1] == listing.read
            and now - checked[0] < RUN_DIR_RECHECK_S
        ):
            return run_dir
        self._run_dir_checked[module] = (now, listing.read)
        newest = _newest_run_dir(module_dir)
        return newest if newest is None or self._allowed(newest) else None

    def scan(self) -> list[PanoFrame]:
        """One snapshot: the newest complete frame of each (module, product), if new (R-SCAN-2).

        Never raises for what it finds on disk (R-SCAN-4).
        """
        frames: list[PanoFrame] = []
        seen: set[Path] = set()
        self._take_events()
        modules = self.modules()
        now = time.monotonic()
        if now >= self._next_full_scan:
            self._next_full_scan = now + RUN_DIR_RECHECK_S
            self._all_dirty = True
        # A full look at every module, or (inotify) at the modules something happened in.
        full = self._all_dirty or self._polled or self._inotify is None
        touched = self._touched
        for module in self._run_dirs.keys() - modules.keys():
            self._new_run(module, None)
        followed = {self.data_dir}
        for module, module_dir in sorted(modules.items()):
            if not full and module_dir.name not in touched:
                continue
            followed.add(module_dir)
            run_dir = self._run_dir(module, module_dir, now)
            if run_dir != self._run_dirs.get(module):
                self._new_run(module, run_dir)
            if run_dir is None:
                continue
            followed.add(run_dir)
            for name, (seqno, path) in self._newest_files(run_dir).items():
                seen.add(path)
                if seqno < self._published_seqno.get((module, name), -1):
                    continue
                frame = self._newest_frame(module, self.products[name], path)
                if frame is not None:
                    self._published_seqno[(module, name)] = seqno
                    frames.append(frame)
        watched = all(self._listings.is_watched(path) for path in followed)
        if full:
            # Files that are gone, or no longer the newest of their product: forget them.
            for path in self._files.keys() - seen:
                del self._files[path]
            self._listings.forget(followed)
            for run_dir in self._newest_cache.keys() - set(self._run_dirs.values()):
                del self._newest_cache[run_dir]
        # A directory followed by polling (no watch possible): full looks until it is watched.
        self._polled = not watched
        self._dirty.clear()
        self._touched = set()
        self._all_dirty = False
        return frames

    def _new_run(self, module: int, run_dir: Path | None) -> None:
        """Module `module` follows another run directory (or none): its history resets."""
        if run_dir is None:
            self._run_dirs.pop(module, None)
            self._run_dir_checked.pop(module, None)
        else:
            self._run_dirs[module] = run_dir
        for name in self.products:
            self._published_seqno.pop((module, name), None)

    def _newest_files(self, run_dir: Path) -> dict[str, tuple[int, Path]]:
        """product name -> (seqno, path) of its file with the highest seqno (R-NAME-2, -3)."""
        listing = self._listings.names(run_dir)
        cached = self._newest_cache.get(run_dir)
        if cached is not None and cached[0] == listing.read:
            return cached[1]
        newest: dict[str, tuple[int, str]] = {}
        for file_name in listing.names:
            name = self._parse(file_name)
            if name is None or name.dp not in self.products:
                continue
            key = (name.seqno, file_name)
            if key > newest.get(name.dp, (-1, "")):
                newest[name.dp] = key
        result = {dp: (seqno, run_dir / file) for dp, (seqno, file) in sorted(newest.items())}
        self._newest_cache[run_dir] = (listing.read, result)
        return result

    def _parse(self, file_name: str) -> pff.DataFileName | None:
        try:
            return self._names[file_name]
        except KeyError:
            name = self._names[file_name] = pff.DataFileName.parse(file_name)
            if len(self._names) > 100_000:
                self._names.clear()
            return name

    def _newest_frame(self, module: int, product: DataProduct, path: Path) -> PanoFrame | None:
        """The file's newest complete frame if not published yet (R-PFF-3): one stat, one read.

        Nothing at all for a file that inotify watches and reported no change for.
        """
        if (
            not self._all_dirty
            and path in self._files
            and str(path) not in self._dirty
            and self._listings.is_watched(path.parent)
        ):
            return None
        try:
            stat = path.stat()
        except OSError:
            self._files.pop(path, None)
            return None
        state = self._files.get(path)
        if state is None or stat.st_ino != state.inode:
            state = self._files[path] = _FileState(inode=stat.st_ino)
        elif stat.st_size < state.size:
            # Truncated, or replaced by a file that got the same inode: what it holds now is
            # another file's frames, maybe of another size. Start again (R-SCAN-4).
            log.info("%s shrank from %d to %d bytes", path, state.size, stat.st_size)
            state = self._files[path] = _FileState(inode=stat.st_ino)
        state.size = stat.st_size
        if state.unreadable:
            return None
        index = -1
        try:
            if state.frame_size is None:
                state.frame_size = pff.frame_size_of(path, product)
                if state.frame_size is None:
                    return None  # the first header is still being written
            index = pff.frame_count(stat.st_size, state.frame_size) - 1
            if index <= state.last_index:
                return None
            header, pixels = pff.read_frame(path, product, index, state.frame_size)
        except FileNotFoundError:
            self._files.pop(path, None)
            return None
        except (PFFError, OSError, ValueError) as exc:
            if state.frame_size is None:
                state.unreadable = True
            else:
                # Skip this frame; measure the frame size again in case the file was rewritten.
                state.last_index = index
                state.frame_size = None
            if not state.logged:
                state.logged = True
                log.warning("skipping corrupt data in %s: %s", path, exc)
            return None
        state.last_index = index
        return PanoFrame(product, header, pixels, module, path.name, index)


async def run_scanner(
    scanner: RunScanner,
    interval_s: float,
    publish: Callable[[PanoFrame], None],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Scan every `interval_s` seconds and publish new frames; runs until cancelled.

    A scan runs in a worker thread (the file system may be slow), unless inotify says it would
    find nothing. The scanner is closed at the end.
    """
    started = False
    next_at = anyio.current_time()
    try:
        while True:
            try:
                quiet = started and scanner.quiet()
                frames = [] if quiet else await anyio.to_thread.run_sync(scanner.scan)
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
    finally:
        scanner.close()


_HASHPIPE = re.compile(rb"hashpipe")
_MARKER = re.compile(r"module_\d+\.daq-active")


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
                if _MARKER.fullmatch(entry.name):
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
    """Whether a DAQ is writing under data_dir (R-INIT-4), by the checks the config names.

    Checks: "process" (a hashpipe process runs), "marker" (a `module_<id>.daq-active` file in a
    run directory), "recent_write" (a data file changed in the last 10 s before `now`, Unix
    seconds, default the current time). No checks at all: the DAQ counts as active.
    """
    if not checks:
        return True
    now = time.time() if now is None else now
    path = Path(data_dir)
    return (
        ("marker" in checks and _marker_exists(path))
        or ("recent_write" in checks and _recent_write(path, now))
        or ("process" in checks and _hashpipe_running())
    )
