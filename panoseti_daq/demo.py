"""`make demo`: a DaqData server replaying archived data, and a client showing it live.

Starts `python -m panoseti_daq.serve` on a free loopback port with the filesystem simulation
(the real NGC 7331 pulse-height data and the synthetic movie-mode sky), connects the blocking
client, and shows a live table per module and image type: frames, rate, newest timestamp and
brightest pixel. Ctrl+C stops the client and then the server, which removes its files.

    python -m panoseti_daq.demo [--duration SECONDS] [--interval SECONDS] [--backend trio|asyncio]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from . import pff
from .client import DaqClient

RATE_WINDOW_S = 5.0


@dataclass
class _Row:
    frames: int = 0
    arrivals: deque = field(default_factory=deque)
    timestamp: Any = None
    wr_valid: bool = False
    peak: int = 0
    file: str = ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _table(rows: dict[tuple[int, str], _Row], now: float, elapsed: float) -> Table:
    table = Table(title=f"panoseti_daq demo: live frames ({elapsed:.0f} s; Ctrl+C to stop)")
    for column in (
        "module",
        "type",
        "frames",
        "rate /s",
        "newest timestamp",
        "clock",
        "max",
        "file",
    ):
        table.add_column(
            column, justify="right" if column in ("frames", "rate /s", "max") else "left"
        )
    for (module, kind), row in sorted(rows.items()):
        while row.arrivals and now - row.arrivals[0] > RATE_WINDOW_S:
            row.arrivals.popleft()
        rate = len(row.arrivals) / min(RATE_WINDOW_S, max(elapsed, 1e-3))
        table.add_row(
            str(module),
            kind,
            str(row.frames),
            f"{rate:.1f}",
            str(row.timestamp),
            "White Rabbit" if row.wr_valid else "host",
            str(row.peak),
            row.file[-48:],
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m panoseti_daq.demo", description=__doc__)
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds")
    parser.add_argument("--interval", type=float, default=0.0, help="stream update interval")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    args = parser.parse_args(argv)
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="panoseti_demo_"))
    port = _free_port()
    config = tmp / "daq_data_server_config.json"
    config.write_text(
        json.dumps(
            {
                "simulate_daq_cfg": {
                    "simulation_mode": "filesystem",
                    "movie_type": "img16",
                    "ph_type": "ph256",
                    "frames_per_pff": 200,
                    "sim_module_ids": [224, 225],
                    "real_module_id": 254,
                    "data_dir": str(tmp / "sim"),
                    "frame_rate_hz": 10,
                },
                "allowed_data_roots": [str(tmp)],
                "unix_domain_socket": "",
            }
        )
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "panoseti_daq.serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend",
            args.backend,
            "--log-level",
            "warning",
        ],
    )
    console.print(f"[bold]server[/] pid {server.pid} on 127.0.0.1:{port} ({args.backend})")
    rows: dict[tuple[int, str], _Row] = {}
    start = time.monotonic()
    try:
        daq_config = {"daq_nodes": [{"ip_addr": f"127.0.0.1:{port}"}]}
        deadline = time.monotonic() + 30
        while True:
            with DaqClient(daq_config) as client:
                if client.get_valid_daq_hosts():
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                console.print("[red]the server did not start[/]")
                return 1
            time.sleep(0.2)
        with DaqClient(daq_config) as client:
            console.print(client.reflect_services())
            if not client.init_sim():
                console.print("[red]the simulation did not start[/]")
                return 1
            stream = client.stream_images(
                None, True, True, update_interval_seconds=args.interval, wait_for_ready=True
            )
            with Live(console=console, refresh_per_second=4) as live:
                last_draw = 0.0
                for image in stream:
                    now = time.monotonic()
                    row = rows.setdefault((image["module_id"], image["type"]), _Row())
                    row.frames += 1
                    row.arrivals.append(now)
                    row.timestamp = image["header"]["pandas_unix_timestamp"]
                    row.wr_valid = image["header"]["wr_timestamp_valid"]
                    row.peak = int(image["image_array"].max())
                    name = pff.DataFileName.parse(image["file"])
                    seqno = f"seqno_{name.seqno}" if name else image["file"]
                    row.file = f"{seqno}#{image['frame_number']}"
                    if now - last_draw > 0.25:
                        live.update(_table(rows, now, now - start))
                        last_draw = now
                    if args.duration and now - start > args.duration:
                        break
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        console.print(f"server exited with code {server.returncode}")
    total = sum(row.frames for row in rows.values())
    console.print(f"received {total} frames from {len(rows)} streams")
    return 0 if total else 1


if __name__ == "__main__":
    sys.exit(main())
