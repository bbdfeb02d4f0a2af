"""A benchmark's server process: started, awaited until it listens, always stopped."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from panoseti_daq._localhost import wait_for_port

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running(cmd: list[str], port: int, what: str) -> Iterator[subprocess.Popen[bytes]]:
    """The process of `cmd` (run from the repository root) once 127.0.0.1:`port` accepts
    connections; terminated, and killed after 10 s, on leaving."""
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        if not wait_for_port(port, process):
            raise RuntimeError(f"{what} server did not start")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
