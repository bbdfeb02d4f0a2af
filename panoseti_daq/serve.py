"""`python -m panoseti_daq.serve`: run the DaqData and UbloxControl server on this DAQ node."""

from __future__ import annotations

import argparse
import sys

from .config import ServerConfig, load_server_config, load_ublox_server_config
from .errors import ConfigError, SourceError, sole_exception
from .logs import LOG_LEVELS, configure_logging
from .server.sockets import socket_path_problem


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m panoseti_daq.serve",
        description="Serve live PANOSETI images (daqdata.DaqData) and the control of the node's "
        "GNSS timing receiver (ubloxcontrol.UbloxControl) over gRPC.",
    )
    parser.add_argument("--config", help="daq_data_server_config.json (default: the bundled one)")
    parser.add_argument(
        "--ublox-config",
        help="UbloxControl settings from the original's ublox_control_server_config.json "
        "(instead of the config's ublox_control section)",
    )
    parser.add_argument(
        "--services",
        choices=("all", "daqdata", "ublox"),
        default="all",
        help="serve both services (default), DaqData only, or UbloxControl only: a second "
        "process on the node, on the host and port of --ublox-config, with no Unix socket, "
        "metrics or stats file unless given here",
    )
    parser.add_argument("--host", help="TCP bind address (default from config: [::])")
    parser.add_argument("--port", type=int, help="TCP port (default from config: 50051); -1: none")
    parser.add_argument("--uds", help="Unix socket path ('' for none; default from config)")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    parser.add_argument(
        "--init",
        metavar="HP_IO_CONFIG",
        help="initialise hp_io at start from this hp_io_config.json (default from config: none)",
    )
    parser.add_argument("--init-sim", action="store_true", help="start the simulation at once")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument(
        "--stats-file", help="append the server's counters as one JSON line per interval"
    )
    parser.add_argument(
        "--stats-interval", type=float, default=60.0, help="seconds between stats lines (60)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default from config: off)",
    )
    args = parser.parse_args(argv)
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error(f"--metrics-port must be between 0 and 65535, not {args.metrics_port}")
    if not args.stats_interval > 0:
        parser.error(f"--stats-interval must be > 0, not {args.stats_interval}")
    if args.init and args.init_sim:
        parser.error("--init and --init-sim: give one of them")
    if args.services == "ublox" and (args.init or args.init_sim):
        option = "--init" if args.init else "--init-sim"
        parser.error(f"{option} configures DaqData, which --services ublox does not serve")
    if args.uds and args.uds.startswith("unix://"):
        args.uds = args.uds[len("unix://") :]  # the config key's form
    return args


class ListenError(ValueError):
    """A listen option or setting the server cannot honour."""


def check_listeners(args: argparse.Namespace, config: ServerConfig) -> None:
    """ListenError (or ConfigError for the config file's keys) naming what cannot be listened on.

    TCP ports are 0..65535 (-1 on the command line: no TCP listener); a Unix socket's directory
    must exist and its path fit in sun_path; and the server must listen on something.
    """
    if args.port is not None and not -1 <= args.port <= 65535:
        raise ListenError(f"--port {args.port}: must be 0..65535, or -1 for no TCP listener")
    port = config.port if args.port is None else args.port
    if args.uds is not None:
        uds, what = (args.uds or None), f"--uds {args.uds}"
    else:
        uds, what = config.uds_path, ""
    if uds is not None:
        problem = socket_path_problem(uds)
        if problem is not None:
            if what:
                raise ListenError(f"{what}: {problem}")
            raise ConfigError("unix_domain_socket", problem, config.config_file)
    if port < 0 and uds is None:
        where = f" (config {config.config_file})" if config.config_file else ""
        raise ListenError(
            f"nothing to listen on: no TCP port (--port -1) and no Unix socket{where}; "
            "give --port N or --uds PATH"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load_server_config(args.config)
        ublox_only = args.services == "ublox"
        if args.ublox_config:
            ublox = load_ublox_server_config(args.ublox_config, beside_daqdata=not ublox_only)
            config = config.replace(ublox_control=ublox)
            if ublox_only:  # its own listener: the host and port of the UbloxControl file
                config = config.replace(host=ublox.host, port=ublox.port)
        if ublox_only:  # DaqData's socket, metrics and init belong to the DaqData process
            config = config.replace(
                unix_domain_socket="", metrics_port=None, init_hp_io=None, init_from_default=False
            )
        check_listeners(args, config)
    except ConfigError as exc:
        print(f"panoseti_daq.serve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except ListenError as exc:
        print(f"panoseti_daq.serve: {exc}", file=sys.stderr)
        return 2
    from .server.app import SERVICES, StartupError, run

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
            metrics_port=args.metrics_port,
            init_hp_io=args.init,
            services=SERVICES if args.services == "all" else (args.services,),
        )
    except Exception as exc:
        # R-OPS-2: one line, also for what a task of the server's task group raised at start
        # (the Hashpipe ingest's sockets), which arrives inside an exception group; and --init-sim
        # that cannot start (a full disk, R-SRC-1).
        cause = sole_exception(exc)
        if isinstance(cause, (ConfigError, StartupError, SourceError)):
            print(f"panoseti_daq.serve: {cause}", file=sys.stderr)
            return 2
        if isinstance(cause, OSError):
            print(f"panoseti_daq.serve: cannot start: {cause}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
