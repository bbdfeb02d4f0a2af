"""UbloxMessage, the live timing table and the qErr plot, fed the recorded ZED-F9T frames.

The responses are built as the server sends them (R-UBX-CAP-4, R-UBX-CAP-5) and pass through
the wire (bytes) before the client's conversion reads them.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import matplotlib

matplotlib.use("Agg")

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from panoseti_daq._generated.google.protobuf import Struct
from panoseti_daq._generated.ubloxcontrol import CaptureUbloxResponse, CaptureUbloxResponseType
from panoseti_daq.ublox import protocol
from panoseti_daq.ublox.plot import QErrPlot
from panoseti_daq.ublox.records import (
    UbloxMessage,
    dropped_before,
    read_recording,
    recording_line,
)
from panoseti_daq.ublox.table import TimingTable
from tests.ublox_helpers import RECORDING, recorded_frames

FRAMES = [frame for _, frame in recorded_frames()]
READ_AT = datetime(2025, 8, 13, 3, 54, 2, 123456, tzinfo=timezone.utc)


def response(frame: bytes, notice: str = "", read_at: datetime = READ_AT) -> CaptureUbloxResponse:
    """A DATA response as the server makes it, after a trip through its wire encoding."""
    parsed = protocol.parsed_data(protocol.decode(frame))
    sent = CaptureUbloxResponse(
        type=CaptureUbloxResponseType.DATA,
        name=str(parsed["identity"]),
        parsed_data=Struct.from_dict(parsed),
        pkt_unix_timestamp=read_at,
        message=notice,
        payload=frame,
    )
    return CaptureUbloxResponse.parse(bytes(sent))


def messages(host: str = "node:50051") -> list[UbloxMessage]:
    return [UbloxMessage.from_response(response(frame), host) for frame in FRAMES]


def test_every_recorded_frame_keeps_pyubx2_types_and_the_servers_values():
    """R-UBX-CAP-4, R-UBX-CAP-5: the client's dict has the server's keys and values, with
    pyubx2's integer types (a Struct carries only doubles); name, frame and read time kept."""
    for frame, message in zip(FRAMES, messages(), strict=True):
        wire = response(frame).parsed_data.to_dict()
        assert set(message.parsed) == set(wire)
        for key, value in message.parsed.items():
            assert value == wire[key], key
        assert message.frame == frame and message.kind == "data"
        assert message.name == wire["identity"]
        assert message.host_time == READ_AT
        assert message.host_time_ns == int(READ_AT.timestamp()) * 10**9 + 123456000
    tim_tp = [m for m in messages() if m.name == "TIM-TP"]
    assert all(type(m.parsed["qErr"]) is int for m in tim_tp)


def test_tim_tp_qerr_in_ps_and_the_pulse_utc():
    """R-UBX-SIM-8: the first TIM-TP of the recording: qErr 2558 ps, for the pulse of
    03:54:04 UTC (week 2379, UTC time base); accuracy and validity belong to NAV-TIMEUTC."""
    first = next(m for m in messages() if m.name == "TIM-TP")
    assert first.qerr_ps == 2558
    assert first.utc == datetime(2025, 8, 13, 3, 54, 4, tzinfo=timezone.utc)
    assert first.utc_valid is True
    assert first.t_acc_ns is None
    assert first.to_dict()["qerr_ps"] == 2558


def test_nav_timeutc_epoch_accuracy_and_validity():
    """R-UBX-CAP-5: NAV-TIMEUTC's calendar fields plus nano as an aware datetime and ns."""
    first = next(m for m in messages() if m.name == "NAV-TIMEUTC")
    assert (
        first.utc_ns
        == int(datetime(2025, 8, 13, 3, 54, 2, tzinfo=timezone.utc).timestamp()) * (10**9)
        + first.parsed["nano"]
    )
    assert first.utc.tzinfo is timezone.utc
    assert (first.t_acc_ns, first.utc_valid, first.qerr_ps) == (62, True, None)


def test_each_pulse_is_announced_a_second_or_two_after_the_epoch_before_it():
    """The week arithmetic of TIM-TP checked against NAV-TIMEUTC's calendar, an independent
    source: each pulse lies 1-3 s after the navigation epoch read just before it, but the one
    after the recording's ~30 s hole."""
    last_epoch = None
    gaps = []
    for message in messages():
        if message.name == "NAV-TIMEUTC":
            last_epoch = message.utc
        elif message.name == "TIM-TP" and last_epoch is not None:
            gaps.append(message.utc - last_epoch)
    within = [gap for gap in gaps if timedelta(seconds=1) <= gap <= timedelta(seconds=3)]
    assert len(within) == len(gaps) - 1 >= 35
    assert timedelta(seconds=25) < max(gaps) < timedelta(seconds=35)


def test_notices_overruns_and_invalid_qerr():
    """R-UBX-CAP-6 "dropped N messages", R-UBX-CAP-7 notices (type ERROR), qErrInvalid."""
    tim_tp = next(frame for frame in FRAMES if frame[2:4] == b"\x0d\x01")
    late = UbloxMessage.from_response(response(tim_tp, "dropped 7 messages"), "n")
    assert late.dropped_before == 7 and late.is_data
    assert dropped_before("dropped 1 message") == 1 and dropped_before("") == 0
    silence = CaptureUbloxResponse(
        type=CaptureUbloxResponseType.ERROR, message="no UBX message from /dev/x for 5 s"
    )
    notice = UbloxMessage.from_response(CaptureUbloxResponse.parse(bytes(silence)), "n")
    assert (notice.kind, notice.name, notice.is_data, notice.host_time) == (
        "notice",
        "",
        False,
        None,
    )
    assert notice.dropped_before == 0
    invalid = dict(late.parsed, qErrInvalid=1)
    assert UbloxMessage("n", "TIM-TP", invalid).qerr_ps is None


def test_a_frame_that_does_not_decode_keeps_the_servers_dict():
    """A frame this client's pyubx2 cannot decode: the Struct's values are used."""
    good = response(FRAMES[1])
    good.payload = FRAMES[1][:-1] + bytes([FRAMES[1][-1] ^ 0xFF])  # checksum broken
    message = UbloxMessage.from_response(good, "n")
    assert message.parsed == good.parsed_data.to_dict()
    assert message.t_acc_ns == 62


def test_a_gnss_time_base_pulse_has_no_utc():
    """TIM-TP on a GNSS time base: its week and tow are not UTC: no `utc`."""
    first = next(m for m in messages() if m.name == "TIM-TP")
    assert UbloxMessage("n", "TIM-TP", dict(first.parsed, timeBase=0)).utc is None


@given(
    year=st.integers(1980, 2200),
    day_of_year=st.integers(0, 364),
    second=st.integers(0, 86_399),
    nano=st.integers(-999_999_999, 999_999_999),
)
def test_nav_timeutc_conversion_matches_datetime_arithmetic(year, day_of_year, second, nano):
    """NAV-TIMEUTC fields to ns since the epoch agree with datetime arithmetic (nano signed)."""
    when = datetime(year, 1, 1, tzinfo=timezone.utc) + timedelta(days=day_of_year, seconds=second)
    fields = {
        "year": when.year,
        "month": when.month,
        "day": when.day,
        "hour": when.hour,
        "min": when.minute,
        "sec": when.second,
        "nano": nano,
    }
    whole = int((when - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds())
    assert UbloxMessage("n", "NAV-TIMEUTC", fields).utc_ns == whole * 10**9 + nano


def test_timing_table_rows_and_80_columns():
    """The live table: newest qErr and tAcc/validity per node, counts, notes; 80 columns on a
    terminal without cutting a cell, key=value lines into a pipe."""
    table = TimingTable(labels={"a:50051": "DF03A241BC"})
    for now, message in enumerate(messages("a:50051")):
        table.update(message, float(now))
    for now, message in enumerate(messages("192.168.100.123:50051")[:5]):
        table.update(message, float(now))
    long_note = "UNAVAILABLE: F9T on /dev/serial/by-id/usb-u-blox_AG disconnected; retrying"
    table.update(UbloxMessage("b:50051", "", notice=long_note, kind="status"), 3.0)
    last_tim_tp = [m for m in messages() if m.name == "TIM-TP"][-1]
    row = table.rows["a:50051"]
    assert row.messages == len(FRAMES) and row.qerr_ps == last_tim_tp.qerr_ps
    assert (row.t_acc_ns is not None, row.utc_valid) == (True, True)
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(table.render(90.0))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    # No cell is cut: the longest address, every time, the note (on lines of its own).
    assert "192.168.100.123:50051    3499 03:54:05      60 yes    5    0  86.0" in text, text
    assert f"{last_tim_tp.utc:%H:%M:%S}" in text and "DF03A241BC" in text
    assert "b:50051: UNAVAILABLE: F9T on /dev/serial/by-id/usb-u-blox_AG" in text
    lines = table.lines(90.0)
    assert lines[0].startswith("F9T timing (")
    assert f"  DF03A241BC: qErr_ps={last_tim_tp.qerr_ps} " in lines[2]
    assert "note=" + long_note in lines[3]


def test_qerr_plot_one_series_per_node(tmp_path):
    """The qErr plot: every valid TIM-TP of each node, in ns, against the pulse's UTC."""
    plot = QErrPlot(labels={"a:1": "DF03A241BC"}, plot_update_interval=None)
    for message in messages("a:1") + messages("b:2")[:10]:
        plot.update(message)
    tim_tp = [m for m in messages() if m.name == "TIM-TP"]
    assert len(plot.series["a:1"][1]) == len(tim_tp)
    assert plot.series["a:1"][1][0] == pytest.approx(2.558)
    plot.refresh()
    assert f"{plot.points} pulses" in plot.axes.get_title()
    assert {t.get_text() for t in plot.axes.get_legend().get_texts()} == {"DF03A241BC", "b:2"}
    path = plot.save(tmp_path / "qerr.png")
    assert path.stat().st_size > 10_000
    plot.close()


def test_a_rows_note_keeps_the_cause_and_the_latest():
    """A node unplugged, then retried: its note keeps the unplug and shows the latest retry;
    a message clears it."""
    table = TimingTable()
    data = messages("n")
    table.update(data[1], 0.0)
    unplugged = "UNAVAILABLE: F9T on /dev/ttyACM0 disconnected: read failed"
    retry = "FAILED_PRECONDITION: F9T is not initialized or I/O is not running; retrying"
    for text in (unplugged, retry, retry, "UNAVAILABLE: connection refused; retrying"):
        table.update(UbloxMessage("n", "", notice=text, kind="status"), 1.0)
    assert table.rows["n"].note == f"{unplugged}; then UNAVAILABLE: connection refused; retrying"
    table.update(data[2], 2.0)
    assert table.rows["n"].note == ""


def test_recordings_round_trip_and_read_the_originals(tmp_path):
    """capture --record's JSON Lines: the original's identity and payload_b64 (its
    ubx_packets.jsonl reads as such), plus host and read time; a bad line names file and line."""
    original = list(read_recording(RECORDING))
    assert [m.frame for m in original] == FRAMES
    assert original[1].name == "NAV-TIMEUTC" and original[1].host == ""
    path = tmp_path / "night.jsonl"
    sent = messages("daq-1:50051")
    path.write_text("".join(recording_line(m) + "\n" for m in sent))
    back = list(read_recording(path))
    assert [(m.frame, m.host, m.host_time_ns, m.name) for m in back] == [
        (m.frame, m.host, m.host_time_ns, m.name) for m in sent
    ]
    assert back[2].qerr_ps == sent[2].qerr_ps
    path.write_text(recording_line(sent[0]) + "\n" + '{"identity": "TIM-TP"}\n')
    with pytest.raises(ValueError, match=r"night\.jsonl line 2: not a recorded UBX frame"):
        list(read_recording(path))


def test_the_qerr_line_breaks_where_pulses_are_missing():
    """The recording's ~30 s hole is a break in the plotted line, not a bridge."""
    plot = QErrPlot(plot_update_interval=None)
    for message in messages("a:1"):
        plot.update(message)
    plot.refresh()
    (line,) = plot.axes.get_lines()[:1]
    ys = list(line.get_ydata())
    assert sum(1 for y in ys if y != y) == 1  # one NaN: one gap
    assert len(ys) == len(plot.series["a:1"][1]) + 1
    plot.close()


def test_the_message_table_and_plot_modules_are_loop_free():
    """UbloxMessage, the timing table and the qErr plot import no event loop, gRPC or client
    code, also through what they import (tests/test_layers.py's reading of the imports): a
    viewer or a notebook can use them on recordings alone, and the imports point down."""
    from tests.test_layers import LOOP_FREE, LOOP_LIBRARIES, _closure, _layer_of

    for module in ("records", "table", "plot"):
        name = f"panoseti_daq.ublox.{module}"
        assert _layer_of(name) in LOOP_FREE, name
        loaded = _closure(name)
        assert not {m.split(".")[0] for m in loaded} & LOOP_LIBRARIES, (name, sorted(loaded))
        glue = ("panoseti_daq.client", "panoseti_daq._grpclib", "panoseti_daq.server")
        assert not [m for m in loaded if m.startswith(glue)], (name, sorted(loaded))


@given(
    rows=st.lists(
        st.tuples(
            st.from_regex(r"[a-z0-9.-]{1,15}:[0-9]{1,5}", fullmatch=True),
            st.integers(-(2**31), 2**31 - 1),
            st.integers(0, 2**32 - 1),
            st.integers(0, 10**9),
            st.integers(0, 10**6),
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda row: row[0],
    ),
    age_s=st.floats(0, 10**6),
)
def test_the_table_fits_80_columns_whatever_the_values(rows, age_s):
    """Any qErr (I4), tAcc (U4, 2^32-1 without a fix), counts and ages: 80 columns, no cell
    cut (large values are written short, with a unit); the plain lines keep every digit."""
    table = TimingTable()
    for host, qerr, t_acc, count, lost in rows:
        row = table.row(host)
        row.qerr_ps, row.t_acc_ns, row.messages, row.dropped = qerr, t_acc, count, lost
        row.last_arrival = 0.0
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(table.render(age_s))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text, text
    lines = "\n".join(table.lines(age_s))
    for host, qerr, t_acc, count, lost in rows:
        assert host in text
        assert f"  {host}: qErr_ps={qerr} " in lines and f" tAcc_ns={t_acc} " in lines
        assert f" msgs={count} lost={lost} " in lines


def test_the_widest_values_written_short():
    table = TimingTable()
    row = table.row("192.168.100.123:50051")
    row.qerr_ps, row.t_acc_ns, row.messages, row.dropped = -(2**31), 2**32 - 1, 10**9, 10**6
    row.last_arrival = 0.0
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(table.render(3 * 86400))
    line = console.export_text().splitlines()[2]
    assert line.split() == [
        "192.168.100.123:50051",
        "-2147us",
        "-",
        "4.3s",
        "-",
        "1000.0M",
        "1000000",
        "3d",
    ]
