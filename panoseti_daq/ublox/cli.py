"""`panoseti-ublox` (also `python -m panoseti_daq.ublox.cli`): UbloxControl on the command line.

    panoseti-ublox init f9t_config.json5 [--uid UID ...] [--force]
    panoseti-ublox capture f9t_config.json5 [--uid UID ...] [--pattern RE ...] [--plot qerr.png]
    panoseti-ublox poll f9t_config.json5 PATTERN [PATTERN ...] [--uid UID]
    panoseti-ublox plot recording.jsonl [...] [--output qerr.png]

`capture` and `poll` also take a server address (host:port) instead of the file. `capture`
shows a live table per node (newest TIM-TP qErr, NAV-TIMEUTC accuracy and validity, counts,
age, notes) until Ctrl+C, SIGTERM or `--duration`; into a pipe it prints plain lines at every
refresh. `capture --record` appends the messages to a JSON Lines file (the original's
`identity` and `payload_b64`, plus host and read time) that `plot` turns into a PNG.
Exit codes: 0 done (a capture ended by Ctrl+C too), 1 a node failed or refused, 2 bad
arguments or configuration, 130 init or poll interrupted.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import anyio

from ..errors import PanosetiDaqError, RpcError, first_leaf_exception
from ..logs import LOG_LEVELS, configure_logging
from .client import ConfigSource, UbloxClient, UbloxStream, parse_target
from .protocol import PatternError, compile_patterns
from .records import UbloxMessage, read_recording, recording_line
from .settings import F9tSettingsError
from .table import TimingTable

log = logging.getLogger("panoseti_daq.ublox.cli")

PROG = "panoseti-ublox"
DEFAULT_PATTERNS = ("TIM-TP$", "NAV-TIMEUTC$")
# Fields of every message that say nothing about its content (R-UBX-CAP-5 metadata).
_METADATA = frozenset({"identity", "length", "msgmode", "msg_cls", "msg_id", "payload"})


class UsageError(ValueError):
    """A bad argument: the message names it and what would be valid."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Configure the u-blox ZED-F9T timing receivers of DAQ nodes and watch "
        "their timing messages through their UbloxControl servers.",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="warning")
    # Also after the command (`capture CONFIG --log-level info`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, *, target_ok: bool) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        what = "f9t_config.json5 (or a server's host:port)" if target_ok else "f9t_config.json5"
        sub.add_argument("config", metavar="CONFIG", help=what)
        sub.add_argument(
            "--uid",
            action="append",
            default=[],
            help="only this chip (its f9t_uid, or its node as host:port); repeat for several",
        )
        return sub

    init = add(
        "init",
        "configure each chip of the file (check its model and UID, apply and verify the "
        "settings, check that its messages flow)",
        target_ok=False,
    )
    init.add_argument(
        "--force", action="store_true", help="end the captures running on a node and re-init"
    )
    init.add_argument(
        "--timeout", type=_positive, default=60.0, metavar="S", help="seconds per node (default 60)"
    )

    capture = add(
        "capture", "live table of each node's newest qErr, tAcc and UTC validity", target_ok=True
    )
    capture.add_argument(
        "--pattern",
        action="append",
        default=[],
        help="messages whose name starts with this regular expression (repeatable; "
        f"default: {' '.join(DEFAULT_PATTERNS)}; '.' for every message)",
    )
    capture.add_argument("--duration", type=_positive, metavar="S", help="stop after S seconds")
    capture.add_argument(
        "--max-messages", type=int, default=0, metavar="N", help="stop after N messages (0: never)"
    )
    capture.add_argument(
        "--refresh-period",
        type=_positive,
        metavar="S",
        default=1.0,
        help="seconds between table refreshes (default 1)",
    )
    capture.add_argument("--plot", metavar="PNG", help="write a plot of qErr over time there")
    capture.add_argument(
        "--record",
        metavar="JSONL",
        help="append every message there (JSON Lines: identity, payload_b64, host, host_time_ns)",
    )
    capture.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="retry a node that is down, not initialised or unplugged (default) instead of "
        "ending with its error",
    )

    plot = commands.add_parser(
        "plot",
        help="plot qErr over time from recordings (capture --record, or the original's "
        "ubx_packets.jsonl)",
        description="Plot the qErr of every TIM-TP of the recordings as a PNG.",
        parents=[common],
    )
    plot.add_argument("recordings", nargs="+", metavar="JSONL", help="recording file")
    plot.add_argument("--output", "-o", metavar="PNG", default="qerr.png", help="default qerr.png")

    poll = add("poll", "ask a chip for the messages named and print its answers", target_ok=True)
    poll.add_argument(
        "patterns",
        nargs="+",
        metavar="PATTERN",
        help="regular expression matched at the start "
        "of pollable message names, e.g. MON-VER or 'NAV-(CLOCK|TIMEUTC)$'",
    )
    poll.add_argument(
        "--timeout", type=_positive, default=30.0, metavar="S", help="seconds (default 30)"
    )
    return parser


def _source(config: str, *, target_ok: bool) -> ConfigSource | list[str]:
    """The f9t_config file, or (for capture and poll) a host:port; UsageError otherwise."""
    path = Path(config).expanduser()
    if path.is_file():
        return path
    if target_ok and not path.exists() and parse_target(config) is not None:
        return [config]
    if path.is_dir():
        raise UsageError(f"{config} is a directory: give an f9t_config.json5 file")
    if target_ok:
        raise UsageError(f"{config}: no such file; give an f9t_config.json5 or host:port")
    raise UsageError(f"{config}: no such file; give the f9t_config.json5 of the chips")


def _check_patterns(patterns: Sequence[str]) -> None:
    try:
        compile_patterns(list(patterns))
    except PatternError as exc:
        raise UsageError(str(exc)) from None


# -- init --------------------------------------------------------------------------------------
async def _init(args: argparse.Namespace) -> int:
    async with UbloxClient(_source(args.config, target_ok=False)) as client:
        names = client.resolve(args.uid)
        results = await client.init_f9t(names, force=args.force, timeout_s=args.timeout)
    for name, result in results.items():
        chip = f"{result.uid or 'chip'} at {name}"
        if result.ok:
            print(f"{chip}: initialised")
            lines = result.message.splitlines()
        else:
            print(f"{chip}: failed: {result.status}")
            lines = result.message.splitlines() or ["(no details)"]
        for line in lines:
            print(f"  {line}")
    failed = [r for r in results.values() if not r.ok]
    if failed and any(r.status == "FAILED_PRECONDITION" and "force" in r.message for r in failed):
        print("(--force ends the captures running on a node and initialises it anyway)")
    return 1 if failed else 0


# -- poll --------------------------------------------------------------------------------------
def describe(message: UbloxMessage) -> str:
    """One line for a polled message: its name and fields, or why it has none."""
    if not message.is_data:
        return f"{message.name or '-'}: {message.notice}"
    fields = " ".join(f"{k}={v}" for k, v in message.parsed.items() if k not in _METADATA)
    return f"{message.name}: {fields}" if fields else message.name


async def _poll(args: argparse.Namespace) -> int:
    _check_patterns(args.patterns)
    async with UbloxClient(_source(args.config, target_ok=True)) as client:
        names = client.resolve(args.uid)
        code = 0
        for name in names:
            if len(names) > 1:
                print(f"{name}:")
            try:
                messages = await client.poll(args.patterns, name, timeout_s=args.timeout)
            except RpcError as exc:
                print(f"{PROG}: {exc}", file=sys.stderr)
                code = 1
                continue
            for message in messages:
                print(describe(message))
    return code


# -- capture -----------------------------------------------------------------------------------
async def _capture(args: argparse.Namespace) -> int:
    patterns = args.pattern or list(DEFAULT_PATTERNS)
    _check_patterns(patterns)
    if args.max_messages < 0:
        raise UsageError(f"--max-messages {args.max_messages}: give 0 (no limit) or more")
    plot = None
    if args.plot:
        _check_png("--plot", args.plot)
        from .plot import QErrPlot

    async with UbloxClient(_source(args.config, target_ok=True)) as client:
        names = client.resolve(args.uid)
        labels = _labels(client, names)
        if args.plot:
            plot = QErrPlot(labels, plot_update_interval=None)
        table = TimingTable(labels=labels)
        table.started = time.monotonic()
        for name in names:
            table.row(name)
        view = _View(table, args.refresh_period, _recorder(args.record))
        failure: RpcError | None = None
        with view:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_on_signals, tg.cancel_scope.cancel)
                tg.start_soon(view.refresh_every, plot, args.plot)
                if args.duration:
                    tg.start_soon(_cancel_after, args.duration, tg.cancel_scope.cancel)
                stream = client.capture(names, patterns, wait_for_ready=args.wait)
                try:
                    await _consume(stream, table, plot, view.record, args.max_messages)
                except RpcError as exc:
                    failure = exc
                tg.cancel_scope.cancel()
            view.show()
        if plot is not None:
            plot.refresh()
            plot.save(args.plot)
            print(f"qErr plot: {args.plot} ({plot.points} pulses)")
        if view.recorded:
            print(f"recorded {view.recorded} messages to {args.record}")
    if failure is not None:
        raise failure
    return 0


def _labels(client: UbloxClient, names: list[str]) -> dict[str, str]:
    """The chip UID of each node, when the config names one and no two nodes share it."""
    uids = [client.nodes[name].uid for name in names]
    return {
        name: uid for name, uid in zip(names, uids, strict=True) if uid and uids.count(uid) == 1
    }


def _check_png(option: str, path: str) -> None:
    if not path.lower().endswith(".png"):
        raise UsageError(f"{option} {path}: give a file name ending in .png")


def _recorder(path: str | None) -> IO[str] | None:
    """The recording file, opened for appending (a night's captures may share one)."""
    if path is None:
        return None
    try:
        return open(path, "a", encoding="utf-8")  # closed by _View
    except OSError as exc:
        raise UsageError(f"--record {path}: {exc.strerror or exc}") from None


async def _consume(
    stream: UbloxStream,
    table: TimingTable,
    plot: Any,
    record: Callable[[UbloxMessage], None],
    max_messages: int,
) -> None:
    async with stream:
        async for message in stream:
            table.update(message, time.monotonic())
            record(message)
            if plot is not None:
                plot.update(message)
            if max_messages and table.total >= max_messages:
                return


async def _on_signals(stop: Callable[[], Any]) -> None:
    """SIGINT and SIGTERM end a capture as its normal end: the final table is printed."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop()
            return


async def _cancel_after(delay_s: float, stop: Callable[[], Any]) -> None:
    await anyio.sleep(delay_s)
    stop()


class _View:
    """The table on a terminal (redrawn in place) or into a pipe (plain lines per refresh)."""

    def __init__(self, table: TimingTable, period_s: float, recording: IO[str] | None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.table = table
        self.period_s = period_s
        self.recording = recording
        self.recorded = 0
        self.console = Console()
        self.live_on = self.console.is_terminal
        self.live = Live(console=self.console, auto_refresh=False) if self.live_on else None

    def __enter__(self) -> _View:
        if self.live is not None:
            self.live.start()
        else:
            print(self.table.explanation(), flush=True)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.live is not None:
            self.live.stop()
        if self.recording is not None:
            self.recording.close()

    def record(self, message: UbloxMessage) -> None:
        """Append a chip's message to the recording, if there is one (not notices)."""
        if self.recording is not None and message.is_data and message.frame:
            self.recording.write(recording_line(message) + "\n")
            self.recorded += 1

    def show(self) -> None:
        now = time.monotonic()
        if self.live is not None:
            self.live.update(self.table.render(now), refresh=True)
        else:
            print("\n".join(self.table.lines(now)), flush=True)

    async def refresh_every(self, plot: Any, plot_path: str | None) -> None:
        while True:
            await anyio.sleep(self.period_s)
            self.show()
            if self.recording is not None:
                self.recording.flush()
            if plot is not None and plot_path:
                plot.refresh()
                plot.save(plot_path)


# -- plot --------------------------------------------------------------------------------------
async def _plot(args: argparse.Namespace) -> int:
    _check_png("--output", args.output)
    from .plot import QErrPlot

    plot = QErrPlot(plot_update_interval=None)
    for path in args.recordings:
        name = Path(path).name
        for message in read_recording(path):
            # The original's recordings name no host: the file names the series.
            plot.update(replace(message, host=message.host or name))
    if not plot.points:
        raise UsageError(f"no TIM-TP with a valid qErr in {', '.join(args.recordings)}")
    plot.refresh()
    plot.save(args.output)
    print(f"qErr plot: {args.output} ({plot.points} pulses)")
    return 0


# -- entry point -------------------------------------------------------------------------------
_COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "init": _init,
    "capture": _capture,
    "poll": _poll,
    "plot": _plot,
}


def main(argv: list[str] | None = None) -> int:
    """The console script: one line on stderr per error, the exit codes of the module doc."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(anyio.run(_COMMANDS[args.command], args))
    except BaseException as exc:
        # Errors from inside the client come wrapped in task groups' exception groups.
        return _exit_code(first_leaf_exception(exc), args)


def _exit_code(exc: BaseException, args: argparse.Namespace) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, BrokenPipeError):
        # The reader went away (`| head`): end quietly, and let nothing write to the pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if isinstance(exc, F9tSettingsError):
        for problem in exc.problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        return 2
    if isinstance(exc, RpcError) and "not initialized" in exc.details:
        return _fail(f"{exc} (initialise it first: {PROG} init F9T_CONFIG)", 1)
    if isinstance(exc, (RpcError, ConnectionError)):
        return _fail(str(exc), 1)
    if isinstance(exc, (ValueError, OSError, PanosetiDaqError)):
        return _fail(str(exc), 2)
    raise exc


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
