"""The live table of what a client receives, per host, module and data product (sans-IO).

`LiveTable.update(image, now, host, dropped)` takes one frame (PanoFrame, parsed dict or
PanoImage) with the time it arrived, the server it came from and the frames the server said it
dropped just before it (R-CLI-10: `dropped_before` of a parsed dict, "dropped N frames" in a
message); `render(now)` gives a rich Table that fits 80 columns, `lines(now)` the same as plain
text lines (for a pipe or a file).

Frames missing between two a row receives are told apart by their cause:
- *lost*: frames the server dropped for this client because it fell behind (overruns,
  R-STREAM-11), as the server reports them: data loss on the way to this client;
- *skipped*: every other jump in frame numbers (within one file, or a later seqno of the same
  run whose first frames were not seen). With an update interval above 0 the server sends one
  frame per interval (R-STREAM-9): these are skipped by pacing, as asked. With interval 0
  (R-STREAM-10) they are frames the server never published: its hp_io scan takes the newest
  frame of each file every `update_interval_seconds` (R-SCAN-2), so a source writing faster
  than that is sampled, or the source itself skipped them.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from .. import pff
from ..frames import PanoFrame, as_frame
from ..timestamps import TimestampWarnings, to_millisecond

__all__ = ["LiveTable", "RowStats"]

log = logging.getLogger(__name__)

RATE_WINDOW_S = 5.0


@dataclass
class RowStats:
    """What has arrived for one (host, module, product)."""

    kind: str = ""  # MOVIE or PULSE_HEIGHT
    frames: int = 0
    arrivals: deque[float] = field(default_factory=deque)
    first_arrival: float = 0.0
    timestamp: Any = None
    wr_valid: bool = False
    peak: int = 0
    file: str = ""
    frame_number: int = -1
    gaps: int = 0  # jumps in frame numbers not explained by overruns
    skipped: int = 0  # frames in those jumps (pacing, or never published)
    overruns: int = 0  # frames that came with an overrun notice
    lost: int = 0  # frames the server dropped for this client (R-STREAM-11)


# Every frame's file name is parsed (twice) and a stream names few files: each parsed once.
_data_file_name = functools.lru_cache(maxsize=256)(pff.DataFileName.parse)


def _frames_skipped(row: RowStats, file: str, frame_number: int) -> int | None:
    """Frames known missing between the row's last frame and this one; None: no gap."""
    if row.frames == 0:
        return None
    old, new = _data_file_name(row.file), _data_file_name(file)
    if old is None or new is None:
        # Not frames of a PFF file (a Hashpipe socket's or an upload's): their numbers count
        # one connection's frames, and several connections share a name, so a jump says
        # nothing about frames missed.
        return None
    if file == row.file:
        jump = frame_number - row.frame_number - 1
        return jump if jump > 0 else None
    same_series = (old.dp, old.module, old.start, old.extra) == (
        new.dp,
        new.module,
        new.start,
        new.extra,
    )
    if not same_series or new.seqno <= old.seqno:
        return None
    if new.seqno == old.seqno + 1 and frame_number == 0:
        return None  # rollover to the next file: continuous
    return frame_number


def short_time(stamp: Any) -> str:
    """HH:MM:SS.mmm of a pandas Timestamp (UTC), rounded to the millisecond as the plots show
    it; '-' if None."""
    if stamp is None or str(stamp) == "NaT":  # R-CLI-11: a header with no usable time
        return "-"
    try:
        rounded = to_millisecond(stamp)
    except (TypeError, ValueError):
        return str(stamp)[:12]
    return f"{rounded:%H:%M:%S}.{rounded.microsecond // 1000:03d}"


class LiveTable:
    """Counts, rates, skipped and lost frames per (host, module, product).

    `interval_s` is the stream's update interval: it says what skipped frames mean (pacing
    when above 0, frames the server never published at 0).
    """

    def __init__(
        self,
        title: str = "live frames",
        rate_window_s: float = RATE_WINDOW_S,
        interval_s: float = 0.0,
    ) -> None:
        self.title = title
        self.rate_window_s = rate_window_s
        self.interval_s = interval_s
        self.rows: dict[tuple[str, int, str], RowStats] = {}
        self.started: float | None = None
        self._timestamp_warnings = TimestampWarnings(log)

    @property
    def total(self) -> int:
        return sum(row.frames for row in self.rows.values())

    def update(
        self,
        image: PanoFrame | Mapping[str, Any],
        now: float,
        host: str = "",
        dropped: int | None = None,
    ) -> None:
        """Count one frame that arrived at `now` (seconds, any monotonic clock) from `host`.

        `dropped`: the frames the server dropped for this client just before this one; by
        default the `dropped_before` of a parsed dict (R-CLI-10), else 0.
        """
        if dropped is None:
            dropped = int(image.get("dropped_before", 0)) if isinstance(image, Mapping) else 0
        frame = as_frame(image)
        if self.started is None:
            self.started = now
        key = (host, frame.module_id, frame.product.name)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = RowStats(kind=frame.type.name, first_arrival=now)
        if dropped > 0:
            row.overruns += 1
            row.lost += dropped
        jump = _frames_skipped(row, frame.file, frame.frame_number)
        if jump is not None:
            # The server's count of dropped frames covers (part of) the jump: the rest was
            # skipped. A later file begun at frame 0 is a gap of unknown size.
            skipped = jump - max(dropped, 0)
            if skipped > 0 or (jump == 0 and dropped <= 0):
                row.gaps += 1
                row.skipped += max(skipped, 0)
        row.frames += 1
        row.arrivals.append(now)
        self._expire(row, now)
        time = frame.time
        self._timestamp_warnings.check(host, frame.product.name, time)  # R-CLI-11
        row.timestamp = None if time.unix_ns is None else time.pandas_timestamp
        row.wr_valid = time.wr_valid
        row.peak = int(frame.pixels.max())
        row.file = frame.file
        row.frame_number = frame.frame_number

    def _expire(self, row: RowStats, now: float) -> None:
        while row.arrivals and now - row.arrivals[0] >= self.rate_window_s:
            row.arrivals.popleft()

    def rate(self, row: RowStats, now: float) -> float:
        """Frames per second over the last `rate_window_s` (or since the row's first frame)."""
        self._expire(row, now)
        since_first = now - row.first_arrival
        if since_first >= self.rate_window_s:
            return len(row.arrivals) / self.rate_window_s
        # Before the window has filled: intervals between arrivals since the first frame.
        return (len(row.arrivals) - 1) / since_first if since_first > 0 else 0.0

    # -- presentation ----------------------------------------------------------------------
    def _hosts(self) -> list[str]:
        return sorted({host for host, _, _ in self.rows})

    def heading(self, now: float) -> str:
        """The title line: elapsed time, frames, the one host and the date when they repeat."""
        elapsed = now - (self.started if self.started is not None else now)
        parts = [f"{elapsed:.0f} s", f"{self.total} frames"]
        hosts = self._hosts()
        if len(hosts) == 1 and hosts[0]:
            parts.insert(0, f"from {hosts[0]}")
        dates = sorted({str(row.timestamp)[:10] for row in self.rows.values() if row.timestamp})
        if len(dates) == 1:
            parts.append(f"UTC {dates[0]}")
        elif dates:
            # Rows of different days (the simulation's data are of several): the range.
            parts.append(f"UTC {dates[0]}..{dates[-1]}")
        return f"{self.title} ({', '.join(parts)})"

    def explanation(self) -> str:
        """What `skipped` and `lost` mean for this stream."""
        if self.interval_s > 0:
            skip = f"skip: not sent, by pacing (one frame per {self.interval_s:g} s, as asked)"
        else:
            skip = "skip: never published (the server's scan samples the newest frame)"
        return f"{skip}; lost: dropped by the server as this client fell behind"

    def _cells(self, now: float, with_host: bool) -> list[list[str]]:
        cells = []
        for (host, module, product), row in sorted(self.rows.items()):
            name = pff.DataFileName.parse(row.file)
            where = f"s{name.seqno}#{row.frame_number}" if name else f"#{row.frame_number}"
            values = [
                str(module),
                product,
                str(row.frames),
                f"{self.rate(row, now):.1f}",
                short_time(row.timestamp),
                "WR" if row.wr_valid else "host",
                str(row.peak),
                str(row.skipped),
                str(row.lost),
                where,
            ]
            cells.append([host, *values] if with_host else values)
        return cells

    _COLUMNS = (
        ("module", "right"),
        ("prod", "left"),
        ("frames", "right"),
        ("fps", "right"),
        ("newest UTC", "left"),
        ("clk", "left"),
        ("max", "right"),
        ("skip", "right"),
        ("lost", "right"),
        ("seq#frame", "left"),
    )

    def render(self, now: float) -> Table:
        """The table as it stands at `now`, in 80 columns: a host column only when there are
        several hosts, times of day (the date is in the title), fps = frames per second, clk =
        WR or host clock, seq#frame = the file's seqno and the frame number in it."""
        with_host = len(self._hosts()) > 1
        heading = self.heading(now)
        table = Table(
            title=heading,
            caption=self.explanation(),
            caption_justify="left",
            box=None,
            pad_edge=False,
            padding=(0, 1),
            collapse_padding=True,
            # As wide as the title, within 80 columns: a title wider than the columns wrapped.
            min_width=min(len(heading), 80),
        )
        columns = (("host", "left"), *self._COLUMNS) if with_host else self._COLUMNS
        for name, justify in columns:
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for values in self._cells(now, with_host):
            table.add_row(*values)
        return table

    def lines(self, now: float) -> list[str]:
        """The table as plain text lines (for a pipe or a file): the heading, then one line per
        row with its host, as `key=value` pairs."""
        out = [self.heading(now)]
        for values in self._cells(now, with_host=True):
            host, module, product, frames, rate, newest, clock, peak, skipped, lost, where = values
            out.append(
                f"  {host} module {module} {product}: frames={frames} fps={rate} "
                f"newest={newest} {clock} max={peak} skip={skipped} lost={lost} at={where}"
            )
        return out
