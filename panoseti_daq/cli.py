"""`panoseti-daq` (also `python -m panoseti_daq.cli`): the DaqData client on the command line.

The original CLI's options (R-UI-1) plus a live table of the stream (the default action),
`--record DIR` to write what arrives as PFF files, and bounds for scripts (`--duration`,
`--max-frames`). Exit codes: 0 done (also a stream stopped with Ctrl+C, its normal end), 1 no DAQ
node answers or an RPC failed, 2 bad arguments or config, 130 another action interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .client import DaqClient
from .client.targets import parse_module_ids
from .config import client_hp_io_config
from .errors import PanosetiDaqError, RpcError
from .frames import PanoFrame
from .logs import LOG_LEVELS, configure_logging
from .viewer.live_table import LiveTable
from .viewer.recorder import PFFRecorder, RecordError

log = logging.getLogger("panoseti_daq.cli")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="panoseti-daq",
        description="Real-time PANOSETI pulse-height and movie-mode data from DaqData servers.",
    )
    parser.add_argument("daq_config_path", help="daq_config.json for the current observing run")
    parser.add_argument(
        "net_config_path",
        nargs="?",
        default=None,
        help="network_config.json for the current run (optional: needed for port forwarding)",
    )
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
        help="StreamImages update interval in seconds; 0: every frame "
        "(default: 0 with --record or --plot-phdist, else the refresh period)",
    )
    parser.add_argument(
        "--module-ids",
        nargs="*",
        default=[],
        metavar="IDS",
        help="modules to stream, as ids or ranges: 1 2 or 1-4,7 (default: all)",
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
    args = parser.parse_args(argv)
    ids: list[int] = []
    for text in args.module_ids:
        try:
            ids.extend(parse_module_ids(text, "--module-ids"))
        except ValueError:
            parser.error(
                f"--module-ids {text}: not a module id or range; give ids or ranges such as "
                "1 2 or 1-4,7"
            )
    args.module_ids = sorted(set(ids))
    return args


def _frames(replies: Any) -> Iterator[tuple[str, PanoFrame, int]]:
    """(server name, frame, frames dropped before it) of each reply; replies without an image
    are skipped. The replies are the decoder's own (stream_images with `replies`): no message
    or dict is made per frame."""
    for reply in replies:
        if reply.frame is not None:
            yield reply.name, reply.frame, reply.dropped_before


class _Interrupts:
    """SIGINT and SIGTERM (systemd, `timeout`, batch jobs) both end the CLI as Ctrl+C does: the
    final table is printed and a recording is closed complete.

    The signal raises KeyboardInterrupt where the program waits, but not while one frame is
    being handled (`deferred()`): then it is raised once the frame is in the table, the plots
    and the recording, so that they always agree.
    """

    def __init__(self) -> None:
        self.busy = False
        self.requested = False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.busy:
            self.requested = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.busy = True
        try:
            yield
        finally:
            self.busy = False
            if self.requested:
                self.requested = False
                raise KeyboardInterrupt


_interrupts = _Interrupts()


def _stream(client: DaqClient, args: argparse.Namespace, hosts: list[str] | None) -> int:
    """Stream into the live table, the plots and the recorder until a bound or Ctrl+C."""
    from rich.console import Console
    from rich.live import Live

    plots: list[tuple[str, Any]] = []
    on_display = False
    if args.plot_view or args.plot_phdist:
        from .plots import PanoImagePreviewer, PulseHeightDistribution, display_available

        modules = tuple(args.module_ids)
        # The loop below refreshes every --refresh-period: no redraws from update().
        if args.plot_view:
            previewer = PanoImagePreviewer(args.movie, args.ph, modules, plot_update_interval=None)
            plots.append(("preview", previewer))
        if args.plot_phdist:
            plots.append(("phdist", PulseHeightDistribution(modules, plot_update_interval=None)))
        on_display = display_available()
    plot_dir = Path(args.plot_dir)
    recorder = None
    if args.record:
        recorder = PFFRecorder(args.record)
    interval = args.update_interval
    if interval is None:
        # A recording and a pulse-height distribution want every frame (R-STREAM-10, R-UI-3:
        # accumulated over time); a view one per refresh.
        every_frame = recorder is not None or args.plot_phdist
        interval = 0.0 if every_frame else args.refresh_period
    table = LiveTable("panoseti-daq stream", interval_s=interval)
    console = Console()
    # On a terminal the table redraws in place; into a pipe or a file it is printed as plain
    # lines at every refresh, and once more at the end.
    start = time.monotonic()
    live = Live(table.render(start), console=console, refresh_per_second=4)
    live_on = console.is_terminal

    if not live_on:
        print(table.explanation())  # what skip and lost mean, once

    def show(now: float) -> None:
        if live_on:
            live.update(table.render(now))
        else:
            print("\n".join(table.lines(now)), flush=True)

    def refresh_plots() -> None:
        for name, plot in plots:
            plot.refresh()
            if not on_display:
                plot.save(plot_dir / f"{name}.png")

    # The codec's replies: their `name` says which server sent each frame, and the frames are
    # used as they are (no betterproto message or parsed dict per frame).
    streamed = hosts or sorted(client.valid_hosts) or list(client.nodes)
    replies = client.stream_images(
        hosts,
        args.movie,
        args.ph,
        interval,
        tuple(args.module_ids),
        wait_for_ready=True,
        replies=True,
        # Rows by daq_config host when there are several: two servers on one machine share
        # the server name their replies carry.
        name_by_host=len(streamed) > 1,
    )
    hint = None
    if args.module_ids:
        hint = threading.Timer(NO_FRAME_HINT_S, _missing_modules_hint, (table, args.module_ids))
        hint.daemon = True
        hint.start()
    # --duration holds even when no frame arrives: closing the stream ends the iteration.
    deadline = threading.Timer(args.duration, replies.close) if args.duration else None
    if deadline is not None:
        deadline.daemon = True
        deadline.start()
    last_refresh = start
    recording_failed = False
    try:
        if live_on:
            live.start()
        try:
            for host, frame, dropped in _frames(replies):
                with _interrupts.deferred():
                    now = time.monotonic()
                    if table.total == 0:
                        log.info(
                            "first frame: %s module %d %s",
                            host,
                            frame.module_id,
                            frame.product.name,
                        )
                    table.update(frame, now, host, dropped)
                    for _, plot in plots:
                        plot.update(frame)
                    if recorder is not None:
                        recorder.write(frame)
                    if now - last_refresh >= args.refresh_period:
                        last_refresh = now
                        show(now)
                        if recorder is not None:
                            recorder.flush()
                        refresh_plots()
                    if (args.max_frames and table.total >= args.max_frames) or (
                        args.duration and now - start >= args.duration
                    ):
                        break
        except KeyboardInterrupt:
            log.info("interrupted: stopping the stream")
        show(time.monotonic())
    except RecordError:
        recording_failed = True  # R-REC-1: one line (main), not a summary as well
        raise
    finally:
        if live_on:
            live.stop()
        if deadline is not None:
            deadline.cancel()
        if hint is not None:
            hint.cancel()
        replies.close()
        if plots:
            refresh_plots()
            if not on_display:
                console.print(f"plots written to {plot_dir}/")
        if recorder is not None:
            try:
                recorder.close()
            except RecordError:
                if not recording_failed:
                    raise
            if not recording_failed:
                console.print(f"recorded {recorder.written} frames under {args.record}")
    return 0


# R-OPS-4: a listed module that has sent nothing after this long is named, once.
NO_FRAME_HINT_S = 10.0


def _missing_modules_hint(table: LiveTable, module_ids: list[int]) -> None:
    seen = {module for _, module, _ in list(table.rows)}
    missing = [module for module in module_ids if module not in seen]
    if missing:
        others = ", ".join(str(m) for m in sorted(seen)) or "none"
        log.warning(
            "no frame of module %s in %g s: is it in the run, and on these hosts? "
            "(modules received: %s)",
            ", ".join(str(m) for m in missing),
            NO_FRAME_HINT_S,
            others,
        )


def _require_hosts(client: DaqClient, hosts: list[str] | None) -> None:
    """ConnectionError naming the problem when no requested DAQ node answers (R-CLI-3)."""
    valid = client.get_valid_daq_hosts()
    if hosts:
        down = [host for host in hosts if host in client.nodes and host not in valid]
        if down:
            raise ConnectionError(f"DAQ host {down[0]} does not answer")
    elif not valid:
        raise ConnectionError(f"no DAQ node answered a ping (tried {', '.join(client.nodes)})")


def run(args: argparse.Namespace) -> int:
    """Do what the arguments ask; returns the exit code.

    An error inside the client's context is raised again after the context has closed, so that
    it reaches the caller as itself rather than inside the client task group's ExceptionGroup.
    """
    failure: BaseException | None = None
    client = DaqClient(args.daq_config_path, args.net_config_path)
    _check_host(client, args)  # before pinging every node: a typo is the one line
    with client:
        try:
            return _act(client, args)
        except (Exception, KeyboardInterrupt) as exc:
            failure = exc
    assert failure is not None  # the body either returned or failed
    raise failure


def _check_host(client: DaqClient, args: argparse.Namespace) -> None:
    """R-OPS-4: --host names a node of daq_config; the error lists them."""
    if args.host and args.host not in client.nodes:
        raise ValueError(
            f"--host {args.host} is not in {args.daq_config_path}; "
            f"hosts there: {', '.join(client.nodes)}"
        )


def _act(client: DaqClient, args: argparse.Namespace) -> int:
    """The actions in the original CLI's order; streaming last (the default action)."""
    hosts = [args.host] if args.host else None
    acted = False
    if args.list_hosts:
        status = client.get_daq_host_status()
        for host, ok in status.items():
            print(f"{host}\t{'up' if ok else 'down'}")
        if not any(status.values()):
            return 1
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
        _require_hosts(client, hosts)
        print(client.reflect_services(hosts))
        acted = True
    if args.init:
        _require_hosts(client, hosts)
        if not client.init_hp_io(hosts, args.init):
            return 1  # each failed host is one log line already
        print("hp_io initialised")
        acted = True
    if args.init_sim:
        _require_hosts(client, hosts)
        if not client.init_sim(hosts):
            return 1  # each failed host is one log line already
        print("simulation started")
        acted = True
    if args.stream or args.plot_view or args.plot_phdist or args.record or not acted:
        _require_hosts(client, hosts)
        return _stream(client, args, hosts)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The console script: parse, configure logging, run; one line on stderr for an error."""
    args = parse_args(argv)
    configure_logging(args.log_level)
    if threading.current_thread() is threading.main_thread():
        _interrupts.install()
    if not (args.movie or args.ph):
        return _fail("--no-movie and --no-ph leave nothing to stream", 2)
    if args.refresh_period <= 0 or (args.update_interval is not None and args.update_interval < 0):
        return _fail("--refresh-period must be > 0 and --update-interval >= 0", 2)
    try:
        if args.init:
            # R-CFG-2: a typo in the --init file is reported before anything is sent.
            client_hp_io_config(args.init)
        return run(args)
    except BrokenPipeError:
        return _closed_stdout()
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
        return _fail(str(exc), 2)
    except (ConnectionError, RpcError, PanosetiDaqError, OSError) as exc:
        return _fail(str(exc), 1)


def _closed_stdout() -> int:
    """R-OPS-4: the reader of our output went away (`| head`): end quietly, exit 0. Later
    writes, and Python's own flush at exit, go to /dev/null instead of failing again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


def _fail(message: str, code: int) -> int:
    print(f"panoseti-daq: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
