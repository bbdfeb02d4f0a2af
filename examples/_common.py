"""Command-line arguments shared by the examples: which DAQ nodes, and when to stop.

With a daq_config the examples talk to the servers it names and leave their simulation alone
(`--init-sim` starts, or restarts, it). Without one they start a server of their own on a free
loopback port, replaying the bundled data, and stop it when they end: they never touch a server
that someone else runs on the default port.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator


def parse_args(
    description: str, more: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The shared arguments; `more` adds an example's own."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "daq_config", nargs="?", help="daq_config.json (default: start a server of our own)"
    )
    parser.add_argument("network_config", nargs="?", help="network_config.json (optional)")
    parser.add_argument("--max-frames", type=int, default=20, help="stop after N frames (0: never)")
    parser.add_argument(
        "--init-sim",
        action="store_true",
        help="start the simulation on the servers of daq_config (it replaces what they stream)",
    )
    if more is not None:
        more(parser)
    return parser.parse_args()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the example's server exited with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"the example's server did not listen on port {port} in {timeout_s:g} s")


@contextlib.contextmanager
def daq_target(args: argparse.Namespace) -> Iterator[None]:
    """Use the daq_config given, or start a server of our own (with its simulation running)
    and point args.daq_config at it; that server is stopped on leaving."""
    if args.daq_config:
        yield
        return
    port = _free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "panoseti_daq.serve", "--host", "127.0.0.1"),
            *("--port", str(port), "--uds", "", "--init-sim", "--log-level", "warning"),
        ]
    )
    try:
        _wait_for_port(port, process)
        print(f"started a server of our own on 127.0.0.1:{port}", flush=True)
        args.daq_config = {"daq_nodes": [{"ip_addr": f"127.0.0.1:{port}"}]}
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
