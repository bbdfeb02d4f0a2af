"""A server in a process of its own on this machine: started, awaited, always stopped.

The demos, the benchmarks and the tests start `python -m panoseti_daq.serve` (or another
program that listens, such as a reference server) the same way: on a free loopback port, wait
until the port accepts connections or the process exits, and on leaving stop it with a signal,
then SIGKILL after a grace period. Standard library only: importing this starts no event loop.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["free_port", "serve_command", "started", "stop", "wait_for_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[Any], timeout_s: float = 30.0) -> bool:
    """Wait until 127.0.0.1:port accepts connections: True, or False if `process` exited or
    `timeout_s` passed first."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    return False


def serve_command(*args: str) -> list[str]:
    """The command line of `python -m panoseti_daq.serve ARGS` with this interpreter."""
    return [sys.executable, "-m", "panoseti_daq.serve", *args]


def stop(
    process: subprocess.Popen[Any], signum: int = signal.SIGTERM, timeout_s: float = 10.0
) -> int:
    """Stop `process` with `signum` (if it still runs), SIGKILL after `timeout_s`; its exit
    code. Pipes it writes to are read to their end, so that none is left open."""
    if process.poll() is None:
        process.send_signal(signum)
    try:
        process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
    return process.returncode


@contextlib.contextmanager
def started(
    cmd: Sequence[str],
    port: int,
    *,
    what: str = "the server",
    stop_signal: int = signal.SIGTERM,
    stop_timeout_s: float = 10.0,
    start_timeout_s: float = 30.0,
    **popen: Any,
) -> Iterator[subprocess.Popen[Any]]:
    """The process of `cmd` (subprocess.Popen with `popen`) once 127.0.0.1:`port` accepts
    connections; stopped on leaving (`stop`).

    RuntimeError naming `what` when it exits before listening (with the end of its stderr when
    that is a pipe), TimeoutError when it does not listen within `start_timeout_s`.
    """
    process = subprocess.Popen(list(cmd), **popen)
    try:
        if not wait_for_port(port, process, start_timeout_s):
            if process.poll() is None:
                raise TimeoutError(
                    f"{what} did not listen on 127.0.0.1:{port} within {start_timeout_s:g} s"
                )
            _, err = process.communicate()
            said = f": {err[-2000:]!s}" if err else ""
            raise RuntimeError(f"{what} exited with code {process.returncode}{said}")
        yield process
    finally:
        stop(process, stop_signal, stop_timeout_s)
