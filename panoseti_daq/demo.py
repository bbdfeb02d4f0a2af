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
import sys
import tempfile
from pathlib import Path

from . import cli
from .server.process import free_port, serve_command, started


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
    command = serve_command(
        *("--config", str(config), "--host", "127.0.0.1", "--port", str(port)),
        *("--backend", args.backend, "--log-level", "warning"),
    )
    code = 1
    # The server runs in a session of its own: a terminal's Ctrl+C reaches the demo only, which
    # then stops the server with one SIGINT (on leaving `started`); in the terminal's process
    # group the server got the terminal's SIGINT and the demo's. A closed terminal (SIGHUP)
    # must stop it through the demo too, which it does as for Ctrl+C.
    signal.signal(signal.SIGHUP, _interrupt)
    server = None
    try:
        with started(
            command, port, stop_signal=signal.SIGINT, stop_timeout_s=15, start_new_session=True
        ) as server:
            code = _run_client(args, tmp, daq_config, network_config)
    except KeyboardInterrupt:
        code = 0
    except (RuntimeError, TimeoutError) as exc:
        if server is not None:  # not from starting the server
            raise
        print(f"the server did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            print(f"server stopped (exit code {server.returncode})")
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if code in (0, 130) and server is not None and server.returncode == 0 else 1


def _run_client(args: argparse.Namespace, tmp: Path, daq_config: Path, network_config: Path) -> int:
    """The CLI against the server: its services, then the live table (and plots)."""
    client_args = [str(daq_config), str(network_config), "--log-level", "warning"]
    cli.main([*client_args, "--list-hosts", "--reflect-services"])
    stream_args = [
        *("--init-sim", "--stream", "--update-interval", "0", "--refresh-period", "0.5"),
        *("--plot-dir", str(tmp / "plots")),
    ]
    if args.plot:
        stream_args.append("--plot-view")
    if args.duration:
        stream_args += ["--duration", str(args.duration)]
    return cli.main([*client_args, *stream_args])


if __name__ == "__main__":
    sys.exit(main())
