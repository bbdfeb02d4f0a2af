"""`make demo-ublox`: a simulated ZED-F9T, a server that owns it, InitF9t, then a live capture.

Starts the simulated chip (`python -m panoseti_daq.ublox.simulator`, a pseudo-terminal) and
`python -m panoseti_daq.serve` on a free loopback port with a config that lets clients open the
simulator's /dev/pts/* (never allowed by default); writes the shipped example f9t_config.json5
with that device and port; then runs `panoseti-ublox init` and `panoseti-ublox capture` against
it: a live table of the chip's qErr, tAcc and UTC validity. Ctrl+C (or SIGTERM, or `--duration`)
stops the capture, then the server and the simulator, and removes the temporary files.

    python -m panoseti_daq.ublox.demo [--duration SECONDS] [--plot qerr.png]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..server.process import free_port, serve_command, started, stop
from . import cli
from .settings import example_config_path

STOP_TIMEOUT_S = 15


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def demo_config(device: str, port: int) -> str:
    """The shipped example f9t_config.json5 (its comments kept) naming `device` on the
    server at 127.0.0.1:`port`."""
    text = example_config_path().read_text()
    text = re.sub(r'"device":\s*"[^"]*"', f'"device": {json.dumps(device)}', text)
    text = re.sub(r'"host":\s*"[^"]*"', '"host": "127.0.0.1"', text)
    return re.sub(r'"port":\s*\d+', f'"port": {port}', text)


def _start_simulator(period_s: float) -> tuple[subprocess.Popen[str], str]:
    """The simulator process and its device path (the first line it prints)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "panoseti_daq.ublox.simulator", "--period", str(period_s)],
        stdout=subprocess.PIPE,
        text=True,
        # Its own session: the terminal's Ctrl+C reaches the demo only, which stops it.
        start_new_session=True,
    )
    assert process.stdout is not None
    device = process.stdout.readline().strip()
    if not device.startswith("/dev/"):
        stop(process, signal.SIGTERM, STOP_TIMEOUT_S)
        raise RuntimeError(f"the simulator did not start (it printed {device!r})")
    return process, device


@dataclass(frozen=True)
class SimulatedNode:
    """A running simulated chip and server: the chip's `device`, the server's `port`, and
    `f9t_config` (a .json5 file naming both)."""

    device: str
    port: int
    f9t_config: Path


@contextlib.contextmanager
def simulated_node(period_s: float = 1.0) -> Iterator[SimulatedNode]:
    """Start a simulated ZED-F9T (output every `period_s`, 1 s as the chip) and a server allowed
    to open it; stop both on leaving (the server with SIGINT, the simulator with SIGTERM) and
    remove the temporary files. RuntimeError (or TimeoutError) if either does not start."""
    tmp = Path(tempfile.mkdtemp(prefix="panoseti_ublox_demo_"))
    simulator: subprocess.Popen[str] | None = None
    server: subprocess.Popen[str] | None = None
    try:
        simulator, device = _start_simulator(period_s)
        port = free_port()
        server_config = tmp / "server_config.json"
        server_config.write_text(
            json.dumps(
                {
                    "allowed_data_roots": [str(tmp)],
                    "unix_domain_socket": "",
                    "ublox_control": {"allowed_devices": ["/dev/pts/*"]},
                }
            )
        )
        f9t_config = tmp / "f9t_config.json5"
        f9t_config.write_text(demo_config(device, port))
        command = serve_command(
            *("--config", str(server_config), "--host", "127.0.0.1", "--port", str(port)),
            *("--log-level", "warning"),
        )
        with started(
            command,
            port,
            stop_signal=signal.SIGINT,
            stop_timeout_s=STOP_TIMEOUT_S,
            text=True,
            start_new_session=True,
        ) as server:
            yield SimulatedNode(device, port, f9t_config)
    finally:
        if server is not None:
            print(f"server stopped (exit code {server.returncode})", flush=True)
        if simulator is not None:
            code = stop(simulator, signal.SIGTERM, STOP_TIMEOUT_S)
            print(f"simulator stopped (exit code {code})", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m panoseti_daq.ublox.demo",
        description="A simulated ZED-F9T, a UbloxControl server, InitF9t and a live capture.",
    )
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds")
    parser.add_argument("--plot", metavar="PNG", help="also write a plot of qErr over time")
    args = parser.parse_args(argv)
    # A closed terminal (SIGHUP) or a SIGTERM stops the demo as Ctrl+C does, children included.
    signal.signal(signal.SIGHUP, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    code = 1
    try:
        with simulated_node() as node:
            print(
                f"simulated ZED-F9T on {node.device}; server on 127.0.0.1:{node.port}; "
                f"config {node.f9t_config}",
                flush=True,
            )
            code = cli.main(["init", str(node.f9t_config)])
            if code == 0:
                capture = ["capture", str(node.f9t_config), "--refresh-period", "0.5"]
                if args.duration:
                    capture += ["--duration", str(args.duration)]
                if args.plot:
                    capture += ["--plot", args.plot]
                code = cli.main(capture)
            # Stopping the children is not to be interrupted half-way.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except KeyboardInterrupt:
        code = 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0 if code in (0, 130) else 1


if __name__ == "__main__":
    sys.exit(main())
