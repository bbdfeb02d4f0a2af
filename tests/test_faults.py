"""Fault tests: the service holds under misbehaving clients and shutdown (issue: load/faults).

Each is bounded in time. Related faults are tested elsewhere: data_dir removed and re-created,
truncated/corrupt/deleted PFF files (test_scanner.py), malformed uploads (test_server_upload.py),
a client that cancels its stream
(test_server_stream.py::test_disconnect_frees_slot_within_one_second).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import anyio
import pytest

from panoseti_daq import AsyncDaqClient, RpcError
from panoseti_daq.messages import StreamImagesRequest
from tests.helpers import (
    init_hp_io,
    movie_frame,
    next_reply,
    open_stream,
    server_process,
    stalled_stream_client,
    upload,
    wait_until,
)

pytestmark = pytest.mark.anyio


@pytest.mark.timeout(30)  # 3,000 frames to 10 readers
async def test_stalled_client_among_ten_healthy(make_server, run_dir):
    """R-STREAM-11: ten healthy readers lose nothing while one stalled reader is ended."""
    async with make_server(
        max_read_queue_size=8,
        max_reader_enqueue_timeouts=3,
        reader_timeout=0.1,
        max_reader_dequeue_timeouts=100,
    ) as server:
        assert (await init_hp_io(server, run_dir)).success
        frames = [movie_frame(1, i) for i in range(300)]
        request = StreamImagesRequest(stream_movie_data=True, update_interval_seconds=0.0)
        with stalled_stream_client(server.port, request):
            await wait_until(lambda: server.hub.subscriber_count == 1)
            (stalled,) = server.hub._subscribers
            received: dict[int, list[int]] = {i: [] for i in range(10)}

            async def healthy(slot: int, ready: anyio.Event) -> None:
                async with open_stream(server) as stream:
                    ready.set()
                    while len(received[slot]) < len(frames):
                        received[slot].append((await next_reply(stream)).frame.frame_number)

            async with anyio.create_task_group() as tg:
                for slot in range(10):
                    ready = anyio.Event()
                    tg.start_soon(healthy, slot, ready)
                    await ready.wait()
                await wait_until(lambda: server.hub.subscriber_count == 11)
                await upload(server, frames)
            await wait_until(lambda: stalled.ended is not None)
        assert all(numbers == list(range(300)) for numbers in received.values())
        assert "client too slow" in stalled.ended.message


_STREAMING_CLIENT = """
import sys
from panoseti_daq import DaqClient
with DaqClient({"daq_nodes": [{"ip_addr": sys.argv[1]}]}) as client:
    for frame in client.stream_images(None, True, True, 0.0):
        print(frame["frame_number"], flush=True)
"""


@pytest.mark.timeout(30)  # a client process
async def test_client_killed_mid_stream_frees_its_slot(make_server, run_dir):
    """R-STREAM-14: a client process killed (SIGKILL: no RST_STREAM, no goodbye) while frames
    flow to it frees its slot within 1 s; another client then takes the only slot."""
    async with make_server(max_concurrent_rpcs=1) as server:
        assert (await init_hp_io(server, run_dir)).success
        client = subprocess.Popen(
            [sys.executable, "-c", _STREAMING_CLIENT, f"127.0.0.1:{server.port}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            await wait_until(lambda: server.core.active_streams == 1, timeout_s=20)
            async with anyio.create_task_group() as tg:

                async def keep_uploading() -> None:
                    number = 0
                    while True:
                        await upload(server, [movie_frame(1, number + i) for i in range(20)])
                        number += 20

                tg.start_soon(keep_uploading)
                line = await anyio.to_thread.run_sync(client.stdout.readline)
                assert line.strip().isdigit()  # frames are flowing to it
                client.kill()
                killed_at = time.monotonic()
                await anyio.to_thread.run_sync(client.wait)
                await wait_until(lambda: server.core.active_streams == 0, timeout_s=1.0)
                assert time.monotonic() - killed_at < 1.0
                async with open_stream(server) as stream:  # the slot is free
                    assert (await next_reply(stream)).frame.module_id == 1
                tg.cancel_scope.cancel()
        finally:
            client.kill()
            client.wait()
            client.stdout.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# It counts asyncio's tasks: on trio the server's are trio tasks and the client's live in a
# trio-asyncio loop of their own, which asyncio.all_tasks() does not see.
@pytest.mark.timeout(30)  # 110 client cycles
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_connect_disconnect_cycles_leak_nothing(make_server, run_dir):
    """R-STREAM-14: 100 connect/stream/disconnect cycles; no growth in tasks or descriptors."""
    import asyncio

    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        config = {"daq_nodes": [{"ip_addr": f"127.0.0.1:{server.port}"}]}

        async def cycle(number: int) -> None:
            async with AsyncDaqClient(config) as client:
                stream = client.stream_images(None, True, True, 0.0)
                await wait_until(lambda: server.hub.subscriber_count == 1)
                await upload(server, [movie_frame(1, number)])
                image = await stream.__anext__()
                assert image["frame_number"] == number
                await stream.aclose()

        for number in range(10):  # warm up: caches, lazily created objects
            await cycle(number)
        await wait_until(lambda: server.core.active_streams == 0)
        tasks, fds = len(asyncio.all_tasks()), _fds()
        for number in range(100):
            await cycle(number)
        await wait_until(lambda: server.core.active_streams == 0, timeout_s=2)
        await wait_until(lambda: len(asyncio.all_tasks()) <= tasks, timeout_s=5)
        assert _fds() <= fds + 2
        assert server.hub.subscriber_count == 0


@pytest.mark.timeout(45)  # a server process and 50 streams
async def test_sigterm_with_fifty_streams(short_tmp):
    """R-STOP-1: 50 active streams all end with a status within the grace period; exit 0.
    (All from one peer: R-PEER-4's limit is raised above them.)"""
    limits = {"shutdown_grace_period": 3, "max_streams_per_peer": 60}
    with server_process(short_tmp, "--init-sim", config=limits) as (
        process,
        port,
        _,
    ):
        config = {"daq_nodes": [{"ip_addr": f"127.0.0.1:{port}"}]}
        ended: list[str] = []
        receiving: list[int] = []
        all_receiving = anyio.Event()
        async with AsyncDaqClient(config) as client:
            with anyio.fail_after(20):
                while True:
                    try:
                        async for _ in client.stream_images(None, True, True, 0.0):
                            break
                        break
                    except RpcError:
                        await anyio.sleep(0.05)  # the simulation is still starting

            async def reader(slot: int) -> None:
                try:
                    async for _ in client.stream_images(None, True, True, 0.0):
                        if slot not in receiving:
                            receiving.append(slot)
                            if len(receiving) == 50:
                                all_receiving.set()
                except RpcError as exc:
                    ended.append(exc.status.name)

            async with anyio.create_task_group() as tg:
                for slot in range(50):
                    tg.start_soon(reader, slot)
                with anyio.fail_after(20):
                    await all_receiving.wait()  # every stream is active and has had a frame
                t0 = time.monotonic()
                process.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(process.wait, 15)
            elapsed = time.monotonic() - t0
    assert code == 0
    assert elapsed < 3 + 1.5
    assert ended == ["UNAVAILABLE"] * 50
