"""`make demo`: a DaqData server replaying archived data, and a client showing it live.

Starts `python -m panoseti_daq.serve` on a free loopback port with the filesystem simulation
(the real NGC 7331 pulse-height data and the synthetic movie-mode sky, two modules), then runs
the `panoseti-daq` CLI against it: the services it offers, then a live table per module and image
type (frames, rate, newest timestamp and its clock, brightest pixel). With `--plot`, the live
frame previewer too. Ctrl+C stops the client and then the server, which removes its files.

    python -m panoseti_daq.demo [--duration SECONDS] [--plot] [--backend trio|asyncio]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from . import cli
from ._localhost import free_port, wait_for_port


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m panoseti_daq.demo", description=__doc__)
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds")
    parser.add_argument("--plot", action="store_true", help="also show the live previewer")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="panoseti_demo_"))
    port = free_port()
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
    daq_config = tmp / "daq_config.json"
    daq_config.write_text(json.dumps({"daq_nodes": [{"ip_addr": f"127.0.0.1:{port}"}]}))
    network_config = tmp / "network_config.json"
    network_config.write_text(json.dumps({"daq_nodes": []}))
    print(f"starting the server on 127.0.0.1:{port} ({args.backend}), simulation in {tmp}")
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
        # Its own session: a terminal's Ctrl+C reaches the demo only, which then stops the
        # server with one SIGINT (below). In the terminal's process group the server got the
        # terminal's SIGINT and the demo's.
        start_new_session=True,
    )
    code = 1
    # The server is in a session of its own: a closed terminal (SIGHUP) must stop it through
    # the demo too, which it does as for Ctrl+C.
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        if not wait_for_port(port, server):
            print("the server did not start", file=sys.stderr)
            return 1
        client_args = [str(daq_config), str(network_config), "--log-level", "warning"]
        cli.main([*client_args, "--list-hosts", "--reflect-services"])
        stream_args = [
            "--init-sim",
            "--stream",
            "--update-interval",
            "0",
            "--refresh-period",
            "0.5",
            "--plot-dir",
            str(tmp / "plots"),
        ]
        if args.plot:
            stream_args.append("--plot-view")
        if args.duration:
            stream_args += ["--duration", str(args.duration)]
        code = cli.main([*client_args, *stream_args])
    except KeyboardInterrupt:
        code = 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        print(f"server stopped (exit code {server.returncode})")
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if code in (0, 130) and server.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
