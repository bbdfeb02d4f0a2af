"""`python -m panoseti_daq.serve`: run the DaqData server on this DAQ node."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import load_server_config
from .errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m panoseti_daq.serve",
        description="Serve live PANOSETI images over gRPC (service daqdata.DaqData).",
    )
    parser.add_argument("--config", help="daq_data_server_config.json (default: the bundled one)")
    parser.add_argument("--host", help="TCP bind address (default from config: [::])")
    parser.add_argument("--port", type=int, help="TCP port (default from config: 50051); -1: none")
    parser.add_argument("--uds", help="Unix socket path ('' for none; default from config)")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    parser.add_argument("--init-sim", action="store_true", help="start the simulation at once")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument(
        "--stats-file", help="append the server's counters as one JSON line per interval"
    )
    parser.add_argument(
        "--stats-interval", type=float, default=60.0, help="seconds between stats lines (60)"
    )
    args = parser.parse_args(argv)
    if not args.stats_interval > 0:
        parser.error(f"--stats-interval must be > 0, not {args.stats_interval}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.logging import RichHandler

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(name)s: %(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
    )
    try:
        config = load_server_config(args.config)
    except ConfigError as exc:
        print(f"panoseti_daq.serve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    from .server.app import run

    try:
        run(
            config,
            args.backend,
            host=args.host,
            port=args.port,
            uds=args.uds,
            init_sim=args.init_sim,
            stats_file=args.stats_file,
            stats_interval_s=args.stats_interval,
        )
    except ConfigError as exc:
        print(f"panoseti_daq.serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"panoseti_daq.serve: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
