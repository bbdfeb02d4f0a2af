"""A plot of TIM-TP qErr over time, one series per DAQ node (matplotlib, as panoseti_daq.plots).

`QErrPlot.update(message)` takes UbloxMessages (anything but TIM-TP with a valid qErr is
ignored); `refresh()` redraws, `save(path)` writes a PNG (without a display: matplotlib's Agg
backend). The x axis is the UTC time of each pulse, or the server's read time when the chip's
time base is not UTC; qErr in ns, the unit of the chip's clock grid (±4 ns in the recording).
Where pulses are missing (a gap of more than three typical intervals) the line breaks.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime

import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from ..plots import _LivePlot, format_utc
from .records import UbloxMessage

__all__ = ["QErrPlot"]


class QErrPlot(_LivePlot):
    """qErr (ns) of every TIM-TP over time, per node; `labels` names the nodes in the legend."""

    def __init__(
        self, labels: dict[str, str] | None = None, plot_update_interval: float | None = 1.0
    ) -> None:
        self.plot_update_interval = plot_update_interval
        self.labels = dict(labels or {})
        self.series: dict[str, tuple[list[datetime], list[float]]] = {}
        self.figure = plt.figure(figsize=(7.5, 4.0), layout="constrained")
        self.axes = self.figure.subplots()

    @property
    def points(self) -> int:
        return sum(len(times) for times, _ in self.series.values())

    def update(self, message: UbloxMessage) -> None:
        """Add the qErr of a TIM-TP (others, and an invalid qErr, are ignored)."""
        qerr = message.qerr_ps
        when = message.utc or message.host_time
        if qerr is None or when is None:
            return
        times, values = self.series.setdefault(message.host, ([], []))
        times.append(when)
        values.append(qerr / 1000)
        self._auto_refresh()

    def refresh(self) -> None:
        ax = self.axes
        ax.clear()
        for host, (times, values) in sorted(self.series.items()):
            label = self.labels.get(host, host)
            xs, ys = _with_gaps(times, values)
            ax.plot(xs, ys, marker=".", linewidth=0.8, markersize=4, label=label)  # type: ignore[arg-type]
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_ylabel("qErr (ns)")
        ax.set_xlabel("UTC")
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        every = [t for times, _ in self.series.values() for t in times]
        if every:
            span = f"{format_utc(min(every))[:19]} .. {format_utc(max(every))[11:19]} UTC"
            ax.set_title(f"TIM-TP quantisation error, {self.points} pulses, {span}", fontsize=9)
            ax.legend(fontsize=8, loc="upper right")
        else:
            ax.set_title("TIM-TP quantisation error: no pulses yet", fontsize=9)
        super().refresh()


def _with_gaps(times: list[datetime], values: list[float]) -> tuple[list[datetime], list[float]]:
    """The points with a NaN where pulses are missing (more than 3 typical intervals apart),
    so that the line breaks there instead of bridging the gap."""
    if len(times) < 3:
        return times, values
    steps = sorted((b - a).total_seconds() for a, b in itertools.pairwise(times))
    limit = 3 * max(steps[len(steps) // 2], 1e-3)
    xs, ys = [times[0]], [values[0]]
    for (before, when), value in zip(itertools.pairwise(times), values[1:], strict=True):
        if (when - before).total_seconds() > limit:
            xs.append(before + (when - before) / 2)
            ys.append(math.nan)
        xs.append(when)
        ys.append(value)
    return xs, ys
