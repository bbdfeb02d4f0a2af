"""Live plots rendered with Agg: panels, pixel content, titles, histograms (R-UI-2, R-UI-3)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from panoseti_daq.plots import PanoImagePreviewer, PulseHeightDistribution
from tests.helpers import REAL_PH, movie_frame, ph_frame


def test_previewer_panels_show_each_modules_newest_images(tmp_path):
    """R-UI-2: one row per module, a movie and a pulse-height panel, pixels and titles."""
    previewer = PanoImagePreviewer(stream_movie_data=True, stream_pulse_height_data=True)
    first, newest = movie_frame(1, 0), movie_frame(1, 5)
    for frame in (first, newest, ph_frame(1, 3), movie_frame(2, 9)):
        previewer.update(frame)
    previewer.update(ph_frame(2, 4).to_dict())  # parsed dicts work too
    previewer.refresh()
    assert set(previewer.axes) == {
        (1, "MOVIE"),
        (1, "PULSE_HEIGHT"),
        (2, "MOVIE"),
        (2, "PULSE_HEIGHT"),
    }
    np.testing.assert_array_equal(previewer.images[(1, "MOVIE")].get_array(), newest.pixels)
    np.testing.assert_array_equal(
        previewer.images[(2, "PULSE_HEIGHT")].get_array(), ph_frame(2, 4).pixels
    )
    title = previewer.axes[(1, "PULSE_HEIGHT")].get_title()
    assert "module 1" in title and "ph256" in title
    # The time in UTC to the millisecond, and which clock it comes from.
    assert "2025-08-01 10:22:18.409 UTC (host clock)" in title
    assert len(previewer.colorbars) == 4
    path = previewer.save(tmp_path / "preview.png")
    assert path.stat().st_size > 10_000


def test_previewer_filters_kinds_and_modules():
    previewer = PanoImagePreviewer(stream_movie_data=False, module_ids=(2,))
    previewer.update(movie_frame(2, 1))
    previewer.update(ph_frame(1, 1))
    assert previewer.axes == {}
    previewer.update(ph_frame(2, 1))
    assert set(previewer.axes) == {(2, "PULSE_HEIGHT")}
    with pytest.raises(ValueError):
        PanoImagePreviewer(False, False)


def test_pulse_height_histogram_counts_equal_numpy(tmp_path):
    """R-UI-3: accumulated per module; counts equal numpy's on the same pixels; log scale."""
    plot = PulseHeightDistribution()
    frames = REAL_PH[:50]
    for frame in frames:
        plot.update(frame)
    plot.update(movie_frame(254, 0))  # movie images are not pulse heights
    plot.refresh()
    expected, _ = np.histogram(np.stack([f.pixels for f in frames]), bins=plot.bins)
    np.testing.assert_array_equal(plot.counts[254], expected)
    ax = plot.axes[254]
    assert ax.get_yscale() == "log" and "50 images" in ax.get_title()
    assert plot.save(tmp_path / "phdist.png").stat().st_size > 5_000


def test_per_event_maximum_histogram():
    plot = PulseHeightDistribution(per_event_max=True)
    for frame in REAL_PH[:30]:
        plot.update(frame)
    maxima = [int(f.pixels.max()) for f in REAL_PH[:30]]
    expected, _ = np.histogram(maxima, bins=plot.bins)
    np.testing.assert_array_equal(plot.counts[254], expected)
    assert plot.counts[254].sum() == 30


def rendered_colour(figure, ax, row: int, col: int) -> np.ndarray:
    """The RGB the canvas shows at the centre of image cell (row, col) of `ax`."""
    x, y = ax.transData.transform((col, row))
    buffer = np.asarray(figure.canvas.buffer_rgba())
    return buffer[int(np.rint(buffer.shape[0] - y)), int(np.rint(x)), :3].astype(int)


def test_previewer_figure_has_two_panels_and_two_colour_bars_per_module():
    """R-UI-2: the figure holds, per module, a movie and a PH image, each with a colour bar."""
    previewer = PanoImagePreviewer()
    for module in (3, 1, 2):
        previewer.update(movie_frame(module, module))
        previewer.update(ph_frame(module, module))
    images = [ax for ax in previewer.figure.axes if ax.images]
    assert len(previewer.figure.axes) == 3 * 2 * 2
    assert len(images) == 6
    # rows are sorted by module; the movie panel is left of the pulse-height panel
    rows = sorted(previewer.axes.items(), key=lambda item: -item[1].get_position().y0)
    assert [key for key, _ in rows[::2]] == [(1, "MOVIE"), (2, "MOVIE"), (3, "MOVIE")]
    for module in (1, 2, 3):
        movie, ph = previewer.axes[(module, "MOVIE")], previewer.axes[(module, "PULSE_HEIGHT")]
        assert movie.get_position().x0 < ph.get_position().x0
        assert abs(movie.get_position().y0 - ph.get_position().y0) < 1e-6


def test_rendered_pixels_show_the_frame_through_the_colour_map():
    """R-UI-2: what Agg draws in a panel is the frame's pixels mapped by the colour scale."""
    previewer = PanoImagePreviewer(stream_movie_data=False)
    frame = ph_frame(4, 17)
    previewer.update(frame)
    previewer.figure.set_dpi(100)
    previewer.figure.canvas.draw()
    ax = previewer.axes[(4, "PULSE_HEIGHT")]
    image = previewer.images[(4, "PULSE_HEIGHT")]
    low, high = image.get_clim()
    assert low <= np.median(frame.pixels) <= high
    checked = 0
    for row, col in [(0, 0), (3, 12), (8, 8), (15, 15), (11, 2), (6, 9)]:
        expected = np.asarray(image.to_rgba(frame.pixels[row, col], bytes=True)[:3], dtype=int)
        shown = rendered_colour(previewer.figure, ax, row, col)
        assert np.abs(shown - expected).max() <= 2, (row, col, shown, expected)
        checked += 1
    assert checked == 6


def test_previewer_shows_a_new_frame_in_place():
    """Each update replaces the panel's image data (the newest frame is shown)."""
    previewer = PanoImagePreviewer(stream_pulse_height_data=False)
    previewer.update(movie_frame(1, 0))
    image = previewer.images[(1, "MOVIE")]
    newer = movie_frame(1, 50, "img8")
    previewer.update(newer)
    assert previewer.images[(1, "MOVIE")] is image
    np.testing.assert_array_equal(image.get_array(), newer.pixels)
    assert "img8" in previewer.axes[(1, "MOVIE")].get_title()


def test_values_beyond_the_bins_are_counted_and_named():
    plot = PulseHeightDistribution(bins=np.arange(0, 101, 10))
    frame = ph_frame(6, 0)
    plot.update(frame)
    plot.refresh()
    inside = ((frame.pixels >= 0) & (frame.pixels <= 100)).sum()
    assert plot.counts[6].sum() == inside
    assert plot.outside[6] == frame.pixels.size - inside
    assert f"{plot.outside[6]} values outside the bins" in plot.axes[6].get_title()


def test_histogram_accumulates_per_module_from_dicts():
    """R-UI-3: one panel per module, counts accumulate over updates; parsed dicts work too."""
    plot = PulseHeightDistribution()
    for number in range(10):
        plot.update(ph_frame(1, number).to_dict())
        plot.update(ph_frame(2, number + 100))
    plot.refresh()
    assert len(plot.figure.axes) == 2
    expected, _ = np.histogram(np.stack([ph_frame(1, n).pixels for n in range(10)]), bins=plot.bins)
    np.testing.assert_array_equal(plot.counts[1], expected)
    bars = plot.axes[1].patches[0]
    assert bars.get_path().vertices[:, 1].max() == expected.max()


def test_update_redraws_on_a_display_at_most_every_interval(monkeypatch):
    """As the original's plots: on a display, update() redraws every plot_update_interval s;
    with Agg (no display) or None, only refresh() redraws."""
    from panoseti_daq import plots

    pauses = []
    monkeypatch.setattr(plots.plt, "pause", pauses.append)
    PanoImagePreviewer(plot_update_interval=0).update(movie_frame(1, 0))
    assert pauses == []  # Agg: nothing to show
    monkeypatch.setattr(plots, "display_available", lambda: True)
    previewer = PanoImagePreviewer(plot_update_interval=3600)
    previewer.update(movie_frame(1, 0))
    previewer.update(movie_frame(1, 1))
    assert len(pauses) == 1
    previewer.plot_update_interval = 0
    previewer.update(movie_frame(1, 2))
    assert len(pauses) == 2
    distribution = PulseHeightDistribution(plot_update_interval=None)
    distribution.update(ph_frame(1, 0))
    assert len(pauses) == 2
    distribution.refresh()
    assert len(pauses) == 3


def test_titles_and_colour_bars_say_units_clock_and_synthetic():
    """R-UI-2 for a reader: colour bars in ADC counts; times in UTC with their clock (White
    Rabbit or host), rounded to the millisecond (no `.799999999`); synthetic data says so."""
    from panoseti_daq.plots import format_utc
    from panoseti_daq.synthetic import synthetic_movie_frames

    previewer = PanoImagePreviewer()
    synthetic = synthetic_movie_frames("img16", count=2, module_id=1)[1]
    previewer.update(synthetic)
    previewer.update(ph_frame(1, 3))
    movie_title = previewer.axes[(1, "MOVIE")].get_title()
    ph_title = previewer.axes[(1, "PULSE_HEIGHT")].get_title()
    assert "SYNTHETIC" in movie_title and "White Rabbit clock" in movie_title
    assert "UTC" in movie_title and "SYNTHETIC" not in ph_title and "host clock" in ph_title
    labels = {bar.ax.get_ylabel() for bar in previewer.colorbars.values()}
    assert labels == {"pixel value (ADC counts)", "pulse height (ADC counts)"}
    host_float = pd.Timestamp(1721882092.8, unit="s")  # a float time: ...799999...
    assert format_utc(host_float) == "2024-07-25 04:34:52.800 UTC"


def test_histogram_axis_fits_the_data():
    """R-UI-3: by default the x axis spans the values seen (the NGC 7331 data lie in a few
    hundred ADC counts), with every value in a bin and none outside."""
    plot = PulseHeightDistribution()
    for frame in REAL_PH:
        plot.update(frame)
    plot.refresh()
    values = np.stack([f.pixels for f in REAL_PH])
    low, high = plot.axes[254].get_xlim()
    assert low <= values.min() and high >= values.max()
    assert high - low < 2 * (int(values.max()) - int(values.min()) + 1)
    assert plot.counts[254].sum() == values.size and plot.outside[254] == 0
    assert f"values {values.min()}..{values.max()}" in plot.axes[254].get_title()
    assert "ADC counts" in plot.axes[254].get_xlabel()
