"""Live plots of PANOSETI images with matplotlib (R-UI-2, R-UI-3).

- `PanoImagePreviewer`: per module, the newest movie-mode and pulse-height image as colour maps
  with a colour bar, titled with module, product and timestamp.
- `PulseHeightDistribution`: per module, a histogram of pulse-height values (or of each image's
  maximum) accumulated over time, with logarithmic counts.

Both take frames from `update(image)`, where `image` is a PanoFrame or the parsed dict the
clients yield, and redraw on `refresh()`; on a display, `update()` also redraws every
`plot_update_interval` seconds (as the original's plots did; None: only `refresh()` redraws).
Without a display (matplotlib's Agg backend) use `save(path)` to write PNG files.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from . import pff
from .frames import PanoFrame
from .products import ImageType, product_for
from .timestamps import to_millisecond

__all__ = [
    "PanoImagePreviewer",
    "PulseHeightDistribution",
    "display_available",
    "format_utc",
    "image_fields",
    "is_synthetic",
]


@dataclass(frozen=True)
class ImageFields:
    """What the plots need of one image, from a PanoFrame or a parsed dict."""

    module_id: int
    kind: str  # "MOVIE" or "PULSE_HEIGHT"
    product: str
    pixels: np.ndarray
    timestamp: Any
    wr_valid: bool = False
    file: str = ""

    @property
    def synthetic(self) -> bool:
        """Whether the image is synthetic data (its file name says so), not an observation."""
        return is_synthetic(self.file)

    def caption(self) -> str:
        """`module 224 img16 (synthetic)` and, below, the UTC time and its clock."""
        label = f"module {self.module_id} {self.product}"
        if self.synthetic:
            label += " (SYNTHETIC data)"
        clock = "White Rabbit clock" if self.wr_valid else "host clock"
        return f"{label}\n{format_utc(self.timestamp)} ({clock})"


def is_synthetic(file: str) -> bool:
    """A data file name (R-NAME-2) with a `synthetic_...` field (panoseti_daq.synthetic)."""
    name = pff.DataFileName.parse(file) if file else None
    return name is not None and any(key == "synthetic" for key, _ in name.extra)


def format_utc(stamp: Any) -> str:
    """`2024-07-25 04:34:52.779 UTC`: rounded to the millisecond, so that a host-clock time
    held as a float never shows as `.799999999`; 'no timestamp' when there is none."""
    if stamp is None or str(stamp) == "NaT":  # R-CLI-11: a header with no usable time
        return "no timestamp"
    try:
        rounded = to_millisecond(stamp)
    except (TypeError, ValueError):
        return f"{stamp} UTC"
    return f"{rounded:%Y-%m-%d %H:%M:%S}.{rounded.microsecond // 1000:03d} UTC"


def image_fields(image: PanoFrame | Mapping[str, Any]) -> ImageFields:
    """The fields of a PanoFrame or a parsed dict (R-PARSE-1); the product from (type, shape,
    bytes per pixel) as R-DP-2 defines it."""
    if isinstance(image, PanoFrame):
        time = image.time
        return ImageFields(
            image.module_id,
            image.type.name,
            image.product.name,
            image.pixels,
            None if time.unix_ns is None else time.pandas_timestamp,
            time.wr_valid,
            image.file,
        )
    kind = image["type"]
    product = product_for(ImageType[kind], list(image["shape"]), image["bytes_per_pixel"])
    header = image.get("header") or {}
    return ImageFields(
        int(image["module_id"]),
        kind,
        product.name,
        np.asarray(image["image_array"]),
        header.get("pandas_unix_timestamp"),
        bool(header.get("wr_timestamp_valid", False)),
        str(image.get("file", "")),
    )


def display_available() -> bool:
    """Whether matplotlib draws on a screen (else plots are saved as files)."""
    return matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "template")


class _LivePlot:
    figure: Figure
    plot_update_interval: float | None = None
    _last_refresh: float = float("-inf")

    def refresh(self) -> None:
        """Bring the figure up to date; on a display, draw it and let the window process its
        events (without one, `save()` or `figure.canvas.draw()` renders it)."""
        self._last_refresh = time.monotonic()
        if display_available():
            self.figure.canvas.draw_idle()
            plt.pause(0.001)

    def _auto_refresh(self) -> None:
        """On a display, redraw from update() at most every `plot_update_interval` seconds, as
        the original did; without one (or with None) only refresh() redraws."""
        if self.plot_update_interval is None or not display_available():
            return
        if time.monotonic() - self._last_refresh >= self.plot_update_interval:
            self.refresh()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure.savefig(path, dpi=90)
        return path

    def close(self) -> None:
        plt.close(self.figure)


class PanoImagePreviewer(_LivePlot):
    """The newest movie-mode and pulse-height image of each module (R-UI-2)."""

    def __init__(
        self,
        stream_movie_data: bool = True,
        stream_pulse_height_data: bool = True,
        module_ids: tuple[int, ...] = (),
        cmap: str = "viridis",
        plot_update_interval: float | None = 1.0,
    ) -> None:
        self.plot_update_interval = plot_update_interval
        self.kinds = [
            kind
            for kind, wanted in (
                ("MOVIE", stream_movie_data),
                ("PULSE_HEIGHT", stream_pulse_height_data),
            )
            if wanted
        ]
        if not self.kinds:
            raise ValueError("enable movie-mode or pulse-height data (or both)")
        self.module_ids = tuple(module_ids)
        self.cmap = cmap
        self.figure = plt.figure(figsize=(4.5 * len(self.kinds), 4.0), layout="constrained")
        self.figure.suptitle("PANOSETI live preview")
        self.axes: dict[tuple[int, str], Any] = {}
        self.images: dict[tuple[int, str], Any] = {}
        self.colorbars: dict[tuple[int, str], Any] = {}
        self.last: dict[tuple[int, str], tuple[np.ndarray, str]] = {}
        self._modules: list[int] = []

    def _layout(self, module: int) -> None:
        self._modules = sorted({*self._modules, module})
        self.figure.clear()
        self.figure.suptitle("PANOSETI live preview")
        self.figure.set_size_inches(4.5 * len(self.kinds), 3.6 * len(self._modules) + 0.4)
        grid = self.figure.subplots(len(self._modules), len(self.kinds), squeeze=False)
        self.axes, self.images, self.colorbars = {}, {}, {}
        for row, mod in enumerate(self._modules):
            for col, kind in enumerate(self.kinds):
                ax = grid[row][col]
                ax.set_xticks([])
                ax.set_yticks([])
                self.axes[(mod, kind)] = ax
                ax.set_title(f"module {mod} {kind.lower().replace('_', '-')}: waiting", fontsize=9)
                if (mod, kind) in self.last:
                    self._draw(mod, kind, *self.last[(mod, kind)])

    def _draw(self, module: int, kind: str, pixels: np.ndarray, title: str) -> None:
        ax = self.axes[(module, kind)]
        image = self.images.get((module, kind))
        data = np.asarray(pixels)
        if image is None or image.get_array().shape != data.shape:
            ax.clear()
            ax.set_xticks([])
            ax.set_yticks([])
            image = ax.imshow(data, cmap=self.cmap, origin="upper", interpolation="nearest")
            self.images[(module, kind)] = image
            colorbar = self.figure.colorbar(image, ax=ax, shrink=0.85)
            what = "pixel value" if kind == "MOVIE" else "pulse height"
            colorbar.set_label(f"{what} (ADC counts)", fontsize=8)
            self.colorbars[(module, kind)] = colorbar
        else:
            image.set_data(data)
        low, high = np.percentile(data, [1, 99.5]) if data.size else (0, 1)
        image.set_clim(float(low), float(max(high, low + 1)))
        ax.set_title(title, fontsize=9)
        self.last[(module, kind)] = (data, title)

    def update(self, image: PanoFrame | Mapping[str, Any]) -> None:
        """Show `image` in its module's panel (ignored if its module or kind is not shown)."""
        fields = image_fields(image)
        if fields.kind not in self.kinds:
            return
        if self.module_ids and fields.module_id not in self.module_ids:
            return
        if fields.module_id not in self._modules:
            self._layout(fields.module_id)
        self._draw(fields.module_id, fields.kind, fields.pixels, fields.caption())
        self._auto_refresh()


class PulseHeightDistribution(_LivePlot):
    """Per module, the accumulated distribution of pulse heights, log counts (R-UI-3).

    Every image given to `update()` is counted (exactly, per value). By default the x axis fits
    the data: integer-aligned bins over the smallest to the largest value seen in any module
    (at most MAX_BINS bins); `bins` fixes the edges instead, and values outside them are
    counted and named in the title.
    """

    MAX_BINS = 200
    _OFFSET = 32768  # pulse heights are int16

    def __init__(
        self,
        module_ids: tuple[int, ...] = (),
        bins: np.ndarray | None = None,
        per_event_max: bool = False,
        plot_update_interval: float | None = 1.0,
    ) -> None:
        self.plot_update_interval = plot_update_interval
        self.module_ids = tuple(module_ids)
        self.fixed_bins = None if bins is None else np.asarray(bins)
        self.per_event_max = per_event_max
        self._values: dict[int, np.ndarray] = {}  # per module: count of each int16 value
        self.images_seen: dict[int, int] = {}
        self.synthetic: dict[int, bool] = {}
        self.figure = plt.figure(figsize=(6.5, 4.0), layout="constrained")
        self.axes: dict[int, Any] = {}

    def update(self, image: PanoFrame | Mapping[str, Any]) -> None:
        """Add a pulse-height image to its module's histogram (movie images are ignored)."""
        fields = image_fields(image)
        if fields.kind != "PULSE_HEIGHT":
            return
        if self.module_ids and fields.module_id not in self.module_ids:
            return
        pixels = np.asarray(fields.pixels, dtype=np.int64)
        values = pixels.max(keepdims=True) if self.per_event_max else pixels.ravel()
        module = fields.module_id
        if module not in self._values:
            self._values[module] = np.zeros(2 * self._OFFSET, dtype=np.int64)
            self._layout()
        found, counts = np.unique(values, return_counts=True)
        self._values[module][found + self._OFFSET] += counts
        self.images_seen[module] = self.images_seen.get(module, 0) + 1
        self.synthetic[module] = self.synthetic.get(module, False) or fields.synthetic
        self._auto_refresh()

    def _range(self) -> tuple[int, int] | None:
        """The smallest and largest value seen in any module, or None before any."""
        if not self._values:
            return None
        seen = np.flatnonzero(np.sum(list(self._values.values()), axis=0))
        if len(seen) == 0:
            return None
        return int(seen[0]) - self._OFFSET, int(seen[-1]) - self._OFFSET

    @property
    def bins(self) -> np.ndarray:
        """The bin edges: fixed, or fitted to the data (half-integer edges, MAX_BINS at most)."""
        if self.fixed_bins is not None:
            return self.fixed_bins
        span = self._range() or (0, 0)
        low, high = span
        width = max(1, -(-(high - low + 1) // self.MAX_BINS))
        count = -(-(high - low + 1) // width)
        return low - 0.5 + width * np.arange(count + 1)

    @property
    def counts(self) -> dict[int, np.ndarray]:
        """Per module, the counts in `bins`."""
        return {module: self._histogram(module, self.bins) for module in self._values}

    @property
    def outside(self) -> dict[int, int]:
        """Per module, the values beyond `bins` (always 0 when the axis fits the data)."""
        edges = self.bins
        return {
            module: int(self._values[module].sum() - self._histogram(module, edges).sum())
            for module in self._values
        }

    def _histogram(self, module: int, edges: np.ndarray) -> np.ndarray:
        raw = self._values[module]
        present = np.flatnonzero(raw)
        counts, _ = np.histogram(present - self._OFFSET, bins=edges, weights=raw[present])
        return counts.astype(np.int64)

    def _layout(self) -> None:
        self.figure.clear()
        modules = sorted(self._values)
        grid = self.figure.subplots(len(modules), 1, squeeze=False)
        self.figure.set_size_inches(6.5, 2.8 * len(modules) + 0.6)
        self.axes = {module: grid[i][0] for i, module in enumerate(modules)}

    def refresh(self) -> None:
        what = "per-image maximum" if self.per_event_max else "pixel pulse height"
        edges = self.bins
        span = self._range()
        outside = self.outside
        for module, ax in self.axes.items():
            ax.clear()
            counts = self._histogram(module, edges)
            ax.stairs(counts, edges, fill=True)
            ax.set_yscale("log")
            ax.set_xlim(float(edges[0]), float(edges[-1]))
            ax.set_xlabel(f"{what} (ADC counts)")
            ax.set_ylabel("count")
            title = f"module {module}: {self.images_seen[module]} images"
            if span is not None and self.fixed_bins is None:
                title += f", values {span[0]}..{span[1]}"
            if outside[module]:
                title += f", {outside[module]} values outside the bins"
            if self.synthetic.get(module):
                title += " (SYNTHETIC data)"
            ax.set_title(title, fontsize=9)
        super().refresh()
