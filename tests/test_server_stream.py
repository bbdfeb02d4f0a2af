"""StreamImages over real sockets (spec §5: R-STREAM-1 .. R-STREAM-14, R-WIRE-4)."""

from __future__ import annotations

import asyncio
import gc
import math
import time

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from panoseti_daq import AsyncDaqClient
from panoseti_daq.messages import StreamImagesRequest
from panoseti_daq.server.hub import EndReason
from tests.conftest import daq_config
from tests.helpers import (
    init_hp_io,
    movie_frame,
    next_reply,
    open_stream,
    ph_frame,
    stalled_stream_client,
    upload,
    wait_until,
)

pytestmark = pytest.mark.anyio


async def expect_status(server, status, match, **stream_args):
    async with open_stream(server, subscribed=False, **stream_args) as stream:
        with pytest.raises(GRPCError) as info:
            await next_reply(stream)
    assert info.value.status == status
    assert match in info.value.message
    return info.value


async def test_nothing_requested_is_invalid_argument(make_server):
    """R-STREAM-1 (checked before R-STREAM-2): both flags false."""
    async with make_server() as server:
        await expect_status(server, Status.INVALID_ARGUMENT, "both false", movie=False, ph=False)


async def test_hp_io_not_initialized_is_failed_precondition(make_server):
    """R-STREAM-2: no hp_io configuration yet."""
    async with make_server() as server:
        await expect_status(server, Status.FAILED_PRECONDITION, "hp_io is not initialized")


@pytest.mark.parametrize("interval", [-0.5, math.nan, 61.0])
async def test_bad_interval_is_invalid_argument(make_server, run_dir, interval):
    """R-STREAM-5: negative, NaN or above max_client_update_interval_seconds."""
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        error = await expect_status(
            server, Status.INVALID_ARGUMENT, "update_interval_seconds", interval=interval
        )
        assert "60" in error.message


async def test_too_many_streams_is_resource_exhausted(make_server, run_dir):
    """R-STREAM-4: more than max_concurrent_rpcs active streams; the message names the limit."""
    async with make_server(max_concurrent_rpcs=2, max_streams_per_peer=2) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server), open_stream(server):
            error = await expect_status(server, Status.RESOURCE_EXHAUSTED, "limit is 2")
            assert error


async def test_lossless_in_order_with_filters(make_server, run_dir):
    """R-STREAM-6, -7, -8, -10, R-UP-1, R-WIRE-4: interval 0 gets every wanted frame in order."""
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        frames = [movie_frame(m, i) for i in range(30) for m in (1, 2)]
        frames += [ph_frame(m, i) for i in range(30) for m in (1, 2)]
        async with open_stream(server, movie=True, ph=False, module_ids=[2]) as only_movie_2:
            before = time.time_ns()
            await upload(server, frames)
            got = [await next_reply(only_movie_2) for _ in range(30)]
        assert [r.frame.frame_number for r in got] == list(range(30))
        assert {(r.frame.module_id, r.frame.product.name) for r in got} == {(2, "img16")}
        assert all(r.name == "test-node" and r.timestamp_ns >= before for r in got)
        assert got[5].frame.pixels.tolist() == movie_frame(2, 5).pixels.tolist()


async def test_paced_client_gets_newest_sample_and_hold(make_server, run_dir):
    """R-STREAM-8, R-STREAM-9: at most one batch per interval, the newest frame per key."""
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server, ph=False, interval=0.4) as stream:
            await upload(server, [movie_frame(1, 0)])
            first = await next_reply(stream)
            t_first = anyio.current_time()
            await upload(server, [movie_frame(1, i) for i in range(1, 50)])
            second = await next_reply(stream)
            t_second = anyio.current_time()
        assert first.frame.frame_number == 0
        assert second.frame.frame_number == 49  # intermediate frames skipped
        assert t_second - t_first >= 0.35


async def test_paced_client_joining_gets_the_newest_frames_at_once(make_server, run_dir):
    """R-STREAM-9: a paced client that subscribes while the hub holds frames gets, first, the
    newest frame of each subscribed (module, product)."""
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        await upload(server, [movie_frame(1, i) for i in range(3)] + [movie_frame(2, 7)])
        async with open_stream(server, ph=False, interval=0.5) as stream:
            replies = [await next_reply(stream), await next_reply(stream)]
        got = sorted((r.frame.module_id, r.frame.frame_number) for r in replies)
        assert got == [(1, 2), (2, 7)]


async def test_slow_client_is_dropped_others_unaffected(make_server, run_dir):
    """R-STREAM-11: a reader that never reads is ended alone (once its full queue has gone
    untaken for max_reader_enqueue_timeouts x reader_timeout); healthy readers lose nothing."""
    async with make_server(
        max_read_queue_size=4,
        max_reader_enqueue_timeouts=3,
        reader_timeout=0.1,
        max_reader_dequeue_timeouts=100,
    ) as server:
        assert (await init_hp_io(server, run_dir)).success
        frames = [movie_frame(1, i) for i in range(400)]
        request = StreamImagesRequest(stream_movie_data=True, update_interval_seconds=0.0)
        with stalled_stream_client(server.port, request):
            await wait_until(lambda: server.hub.subscriber_count == 1)
            (stalled,) = server.hub._subscribers
            async with open_stream(server) as healthy:
                await wait_until(lambda: server.hub.subscriber_count == 2)
                received = []

                async def read_all():
                    while len(received) < len(frames):
                        received.append((await next_reply(healthy)).frame.frame_number)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_all)
                    await upload(server, frames)
                assert received == list(range(400))
            await wait_until(lambda: stalled.ended is not None)
            assert stalled.ended.reason is EndReason.TOO_SLOW
            assert "client too slow: no frame taken for 0.3 s" in stalled.ended.message
            assert f"{stalled.dropped} frames dropped" in stalled.ended.message
            assert stalled.dropped >= 3
        await wait_until(lambda: server.hub.subscriber_count == 0, timeout_s=2)


async def test_idle_reader_deadline_exceeded(make_server, run_dir):
    """R-STREAM-12: no data for reader_timeout x max_reader_dequeue_timeouts."""
    async with make_server(reader_timeout=0.1, max_reader_dequeue_timeouts=3) as server:
        assert (await init_hp_io(server, run_dir)).success
        with anyio.fail_after(5):
            error = await expect_status(server, Status.DEADLINE_EXCEEDED, "no data for 0.3 s")
        assert error


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_reader_waiting_for_each_frame_leaves_no_timers_behind(make_server, run_dir):
    """R-STREAM-12 on trio: the idle deadline of a reader waiting for frames is kept by the
    task beside its handler, not by a timer per wait. trio-asyncio keeps a cancelled asyncio
    timer until it would have fired (here 15 s later): one per frame piled up ~15,000 of them
    at 1,000 frames/s, and the garbage collector's full passes over them stalled every stream.
    """
    frames = 200
    async with make_server() as server, AsyncDaqClient(daq_config(server)) as client:
        assert await client.init_hp_io(
            None, {"update_interval_seconds": 60.0, "force": True, "data_dir": str(run_dir)}
        )
        publish = server.core.publisher("upload")
        async with client.stream_images(None, True, True, 0.0) as stream:
            await wait_until(lambda: server.hub.subscriber_count == 1)
            # Timers other tests' loops left behind count before and after alike.
            before = _cancelled_timers()
            received = []
            with anyio.fail_after(30):
                for number in range(frames):
                    publish(movie_frame(1, number))  # the handler waits for each frame
                    received.append((await stream.__anext__())["frame_number"])
            assert received == list(range(frames))
            lingering = _cancelled_timers() - before
            assert lingering < frames // 10, lingering


def _cancelled_timers() -> int:
    """Cancelled asyncio timers alive in this process (after a collection)."""
    gc.collect()
    return sum(
        1
        for handle in gc.get_objects()
        if isinstance(handle, asyncio.TimerHandle) and handle.cancelled()
    )


async def test_frame_resets_dequeue_count(make_server, run_dir):
    """R-STREAM-12: a frame resets the count of dequeue timeouts."""
    # Gaps of 0.6 s between frames: one timeout each (0.5 s), never two in a row, though 3 x
    # 0.6 s > 2 x 0.5 s in all. The 0.4 s left is for an upload under load (on trio, through
    # the bridge).
    async with make_server(reader_timeout=0.5, max_reader_dequeue_timeouts=2) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server) as stream:
            for i in range(3):
                await anyio.sleep(0.6)
                await upload(server, [movie_frame(1, i)])
                assert (await next_reply(stream)).frame.frame_number == i


async def test_disconnect_frees_slot_within_one_second(make_server, run_dir):
    """R-STREAM-14: a client that goes away frees its slot."""
    async with make_server(max_concurrent_rpcs=1) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server) as stream:
            await stream.cancel()
        await wait_until(lambda: server.core.active_streams == 0, timeout_s=1.0)
        async with open_stream(server):  # subscribed (response headers): the slot is free
            assert server.core.active_streams == 1


async def test_force_init_cancels_twenty_streams(make_server, run_dir):
    """R-STREAM-13, R-INIT-6: a forced InitHpIo ends every stream with CANCELLED."""
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        statuses = []

        async def reader():
            async with open_stream(server) as stream:
                try:
                    while True:
                        await next_reply(stream)
                except GRPCError as exc:
                    statuses.append((exc.status, exc.message))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(reader)
            await wait_until(lambda: server.core.active_streams == 20)
            reply = await init_hp_io(server, run_dir, force=True)
        assert reply.success
        assert len(statuses) == 20
        assert {s for s, _ in statuses} == {Status.CANCELLED}
        assert all("reconfigured" in m for _, m in statuses)
