"""Unix socket files: what a listener finds at its path before it starts (R-NET-2, R-UDS-3)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["prepare_socket_path"]


def prepare_socket_path(path: str, key: str) -> None:
    """R-NET-2: remove a stale socket file; refuse a live one or a file that is no socket."""
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
