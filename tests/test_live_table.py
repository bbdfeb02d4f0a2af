"""The CLI's live table, sans-IO: counts, rates, timestamps and gaps per host/module/product.

The stream it summarises follows R-STREAM-6..10 (which frames arrive) and R-PARSE-1 (parsed
dicts are accepted like frames); the table itself is the `--stream` view of R-UI-1.
"""

from __future__ import annotations

import io

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from panoseti_daq.viewer.live_table import LiveTable
from tests.helpers import movie_frame, ph_frame

SERIES = "start_2024-07-25T04_34_46Z.dp_img16.bpp_2.module_1.seqno_{}.pff"


def numbered(module: int, number: int, seqno: int = 0, host_file: str = SERIES):
    """A movie frame of `module` with frame_number `number` in file seqno `seqno`."""
    frame = movie_frame(module, number)
    return type(frame)(
        frame.product, frame.header, frame.pixels, module, host_file.format(seqno), number
    )


def text_of(table: LiveTable, now: float) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table.render(now))
    return console.export_text()


def test_rows_per_host_module_and_product():
    """One row per (host, module, product); PanoFrames and parsed dicts count alike."""
    table = LiveTable()
    table.update(movie_frame(1, 0), 0.0, host="node-a")
    table.update(movie_frame(1, 1).to_dict(), 0.1, host="node-a")
    table.update(movie_frame(1, 0, "img8"), 0.1, host="node-a")
    table.update(ph_frame(1, 0), 0.2, host="node-a")
    table.update(ph_frame(1, 1), 0.3, host="node-b")
    assert set(table.rows) == {
        ("node-a", 1, "img16"),
        ("node-a", 1, "img8"),
        ("node-a", 1, "ph256"),
        ("node-b", 1, "ph256"),
    }
    assert table.rows[("node-a", 1, "img16")].frames == 2
    assert table.total == 5


def test_newest_timestamp_clock_and_peak():
    """The newest frame's timestamp (R-PARSE-1), WR or host clock (R-TIME-4), brightest pixel."""
    table = LiveTable()
    first, newest = ph_frame(7, 0), ph_frame(7, 1)
    table.update(first, 1.0)
    table.update(newest, 2.0)
    row = table.rows[("", 7, "ph256")]
    assert row.timestamp == newest.time.pandas_timestamp
    assert row.wr_valid == newest.time.wr_valid
    assert row.peak == int(newest.pixels.max())
    text = text_of(table, 2.0)
    stamp = newest.time.pandas_timestamp
    shown = stamp.round("ms")  # to the millisecond, rounded
    assert f"{shown:%H:%M:%S}.{shown.microsecond // 1000:03d}" in text
    assert f"UTC {stamp:%Y-%m-%d}" in text  # the date, once, in the title
    assert ("WR" if newest.time.wr_valid else "host") in text


def test_rate_over_a_sliding_window():
    """10 frames/s for 20 s reads 10/s; after the stream stops the rate decays to 0."""
    table = LiveTable(rate_window_s=5.0)
    for i in range(200):
        table.update(numbered(1, i), i * 0.1)
    row = table.rows[("", 1, "img16")]
    assert abs(table.rate(row, 19.9) - 10.0) < 0.25
    assert abs(table.rate(row, 22.4) - 5.0) < 0.25
    assert table.rate(row, 30.0) == 0.0


def test_rate_before_the_window_has_filled():
    table = LiveTable(rate_window_s=5.0)
    table.update(numbered(1, 0), 100.0)
    row = table.rows[("", 1, "img16")]
    assert table.rate(row, 100.0) == 0.0
    table.update(numbered(1, 1), 100.5)
    table.update(numbered(1, 2), 101.0)
    assert table.rate(row, 101.0) == 2.0  # three frames half a second apart: 2/s
    assert table.rate(row, 102.0) == 1.0  # nothing since: the rate falls


def test_gaps_from_frame_number_jumps_within_a_file():
    """A frame number that skips ahead is a gap; the skipped frames are counted."""
    table = LiveTable()
    for number in (0, 1, 2, 5, 6, 10):
        table.update(numbered(1, number), number)
    row = table.rows[("", 1, "img16")]
    assert (row.gaps, row.skipped) == (2, 2 + 3)


def test_rollover_to_the_next_file_is_no_gap_but_a_late_start_is():
    """R-NAME-2: seqno+1 starting at frame 0 continues the series; starting later is a gap."""
    table = LiveTable()
    table.update(numbered(1, 998, seqno=0), 0.0)
    table.update(numbered(1, 999, seqno=0), 0.1)
    table.update(numbered(1, 0, seqno=1), 0.2)
    row = table.rows[("", 1, "img16")]
    assert (row.gaps, row.skipped) == (0, 0)
    table.update(numbered(1, 4, seqno=2), 0.3)  # file 1 ended early or file 2 began late
    assert (row.gaps, row.skipped) == (1, 4)
    table.update(numbered(1, 0, seqno=5), 0.4)  # whole files skipped
    assert row.gaps == 2


def test_restarts_and_other_runs_are_not_gaps():
    """Frame numbers going back, or a file of another run, start the count afresh."""
    table = LiveTable()
    table.update(numbered(1, 50), 0.0)
    table.update(numbered(1, 3), 0.1)
    other_run = "start_2025-01-01T00_00_00Z.dp_img16.bpp_2.module_1.seqno_{}.pff"
    table.update(numbered(1, 40, seqno=3, host_file=other_run), 0.2)
    table.update(numbered(1, 41, seqno=3, host_file=other_run), 0.3)
    assert table.rows[("", 1, "img16")].gaps == 0


@given(st.lists(st.integers(1, 20), min_size=1, max_size=60))
def test_skipped_counts_every_missing_frame(steps):
    """For any increasing frame numbers in one file, skipped = span - received + 1."""
    table = LiveTable()
    numbers = [0]
    for step in steps:
        numbers.append(numbers[-1] + step)
    for i, number in enumerate(numbers):
        table.update(numbered(3, number), float(i))
    row = table.rows[("", 3, "img16")]
    assert row.skipped == numbers[-1] + 1 - len(numbers)
    assert row.gaps == sum(step > 1 for step in steps)


def test_render_lists_every_row_with_its_counts():
    table = LiveTable("panoseti-daq stream")
    table.update(numbered(224, 0), 0.0, host="sim-node")
    table.update(numbered(224, 3), 1.0, host="sim-node")
    table.update(ph_frame(225, 0), 1.0, host="sim-node")
    text = text_of(table, 2.0)
    # One host: named once, in the title, not on every row.
    assert "panoseti-daq stream (from sim-node, 2 s, 3 frames" in text
    lines = [line for line in text.splitlines() if "img16" in line or "ph256" in line]
    assert len(lines) == 2 and not any("sim-node" in line for line in lines)
    assert "224" in lines[0] and "img16" in lines[0] and "s0#3" in lines[0]
    assert "225" in lines[1] and "ph256" in lines[1]
    table.update(ph_frame(225, 1), 1.5, host="other-node")
    rows = [line for line in text_of(table, 2.0).splitlines() if "ph256" in line]
    assert [("sim-node" in r, "other-node" in r) for r in rows] == [(False, True), (True, False)]


def test_fits_80_columns_without_cutting_cells():
    """The table of a busy stream (two hosts, large counts) fits an 80-column terminal, every
    cell whole (no "…"); so does its explanation."""
    table = LiveTable("panoseti-daq stream", interval_s=0.5)
    for i in range(0, 40_000, 7):
        table.update(numbered(224, i), i / 1000, host="daq-node-01")
    table.update(ph_frame(254, 3), 40.0, host="daq-node-02")
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(table.render(40.0))
    text = console.export_text()
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "daq-node-01" in text and "s0#39998" in text and "34284" in text


def test_skipped_by_pacing_and_lost_to_overruns_are_apart():
    """R-CLI-10: frames the server reports dropped (`dropped_before`, "dropped N frames") count
    as lost; the rest of a jump is skipped, which the explanation names pacing for interval > 0
    and unpublished frames for interval 0."""
    table = LiveTable(interval_s=1.0)
    table.update(numbered(1, 0), 0.0)
    table.update(numbered(1, 10), 1.0)  # 9 skipped by pacing
    table.update({**numbered(1, 20).to_dict(), "dropped_before": 4}, 2.0)  # 5 skipped, 4 lost
    table.update(numbered(1, 23), 3.0, dropped=2)  # 2 lost, nothing skipped
    row = table.rows[("", 1, "img16")]
    assert (row.skipped, row.lost, row.overruns, row.gaps) == (14, 6, 2, 2)
    assert "pacing" in table.explanation() and "1 s" in table.explanation()
    assert "pacing" not in LiveTable(interval_s=0.0).explanation()
    assert "never published" in LiveTable(interval_s=0.0).explanation()
    text = text_of(table, 3.0)
    assert "pacing" in text and "lost" in text


def test_plain_lines_for_a_pipe():
    """lines(): the heading and one line per row, with the host, no table drawing."""
    table = LiveTable("panoseti-daq stream")
    table.update(numbered(224, 0), 0.0, host="sim-node")
    table.update(ph_frame(225, 0), 1.0, host="sim-node")
    lines = table.lines(2.0)
    assert lines[0].startswith("panoseti-daq stream (from sim-node, 2 s, 2 frames")
    assert len(lines) == 3 and all("sim-node module" in line for line in lines[1:])
    assert "frames=1" in lines[1] and "skip=0 lost=0" in lines[1]


def test_times_show_rounded_to_the_millisecond_as_in_the_plots():
    """The table's time column and the plots' titles round alike: a host-clock time held as a
    float (...52.7999999) shows as .800 in both."""
    from panoseti_daq.plots import format_utc
    from panoseti_daq.viewer.live_table import short_time

    host_float = pd.Timestamp(1721882092.8, unit="s")
    assert short_time(host_float) == "04:34:52.800"
    assert format_utc(host_float) == "2024-07-25 04:34:52.800 UTC"
    assert short_time(pd.Timestamp("2024-07-25 04:34:52.123456789")) == "04:34:52.123"
    assert short_time(None) == "-"
