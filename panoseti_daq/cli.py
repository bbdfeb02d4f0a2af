"""`panoseti-daq` (also `python -m panoseti_daq.cli`): the DaqData client on the command line.

The original CLI's options (R-UI-1) plus a live table of the stream (the default action),
`--record DIR` to write what arrives as PFF files, and bounds for scripts (`--duration`,
`--max-frames`). Exit codes: 0 done, 1 no DAQ node or an RPC failed, 2 bad arguments or config,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .client import DaqClient
from .errors import RpcError

log = logging.getLogger("panoseti_daq.cli")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="panoseti-daq",
        description="Real-time PANOSETI pulse-height and movie-mode data from DaqData servers.",
    )
    parser.add_argument("daq_config_path", help="daq_config.json for the current observing run")
    parser.add_argument("net_config_path", help="network_config.json for the current run")
    parser.add_argument("--host", help="DaqData server host (a daq_config ip_addr); default: all")
    parser.add_argument("--ping", action="store_true", help="ping the host(s)")
    parser.add_argument("--list-hosts", action="store_true", help="list DAQ hosts and status")
    parser.add_argument(
        "--reflect-services", action="store_true", help="list the gRPC services of the host(s)"
    )
    parser.add_argument(
        "--init",
        metavar="CFG_PATH",
        help="initialise hp_io with CFG_PATH=/path/to/hp_io_config.json",
    )
    parser.add_argument(
        "--init-sim", action="store_true", help="initialise hp_io to stream a simulated run"
    )
    parser.add_argument("--plot-view", action="store_true", help="live frame previewer")
    parser.add_argument("--plot-phdist", action="store_true", help="live pulse-height distribution")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="live table of the stream (the default when no action is given)",
    )
    parser.add_argument("--record", metavar="DIR", help="write received frames as PFF files")
    parser.add_argument(
        "--refresh-period",
        type=float,
        default=1.0,
        help="seconds between plot and table refreshes (default 1.0)",
    )
    parser.add_argument(
        "--update-interval",
        type=float,
        default=None,
        help="StreamImages update interval (default: the refresh period; 0: every frame)",
    )
    parser.add_argument(
        "--module-ids", nargs="*", type=int, default=[], help="modules to stream (default: all)"
    )
    parser.add_argument(
        "--movie",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream movie-mode images",
    )
    parser.add_argument(
        "--ph",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream pulse-height images",
    )
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds")
    parser.add_argument("--max-frames", type=int, default=0, help="stop after N frames")
    parser.add_argument(
        "--plot-dir", default="panoseti_plots", help="where plots are written without a display"
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return parser.parse_args(argv)


def _configure_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
    )


def _stream(client: DaqClient, args: argparse.Namespace, hosts: Any) -> int:
    """Stream into the live table, the plots and the recorder until a bound or Ctrl+C."""
    from rich.console import Console
    from rich.live import Live

    from .live_table import LiveTable

    plots: list[Any] = []
    headless = False
    if args.plot_view or args.plot_phdist:
        import matplotlib

        from .plots import PanoImagePreviewer, PulseHeightDistribution

        if args.plot_view:
            plots.append(
                ("preview", PanoImagePreviewer(args.movie, args.ph, tuple(args.module_ids)))
            )
        if args.plot_phdist:
            plots.append(("phdist", PulseHeightDistribution(tuple(args.module_ids))))
        headless = matplotlib.get_backend().lower() == "agg"
    recorder = None
    if args.record:
        from .recorder import PFFRecorder

        recorder = PFFRecorder(args.record)
    interval = args.refresh_period if args.update_interval is None else args.update_interval
    table = LiveTable("panoseti-daq stream")
    console = Console()
    stream = client.stream_images(
        hosts, args.movie, args.ph, interval, tuple(args.module_ids), wait_for_ready=True
    )
    start = last_refresh = time.monotonic()
    try:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            for image in stream:
                now = time.monotonic()
                table.update(image, now)
                for _, plot in plots:
                    plot.update(image)
                if recorder is not None:
                    recorder.write(image)
                if now - last_refresh >= args.refresh_period:
                    last_refresh = now
                    live.update(table.render(now))
                    for name, plot in plots:
                        plot.refresh()
                        if headless:
                            plot.save(Path(args.plot_dir) / f"{name}.png")
                if (args.max_frames and table.total >= args.max_frames) or (
                    args.duration and now - start >= args.duration
                ):
                    break
            live.update(table.render(time.monotonic()))
    finally:
        stream.close()
        for name, plot in plots:
            plot.refresh()
            if headless:
                console.print(f"wrote {plot.save(Path(args.plot_dir) / f'{name}.png')}")
        if recorder is not None:
            recorder.close()
            console.print(f"recorded {recorder.written} frames under {args.record}")
    return 0


def run(args: argparse.Namespace) -> int:
    hosts = [args.host] if args.host else None
    with DaqClient(args.daq_config_path, args.net_config_path) as client:
        acted = False
        if args.list_hosts:
            for host, ok in client.get_daq_host_status().items():
                print(f"{host}\t{'up' if ok else 'down'}")
            acted = True
        if args.ping:
            targets = hosts or list(client.nodes)
            results = {host: client.ping(host) for host in targets}
            for host, ok in results.items():
                print(f"{host}\t{'ok' if ok else 'no answer'}")
            if not all(results.values()):
                return 1
            acted = True
        if args.reflect_services:
            print(client.reflect_services(hosts))
            acted = True
        if args.init:
            hp_io_cfg = json.loads(Path(args.init).read_text())
            if not client.init_hp_io(hosts, hp_io_cfg):
                log.error("InitHpIo failed on at least one host")
                return 1
            print("hp_io initialised")
            acted = True
        if args.init_sim:
            if not client.init_sim(hosts):
                log.error("starting the simulation failed on at least one host")
                return 1
            print("simulation started")
            acted = True
        if args.stream or args.plot_view or args.plot_phdist or args.record or not acted:
            return _stream(client, args, hosts)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _configure_logging(args.log_level)
    if not (args.movie or args.ph):
        print("panoseti-daq: --no-movie and --no-ph leave nothing to stream", file=sys.stderr)
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as exc:
        print(f"panoseti-daq: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, RpcError) as exc:
        print(f"panoseti-daq: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
