"""The live table of a UbloxControl capture: one row per DAQ node (loop-free).

`TimingTable.update(message, now)` takes one UbloxMessage with the time it arrived (seconds on
any monotonic clock); `render(now)` gives a rich renderable that fits 80 columns, `lines(now)` the
same as plain text lines (for a pipe or a file). Each row shows the newest TIM-TP qErr and the
newest NAV-TIMEUTC accuracy and validity of one node, how many messages came and how many the
server dropped, the age of the newest message, and the latest notice (a silent chip, a stream
that failed or is being retried).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .records import UbloxMessage

__all__ = ["NodeRow", "TimingTable"]

NODE_WIDTH = 21  # host:port of an IPv4 address


@dataclass
class NodeRow:
    """What has arrived from one node."""

    messages: int = 0
    dropped: int = 0
    last_arrival: float | None = None
    qerr_ps: int | None = None
    qerr_invalid: bool = False
    pulse_utc: datetime | None = None
    t_acc_ns: int | None = None
    utc_valid: bool | None = None
    epoch_utc: datetime | None = None
    notes: list[str] = field(default_factory=list)  # since the newest message, distinct

    @property
    def note(self) -> str:
        """The first notice since the newest message (its cause) and the latest one."""
        if len(self.notes) > 1:
            return f"{self.notes[0]}; then {self.notes[-1]}"
        return self.notes[0] if self.notes else ""


class TimingTable:
    """Newest qErr, tAcc and UTC validity per node; `labels` maps node names to what the
    table shows for them (e.g. the chip's UID)."""

    def __init__(self, title: str = "F9T timing", labels: dict[str, str] | None = None) -> None:
        self.title = title
        self.labels = dict(labels or {})
        self.rows: dict[str, NodeRow] = {}
        self.started: float | None = None

    def row(self, host: str) -> NodeRow:
        """The row of `host`, made empty on first use (a node with nothing yet still shows)."""
        return self.rows.setdefault(host, NodeRow())

    @property
    def total(self) -> int:
        return sum(row.messages for row in self.rows.values())

    def update(self, message: UbloxMessage, now: float) -> None:
        """Take one message (of any kind) that arrived at `now`."""
        if self.started is None:
            self.started = now
        row = self.row(message.host)
        if not message.is_data:
            if message.notice not in row.notes:
                # The first stays (an unplug), the latest replaces the one before (retries).
                row.notes[1:] = [message.notice]
            return
        row.messages += 1
        row.dropped += message.dropped_before
        row.last_arrival = now
        row.notes.clear()
        if message.name == "TIM-TP":
            row.qerr_ps = message.qerr_ps
            row.qerr_invalid = message.qerr_ps is None
            row.pulse_utc = message.utc
        elif message.name == "NAV-TIMEUTC":
            row.t_acc_ns = message.t_acc_ns
            row.utc_valid = message.utc_valid
            row.epoch_utc = message.utc

    # -- presentation ----------------------------------------------------------------------
    def heading(self, now: float) -> str:
        elapsed = now - (self.started if self.started is not None else now)
        dates = {row.epoch_utc.date() for row in self.rows.values() if row.epoch_utc}
        dates |= {row.pulse_utc.date() for row in self.rows.values() if row.pulse_utc}
        parts = [f"{elapsed:.0f} s", f"{self.total} messages"]
        if len(dates) == 1:
            parts.append(f"UTC {dates.pop()}")
        return f"{self.title} ({', '.join(parts)})"

    @staticmethod
    def explanation() -> str:
        return (
            "times UTC; qErr: the next pulse's; UTC: validUTC; "
            "lost: dropped by the server; age: of the newest message"
        )

    def _cells(self, now: float, compact: bool) -> list[list[str]]:
        """Per node: label, qErr, pulse, tAcc, UTC, msgs, lost, age, note; `compact` writes
        large values short (with a unit) so that the table keeps to 80 columns."""
        count: Callable[[int], str] = _count if compact else str
        cells = []
        for host, row in sorted(self.rows.items()):
            if row.qerr_ps is not None:
                qerr = _picoseconds(row.qerr_ps) if compact else str(row.qerr_ps)
            else:
                qerr = "invalid" if row.qerr_invalid else "-"
            valid = {None: "-", True: "yes", False: "no"}[row.utc_valid]
            if row.last_arrival is None:
                age = "-"
            else:
                age_s = now - row.last_arrival
                age = _age(age_s) if compact else f"{age_s:.1f}"
            if row.t_acc_ns is None:
                t_acc = "-"
            else:
                t_acc = _nanoseconds(row.t_acc_ns) if compact else str(row.t_acc_ns)
            cells.append(
                [
                    self.labels.get(host, host),
                    qerr,
                    _clock(row.pulse_utc),
                    t_acc,
                    valid,
                    count(row.messages),
                    count(row.dropped),
                    age,
                    row.note,
                ]
            )
        return cells

    _COLUMNS = (
        ("node", "left"),
        ("qErr ps", "right"),
        ("pulse", "left"),
        ("tAcc ns", "right"),
        ("UTC", "left"),
        ("msgs", "right"),
        ("lost", "right"),
        ("age s", "right"),
    )

    def render(self, now: float) -> Group:
        """The table at `now` in 80 columns (a node's address beyond NODE_WIDTH characters is
        cut with an ellipsis), then each node's note on lines of its own, wrapped."""
        table = Table(
            title=self.heading(now),
            caption=self.explanation(),
            box=None,
            pad_edge=False,
            padding=(0, 1),
            collapse_padding=True,
        )
        for name, justify in self._COLUMNS:
            width = NODE_WIDTH if name == "node" else None
            table.add_column(
                name,
                justify=justify,  # type: ignore[arg-type]
                no_wrap=True,
                overflow="ellipsis",
                max_width=width,
            )
        notes = []
        for values in self._cells(now, compact=True):
            table.add_row(*values[:-1])
            if values[-1]:
                notes.append(Text(f"{values[0]}: {values[-1]}", style="yellow"))
        return Group(table, *notes)

    def lines(self, now: float) -> list[str]:
        """The table as plain lines: the heading, then one `key=value` line per node."""
        out = [self.heading(now)]
        for values in self._cells(now, compact=False):
            node, qerr, pulse, t_acc, valid, count, lost, age, note = values
            line = (
                f"  {node}: qErr_ps={qerr} pulse={pulse} tAcc_ns={t_acc} utc_ok={valid} "
                f"msgs={count} lost={lost} age_s={age}"
            )
            out.append(f"{line} note={note}" if note else line)
        return out


def _clock(stamp: datetime | None) -> str:
    return "-" if stamp is None else f"{stamp:%H:%M:%S}"


def _count(value: int) -> str:
    return str(value) if value < 10_000_000 else f"{value / 1e6:.1f}M"


def _picoseconds(value: int) -> str:
    """qErr: ps up to ±999999 (the chip's grid is a few ns), µs beyond."""
    return str(value) if abs(value) < 1_000_000 else f"{value / 1e6:.0f}us"


def _nanoseconds(value: int) -> str:
    """tAcc: ns up to 999999, then ms or s (a chip without a fix reports up to 2^32-1 ns)."""
    if value < 1_000_000:
        return str(value)
    if value < 1_000_000_000:
        return f"{value / 1e6:.0f}ms"
    return f"{value / 1e9:.1f}s"


def _age(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.1f}"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
