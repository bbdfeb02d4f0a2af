"""Unix socket files: what a listener finds at its path before it starts (R-NET-2, R-UDS-3)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["MAX_SOCKET_PATH", "prepare_socket_path", "socket_path_problem"]

# sun_path holds 108 bytes on Linux, with the terminating NUL.
MAX_SOCKET_PATH = 107


def socket_path_problem(path: str) -> str | None:
    """Why no Unix socket can be bound at `path` (too long for sun_path, or its directory is
    missing); None if one can."""
    size = len(path.encode())
    if size > MAX_SOCKET_PATH:
        return f"socket path is too long ({size} bytes, at most {MAX_SOCKET_PATH})"
    directory = Path(path).expanduser().parent
    if not directory.is_dir():
        return f"directory {directory} of the socket {path} does not exist"
    return None


def prepare_socket_path(path: str, key: str) -> None:
    """R-NET-2: ConfigError (naming `key`) for a path no socket can be bound at, a live socket
    or a file that is no socket; a stale socket file is removed."""
    problem = socket_path_problem(path)
    if problem is not None:
        raise ConfigError(key, problem)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(key, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        log.info("removing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        raise ConfigError(key, f"another server is listening on {path}")
    finally:
        probe.close()
