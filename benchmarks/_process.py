"""A benchmark's server process: started, awaited until it listens, always stopped."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from panoseti_daq.server.process import started

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running(cmd: list[str], port: int, what: str) -> Iterator[subprocess.Popen[bytes]]:
    """The process of `cmd` (run from the repository root) once 127.0.0.1:`port` accepts
    connections; terminated, and killed after 10 s, on leaving."""
    with started(cmd, port, what=f"{what} server", cwd=ROOT, stdout=subprocess.DEVNULL) as process:
        yield process
