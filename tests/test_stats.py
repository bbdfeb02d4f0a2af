"""The server's stats (`serve --stats-file`): counters and resources as JSON lines."""

from __future__ import annotations

import signal
import time

import pytest

from panoseti_daq.server.app import DaqDataServer
from tests.helpers import (
    init_hp_io,
    movie_frame,
    next_reply,
    open_stream,
    server_process,
    stats_lines,
    upload,
    wait_until,
)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # raw grpclib calls from the test
async def test_stats_file_reports_counters_and_resources(base_config, short_tmp, run_dir):
    """One JSON line per interval and one at shutdown: frames in, out and dropped, clients,
    tasks of both event loops, memory, descriptors, threads."""
    path = short_tmp / "stats.jsonl"
    async with DaqDataServer(
        base_config, host="127.0.0.1", port=0, uds="", stats_file=path, stats_interval_s=0.02
    ) as server:
        await wait_until(lambda: len(stats_lines(path)) >= 1)
        first = stats_lines(path)[0]
        assert first["frames_published"] == 0 and first["hp_io_valid"] is False
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server) as stream:
            await wait_until(lambda: server.hub.subscriber_count == 1)
            await upload(server, [movie_frame(1, i) for i in range(5)])
            for _ in range(5):
                await next_reply(stream)
            await wait_until(lambda: stats_lines(path)[-1]["stream_clients"] == 1)
            during = server.stats()
        await wait_until(lambda: server.core.active_streams == 0)
    final = stats_lines(path)[-1]
    assert during["frames_published"] == 5 and during["frames_sent"] == 5
    # The hub's counters per source, per (module, product) and per client.
    assert during["frames_in"] == [
        {"module": 1, "product": "img16", "source": "upload", "frames": 5}
    ]
    assert [age["age_s"] >= 0 for age in during["newest_frame_age_s"]] == [True]
    (client,) = during["clients"]
    assert client["peer"].startswith("127.0.0.1:")
    assert (client["sent"], client["dropped"], client["queue_depth"]) == (5, 0, 0)
    assert (client["movie"], client["pulse_height"], client["interval_s"]) == (True, True, 0.0)
    assert during["tasks"] > first["tasks"]  # the stream's handler, at least
    assert final["frames_published"] == 5 and final["frames_sent"] == 5
    assert final["frames_dropped"] == 0 and final["stream_clients"] == 0
    assert final["hp_io"] == str(run_dir.resolve())
    assert final["rss_mb"] > 10 and final["open_fds"] > 3 and final["threads"] >= 1
    assert final["uptime_s"] > first["uptime_s"]
    assert len(stats_lines(path)) >= 3


@pytest.mark.timeout(30)  # a server process
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_serve_stats_file(short_tmp, backend):
    """`serve --stats-file F --stats-interval S`: lines while it runs (the simulation's frames
    counted, trio's and asyncio's tasks both), and a last one after SIGTERM."""
    path = short_tmp / "stats.jsonl"
    args = ("--init-sim", "--stats-file", str(path), "--stats-interval", "0.05")
    with server_process(short_tmp, *args, backend=backend) as (process, _port, _uds):
        deadline = time.monotonic() + 20
        while not (stats_lines(path) and stats_lines(path)[-1]["frames_published"] > 0):
            assert time.monotonic() < deadline, stats_lines(path)[-1:]
            time.sleep(0.02)
        running = stats_lines(path)[-1]
        count = len(stats_lines(path))
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    assert running["hp_io"] == "simulation" and running["hp_io_valid"] is True
    # The simulation's frames are counted as its own, whichever way they enter the hub.
    assert {entry["source"] for entry in running["frames_in"]} == {"simulation"}
    # Controller, scanner, simulation writer, listeners: more than a handful.
    assert running["tasks"] >= 5
    assert len(stats_lines(path)) > count  # the line written at shutdown
