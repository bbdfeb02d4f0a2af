"""The live table of what a client receives: per module and image type (sans-IO).

`LiveTable.update(image, now)` takes frames (PanoFrame or parsed dicts) with the time they
arrived; `render(now)` gives a rich Table: frames, rate over the last few seconds, newest
timestamp and its clock, brightest pixel, gaps (frames the server skipped or dropped, seen as
jumps in frame numbers within a file), and the file.
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

__all__ = ["LiveTable"]

RATE_WINDOW_S = 5.0


@dataclass
class _Row:
    frames: int = 0
    arrivals: deque[float] = field(default_factory=deque)
    timestamp: Any = None
    wr_valid: bool = False
    peak: int = 0
    file: str = ""
    frame_number: int = -1
    gaps: int = 0


class LiveTable:
    """Counts and rates of received frames per (module, image type)."""

    def __init__(self, title: str = "live frames") -> None:
        self.title = title
        self.rows: dict[tuple[int, str], _Row] = {}
        self.started: float | None = None

    @property
    def total(self) -> int:
        return sum(row.frames for row in self.rows.values())

    def update(self, image: PanoFrame | Mapping[str, Any], now: float) -> None:
        frame = as_frame(image)
        if self.started is None:
            self.started = now
        row = self.rows.setdefault((frame.module_id, frame.type.name), _Row())
        if row.file == frame.file and frame.frame_number > row.frame_number + 1:
            row.gaps += frame.frame_number - row.frame_number - 1
        row.frames += 1
        row.arrivals.append(now)
        row.timestamp = frame.time.pandas_timestamp
        row.wr_valid = frame.time.wr_valid
        row.peak = int(frame.pixels.max())
        row.file = frame.file
        row.frame_number = frame.frame_number

    def rate(self, row: _Row, now: float) -> float:
        while row.arrivals and now - row.arrivals[0] > RATE_WINDOW_S:
            row.arrivals.popleft()
        span = min(RATE_WINDOW_S, max(now - (self.started or now), 1e-3))
        return len(row.arrivals) / span

    def render(self, now: float) -> Table:
        elapsed = now - (self.started or now)
        table = Table(title=f"{self.title} ({elapsed:.0f} s, {self.total} frames)")
        for column in (
            "module",
            "type",
            "frames",
            "rate /s",
            "newest timestamp",
            "clock",
            "max",
            "gaps",
            "file#frame",
        ):
            table.add_column(
                column,
                justify="right" if column in ("frames", "rate /s", "max", "gaps") else "left",
            )
        for (module, kind), row in sorted(self.rows.items()):
            name = pff.DataFileName.parse(row.file)
            where = f"seqno_{name.seqno}" if name else row.file
            table.add_row(
                str(module),
                kind,
                str(row.frames),
                f"{self.rate(row, now):.1f}",
                str(row.timestamp)[:29],
                "WR" if row.wr_valid else "host",
                str(row.peak),
                str(row.gaps),
                f"{where}#{row.frame_number}",
            )
        return table
