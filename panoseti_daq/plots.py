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

from .frames import PanoFrame
from .products import ImageType, product_for

__all__ = ["PanoImagePreviewer", "PulseHeightDistribution", "display_available", "image_fields"]


@dataclass(frozen=True)
class ImageFields:
    """What the plots need of one image, from a PanoFrame or a parsed dict."""

    module_id: int
    kind: str  # "MOVIE" or "PULSE_HEIGHT"
    product: str
    pixels: np.ndarray
    timestamp: Any


def image_fields(image: PanoFrame | Mapping[str, Any]) -> ImageFields:
    """The fields of a PanoFrame or a parsed dict (R-PARSE-1); the product from (type, shape,
    bytes per pixel) as R-DP-2 defines it."""
    if isinstance(image, PanoFrame):
        return ImageFields(
            image.module_id,
            image.type.name,
            image.product.name,
            image.pixels,
            image.time.pandas_timestamp,
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
            self.colorbars[(module, kind)] = self.figure.colorbar(image, ax=ax, shrink=0.85)
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
        title = f"module {fields.module_id} {fields.product}\n{fields.timestamp}"
        self._draw(fields.module_id, fields.kind, fields.pixels, title)
        self._auto_refresh()


class PulseHeightDistribution(_LivePlot):
    """Per module, the accumulated distribution of pulse heights, log counts (R-UI-3)."""

    def __init__(
        self,
        module_ids: tuple[int, ...] = (),
        bins: np.ndarray | None = None,
        per_event_max: bool = False,
        plot_update_interval: float | None = 1.0,
    ) -> None:
        self.plot_update_interval = plot_update_interval
        self.module_ids = tuple(module_ids)
        self.bins = np.arange(-100, 4097, 16) if bins is None else np.asarray(bins)
        self.per_event_max = per_event_max
        self.counts: dict[int, np.ndarray] = {}
        self.outside: dict[int, int] = {}  # values beyond the bins, per module
        self.images_seen: dict[int, int] = {}
        self.figure = plt.figure(figsize=(6.5, 4.0), layout="constrained")
        self.axes: dict[int, Any] = {}

    def update(self, image: PanoFrame | Mapping[str, Any]) -> None:
        """Add a pulse-height image to its module's histogram (movie images are ignored)."""
        fields = image_fields(image)
        if fields.kind != "PULSE_HEIGHT":
            return
        if self.module_ids and fields.module_id not in self.module_ids:
            return
        values = fields.pixels.max(keepdims=True) if self.per_event_max else fields.pixels
        counts, _ = np.histogram(values, bins=self.bins)
        module = fields.module_id
        if module not in self.counts:
            self.counts[module] = np.zeros(len(self.bins) - 1, dtype=np.int64)
            self.outside[module] = 0
            self._layout()
        self.counts[module] += counts
        self.outside[module] += int(values.size - counts.sum())
        self.images_seen[module] = self.images_seen.get(module, 0) + 1
        self._auto_refresh()

    def _layout(self) -> None:
        self.figure.clear()
        modules = sorted(self.counts)
        grid = self.figure.subplots(len(modules), 1, squeeze=False)
        self.figure.set_size_inches(6.5, 2.8 * len(modules) + 0.6)
        self.axes = {module: grid[i][0] for i, module in enumerate(modules)}

    def refresh(self) -> None:
        what = "per-image maximum" if self.per_event_max else "pixel pulse height"
        for module, ax in self.axes.items():
            ax.clear()
            ax.stairs(self.counts[module], self.bins, fill=True)
            ax.set_yscale("log")
            ax.set_xlabel(f"{what} (ADC)")
            ax.set_ylabel("count")
            title = f"module {module}: {self.images_seen[module]} images"
            if self.outside[module]:
                title += f", {self.outside[module]} values outside the bins"
            ax.set_title(title, fontsize=9)
        super().refresh()
