"""Live plots rendered with Agg: panels, pixel content, titles, histograms (R-UI-2, R-UI-3)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
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
    assert str(ph_frame(1, 3).time.pandas_timestamp) in title
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
