"""Linux inotify, through ctypes: which directories and files changed since the last look.

The scanner uses it to skip what has not changed (R-SCAN-3): without it, following 64 modules
at a 10 ms interval costs a `stat` of every directory and data file 100 times a second. With it,
a scan with nothing new costs one `read` of the inotify descriptor.

`Inotify.open()` returns None where inotify is not available (not Linux, no libc symbol, the
per-user instance limit reached); the scanner then polls as before. Watches are on
directories only; an event on a file in a watched directory names the file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import sys
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

__all__ = ["Changes", "Inotify"]

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000

# Entries added, removed or renamed: the directory's listing changed.
_STRUCTURE = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
# The watched directory itself went away (or its file system did).
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED
_MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | _STRUCTURE | IN_DELETE_SELF | IN_MOVE_SELF
_MASK |= IN_ONLYDIR

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


@dataclass
class Changes:
    """What inotify reported since the last read."""

    # Directories whose entries changed (or that went away): their listings are stale.
    directories: set[str] = field(default_factory=set)
    # Files (directory + os.sep + name) written, truncated, created, removed or renamed.
    files: set[str] = field(default_factory=set)
    # The kernel's queue overflowed: events were lost, anything may have changed.
    overflow: bool = False

    def __bool__(self) -> bool:
        return bool(self.directories or self.files or self.overflow)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        for name in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    libc.inotify_rm_watch.argtypes = (ctypes.c_int, ctypes.c_int)
    return libc


class Inotify:
    """One inotify instance watching directories by path. Not thread-safe."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self._fd = fd
        self._paths: dict[int, str] = {}  # watch descriptor -> directory
        self._wds: dict[str, int] = {}  # directory -> watch descriptor

    @classmethod
    def open(cls) -> Inotify | None:
        """A new instance, or None where inotify cannot be used."""
        libc = _libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            log.info("inotify unavailable (%s): the scanner polls", os.strerror(ctypes.get_errno()))
            return None
        return cls(libc, fd)

    def watching(self, directory: str) -> bool:
        return directory in self._wds

    def watch(self, directory: str) -> bool:
        """Watch a directory; False when that is not possible (gone, not a directory, limit)."""
        if directory in self._wds:
            return True
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
        if wd < 0:
            code = ctypes.get_errno()
            if code == errno.ENOSPC:
                log.warning(
                    "inotify watch limit reached at %s (fs.inotify.max_user_watches): "
                    "the scanner polls this directory",
                    directory,
                )
            return False
        # Two paths to one directory (a symlink) share a descriptor: keep the newest path.
        old = self._paths.get(wd)
        if old is not None:
            self._wds.pop(old, None)
        self._paths[wd] = directory
        self._wds[directory] = wd
        return True

    def unwatch(self, directory: str) -> None:
        wd = self._wds.pop(directory, None)
        if wd is not None:
            self._paths.pop(wd, None)
            self._libc.inotify_rm_watch(self._fd, wd)

    def read(self) -> Changes:
        """Everything reported since the last read; never waits."""
        changes = Changes()
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return changes
            self._parse(data, changes)

    def _parse(self, data: bytes, changes: Changes) -> None:
        """Add the events in `data` (whole `struct inotify_event`s) to `changes`."""
        paths = self._paths
        offset, end = 0, len(data)
        unpack = _EVENT.unpack_from
        size = _EVENT.size
        named: set[tuple[str, bytes]] = set()
        while offset < end:
            wd, mask, _cookie, length = unpack(data, offset)
            offset += size
            directory = paths.get(wd)
            if mask & IN_Q_OVERFLOW:
                changes.overflow = True
            elif directory is None:
                pass  # a directory no longer watched
            elif length:
                named.add((directory, data[offset : offset + length]))
                if mask & _STRUCTURE:
                    changes.directories.add(directory)
            elif mask & _GONE:
                changes.directories.add(directory)
                del paths[wd]
                if self._wds.get(directory) == wd:
                    del self._wds[directory]
            offset += length
        sep = os.sep
        for directory, raw in named:
            changes.files.add(directory + sep + os.fsdecode(raw.rstrip(b"\0")))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._paths.clear()
            self._wds.clear()

    def __del__(self) -> None:
        self.close()
