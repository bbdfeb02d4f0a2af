"""Broken data sources, odd timestamps and full disks (spec section 15: R-SRC-1, R-SRC-2,
R-CLI-11, R-REC-1).

A full disk is a small tmpfs (the tests mount one where they may, as root), else, for the
recorder, a file size limit (RLIMIT_FSIZE) that makes writes fail the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
import pytest
from google.protobuf import empty_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from panoseti_daq import DaqClient, PanoFrame, pff, product_named
from panoseti_daq.plots import format_utc, image_fields
from panoseti_daq.timestamps import frame_time
from panoseti_daq.viewer.live_table import LiveTable
from panoseti_daq.viewer.recorder import PFFRecorder, RecordError
from tests.conftest import daq_config
from tests.helpers import REAL_PH, server_process
from tests.reference import modules
from tests.test_client_streams import poll, server_in_a_thread
from tests.test_hostile_peers import Viewer, _wait_streaming

pytestmark = pytest.mark.timeout(60)

pb2, pb2_grpc = modules()
PH256 = product_named("ph256")


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (skips the test where none can be mounted)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> None:
    """Fill `disk` to the last byte."""
    with contextlib.suppress(OSError), open(disk / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


# --- R-SRC-1: a source that fails ends the streams ------------------------------------------------


def test_simulation_on_a_full_disk_ends_streams_with_unavailable(short_tmp):
    """R-SRC-1: the simulation fills its disk: the open stream ends within 2 s of its last
    frame with UNAVAILABLE naming the cause (it stayed open and silent until its deadline
    before), new streams get FAILED_PRECONDITION naming it, and the server still answers."""
    with small_disk(short_tmp / "disk", "2m") as disk:
        config = {"simulate_daq_cfg": {"data_dir": str(disk / "sim"), "frame_rate_hz": 200}}
        with server_process(short_tmp, "--init-sim", config=config) as (process, port, _):
            target = f"127.0.0.1:{port}"
            _wait_streaming(target)
            viewer = Viewer(target)
            try:
                error = viewer.wait_ended(30)
                ended_at = time.monotonic()
            finally:
                viewer.close()
            assert error is not None, "the stream did not end"
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert "No space left on device" in error.details()
            assert viewer.arrivals and ended_at - viewer.arrivals[-1] < 2.0 + 0.5
            with grpc.insecure_channel(target) as channel:
                stub = pb2_grpc.DaqDataStub(channel)
                request = pb2.StreamImagesRequest(stream_movie_data=True)
                with pytest.raises(grpc.RpcError) as info:
                    next(stub.StreamImages(request, timeout=10))
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "No space left on device" in info.value.details()
                assert "InitHpIo" in info.value.details()
                stub.Ping(empty_pb2.Empty(), timeout=10)
            assert process.poll() is None


def test_init_sim_on_a_full_disk_is_one_line_and_exit_2(short_tmp):
    """R-SRC-1: `serve --init-sim` whose simulation cannot write: one line naming the cause,
    exit code 2, no traceback (it was an ExceptionGroup traceback)."""
    with small_disk(short_tmp / "disk", "64k") as disk:
        fill(disk)
        config = short_tmp / "server.json"
        settings_ = {
            "simulate_daq_cfg": {"data_dir": str(disk / "sim")},
            "allowed_data_roots": [str(short_tmp)],
        }
        config.write_text(json.dumps(settings_))
        result = subprocess.run(
            [
                *(sys.executable, "-m", "panoseti_daq.serve", "--config", str(config)),
                *("--host", "127.0.0.1", "--port", "0", "--uds", "", "--init-sim"),
            ],
            capture_output=True,
            text=True,
            timeout=40,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("panoseti_daq.serve: hp_io configuration failed"), result.stderr
    assert "No space left on device" in last
    assert sum("panoseti_daq.serve:" in line for line in result.stderr.splitlines()) == 1


# --- R-SRC-2: simulation directories of dead servers ---------------------------------------------


@pytest.mark.anyio
async def test_stale_simulation_directories_are_removed_at_start(make_server):
    """R-SRC-2: a server killed without clean-up leaves /tmp/panoseti_daq_sim_<pid>; the next
    server removes those of processes that no longer exist, and keeps those of live ones."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    tmp = Path(tempfile.gettempdir())
    stale = tmp / f"panoseti_daq_sim_{gone.pid}"
    live = tmp / f"panoseti_daq_sim_{os.getppid()}"
    for directory in (stale, live):
        (directory / "module_224" / "obs_SIMULATE").mkdir(parents=True, exist_ok=True)
        (directory / "module_224" / "obs_SIMULATE" / "x.pff").write_bytes(b"{}\n\n*")
    try:
        async with make_server():
            assert not stale.exists()
            assert live.exists()
    finally:
        for directory in (stale, live):
            shutil.rmtree(directory, ignore_errors=True)


def test_a_killed_server_leaves_nothing_for_long(short_tmp):
    """R-SRC-2 end to end: a server killed with SIGKILL leaves its default simulation
    directory; the next server on the host removes it at start."""
    config = {"simulate_daq_cfg": {"frame_rate_hz": 50}}  # the default, per-process data_dir
    with server_process(short_tmp, "--init-sim", config=config) as (process, port, _):
        _wait_streaming(f"127.0.0.1:{port}")
        left = Path(tempfile.gettempdir()) / f"panoseti_daq_sim_{process.pid}"
        assert left.is_dir()
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert left.is_dir()
    with server_process(short_tmp) as (_, port, _):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            empty = empty_pb2.Empty()
            pb2_grpc.DaqDataStub(channel).Ping(empty, timeout=10)
        assert not left.exists()


# --- R-CLI-11: odd timestamps -------------------------------------------------------------------

ODD_TV_SEC = [1e11, math.nan, math.inf, -math.inf, 1e300, -1e11]


def _odd_frame(tv_sec: float, number: int = 0) -> PanoFrame:
    header = {**REAL_PH[0].header, "tv_sec": tv_sec}
    return PanoFrame(PH256, header, REAL_PH[0].pixels, 7, "odd.pff", number)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["pkt_tai", "pkt_nsec", "tv_sec", "tv_usec"]),
        st.floats() | st.integers(-(2**70), 2**70),
    )
)
def test_frame_time_never_raises(fields):
    """R-CLI-11: any numbers in the time fields give a time or none, never an exception; a
    time no timestamp can hold is none, with the problem named."""
    time_ = frame_time(fields)
    stamp = time_.pandas_timestamp
    assert stamp is pd.NaT or isinstance(stamp, pd.Timestamp)
    timing = "tv_sec" in fields or "pkt_tai" in fields  # else not a time header (R-TIME-3)
    if timing and any(isinstance(v, float) and not math.isfinite(v) for v in fields.values()):
        assert time_.problem is not None


@pytest.mark.parametrize("tv_sec", ODD_TV_SEC)
def test_odd_timestamps_leave_the_table_plots_and_recorder_going(tv_sec, tmp_path):
    """R-CLI-11: the CLI's table, the plots and the recorder take a frame whose time cannot be
    represented: no timestamp, nothing raised."""
    frame = _odd_frame(tv_sec)
    table = LiveTable()
    table.update(frame, 1.0, "node")
    assert table.lines(1.0)
    fields = image_fields(frame)
    assert format_utc(fields.timestamp) == "no timestamp"
    assert format_utc(frame.to_dict()["header"]["pandas_unix_timestamp"]) == "no timestamp"
    with PFFRecorder(tmp_path) as recorder:
        recorder.write(frame)
    assert recorder.written == 1


def test_blocking_client_parses_odd_timestamps_with_one_warning(base_config, run_dir, caplog):
    """R-CLI-11: frames whose tv_sec is 1e11, NaN or infinite parse with NaT (the blocking
    client raised OutOfBoundsDatetime); one warning per host and product; the stream goes on
    to the next good frame."""
    frames = [_odd_frame(tv_sec, n) for n, tv_sec in enumerate(ODD_TV_SEC)]
    good = PanoFrame(PH256, REAL_PH[1].header, REAL_PH[1].pixels, 7, "good.pff", 99)
    with (
        caplog.at_level(logging.WARNING, logger="panoseti_daq.client.stream"),
        server_in_a_thread(base_config) as server,
        DaqClient(daq_config(server)) as client,
    ):
        hp_io = {"update_interval_seconds": 0.05, "force": True, "data_dir": str(run_dir)}
        assert client.init_hp_io(None, hp_io)
        stream = client.stream_images(None, False, True, 0.0)
        poll(lambda: server.hub.subscriber_count == 1)
        client.upload_images(None, [*frames, good])
        seen = []
        for image in stream:
            seen.append(image)
            if image["frame_number"] == 99:
                break
    odd = [image for image in seen if image["file"] == "odd.pff"]
    assert len(odd) == len(ODD_TV_SEC)
    assert all(image["header"]["pandas_unix_timestamp"] is pd.NaT for image in odd)
    assert seen[-1]["header"]["pandas_unix_timestamp"].year == 2025
    warnings = [r.getMessage() for r in caplog.records if "cannot be represented" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "test-node" in warnings[0] and "ph256" in warnings[0]


# --- R-REC-1: the recorder on a full disk -------------------------------------------------------


@contextlib.contextmanager
def full_disk_for_recording(tmp_path: Path) -> Iterator[Path]:
    """A directory where writing fails after ~64 KiB: a small tmpfs, else RLIMIT_FSIZE."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode == 0:
        try:
            yield disk
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)
        return
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limits[1]))
    try:
        yield disk
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)


def test_recorder_keeps_whole_frames_on_a_full_disk(tmp_path):
    """R-REC-1: a write error leaves whole frames only; the error names the file, the cause and
    the frames recorded, which are exactly the frames in the file."""
    with full_disk_for_recording(tmp_path) as disk:
        recorder = PFFRecorder(disk, frames_per_file=10**6)
        with pytest.raises(RecordError) as info:
            for n in range(10**5):
                recorder.write(REAL_PH[n % len(REAL_PH)])
            recorder.close()
        recorder.close()
        error = info.value
        [path] = list(disk.rglob("*.pff"))
        assert error.path == path
        assert str(path) in str(error)
        assert f"{error.frames_recorded} frames recorded" in str(error)
        assert error.frames_recorded == recorder.written > 0
        frames = list(pff.iter_frames(path, PH256))
        assert len(frames) == error.frames_recorded
        assert path.stat().st_size % (path.stat().st_size // len(frames)) == 0


def test_cli_recording_into_a_full_disk_is_one_line_and_exit_1(live_server, short_tmp):
    """R-REC-1: `--record` into a full file system: one line naming the file, the error and the
    frames recorded; exit code 1; the file holds whole frames only."""
    daq_path, net_path, tmp = live_server
    with small_disk(short_tmp / "disk", "64k") as disk:
        result = subprocess.run(
            [
                *(sys.executable, "-m", "panoseti_daq.cli", str(daq_path), str(net_path)),
                *("--record", str(disk), "--duration", "30"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp,
        )
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("panoseti-daq: cannot record to "), result.stderr
        assert "No space left on device" in last and "frames recorded" in last
        assert "frames under" not in result.stdout
        recorded = int(last.rsplit(";", 1)[1].split()[0])
        files = sorted(disk.rglob("*.pff"))
        total = 0
        for path in files:
            name = pff.DataFileName.parse(path.name)
            total += len(list(pff.iter_frames(path, product_named(name.dp))))
        assert total == recorded
