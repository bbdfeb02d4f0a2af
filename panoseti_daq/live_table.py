"""The live table of what a client receives, per host, module and data product (sans-IO).

`LiveTable.update(image, now, host)` takes one frame (PanoFrame, parsed dict or PanoImage) with
the time it arrived and the server it came from; `render(now)` gives a rich Table: frames, rate
over a sliding window, newest timestamp and its clock, brightest pixel, gaps and the file.

A *gap* is a jump in the frames a row receives: a frame number that skips ahead within one file,
or a file with a later seqno (of the same run and product) whose first frames were not seen.
`skipped` counts the frames known to be missing; a skipped whole file adds only what is known.
With a StreamImages update interval above 0 the server sends one frame per interval
(R-STREAM-9), so gaps are then expected; with interval 0 (R-STREAM-10) a gap means a frame was
dropped on its way (R-STREAM-11) or the source skipped it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from . import pff
from .client.aio import as_frame
from .frames import PanoFrame

__all__ = ["LiveTable", "RowStats"]

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
    gaps: int = 0
    skipped: int = 0


def _frames_skipped(row: RowStats, file: str, frame_number: int) -> int | None:
    """Frames known missing between the row's last frame and this one; None: no gap."""
    if row.frames == 0:
        return None
    if file == row.file:
        jump = frame_number - row.frame_number - 1
        return jump if jump > 0 else None
    old, new = pff.DataFileName.parse(row.file), pff.DataFileName.parse(file)
    if old is None or new is None:
        return None
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


class LiveTable:
    """Counts, rates and gaps of received frames per (host, module, product)."""

    def __init__(self, title: str = "live frames", rate_window_s: float = RATE_WINDOW_S) -> None:
        self.title = title
        self.rate_window_s = rate_window_s
        self.rows: dict[tuple[str, int, str], RowStats] = {}
        self.started: float | None = None

    @property
    def total(self) -> int:
        return sum(row.frames for row in self.rows.values())

    def update(self, image: PanoFrame | Mapping[str, Any], now: float, host: str = "") -> None:
        """Count one frame that arrived at `now` (seconds, any monotonic clock) from `host`."""
        frame = as_frame(image)
        if self.started is None:
            self.started = now
        key = (host, frame.module_id, frame.product.name)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = RowStats(kind=frame.type.name, first_arrival=now)
        skipped = _frames_skipped(row, frame.file, frame.frame_number)
        if skipped is not None:
            row.gaps += 1
            row.skipped += skipped
        row.frames += 1
        row.arrivals.append(now)
        self._expire(row, now)
        time = frame.time
        row.timestamp = time.pandas_timestamp
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

    def render(self, now: float) -> Table:
        """The table as it stands at `now`."""
        elapsed = now - (self.started if self.started is not None else now)
        table = Table(title=f"{self.title} ({elapsed:.0f} s, {self.total} frames)")
        numeric = ("frames", "rate /s", "max", "gaps", "skipped")
        for column in (
            "host",
            "module",
            "product",
            "type",
            "frames",
            "rate /s",
            "newest timestamp",
            "clock",
            "max",
            "gaps",
            "skipped",
            "file#frame",
        ):
            table.add_column(column, justify="right" if column in numeric else "left")
        for (host, module, product), row in sorted(self.rows.items()):
            name = pff.DataFileName.parse(row.file)
            where = f"seqno_{name.seqno}" if name else row.file
            table.add_row(
                host,
                str(module),
                product,
                row.kind,
                str(row.frames),
                f"{self.rate(row, now):.1f}",
                str(row.timestamp)[:29],
                "WR" if row.wr_valid else "host",
                str(row.peak),
                str(row.gaps),
                str(row.skipped),
                f"{where}#{row.frame_number}",
            )
        return table
