"""Slow readers over real sockets: overruns, drop notices, stalled readers (R-STREAM-11 revised,
R-CLI-10)."""

from __future__ import annotations

import socket
import time
import urllib.parse

import anyio
import h2.config
import h2.connection
import h2.events
import pytest
from grpclib.client import Channel
from grpclib.config import Configuration

from panoseti_daq import AsyncDaqClient
from panoseti_daq._grpclib.codec import DaqCodec
from panoseti_daq.client.stream import dropped_before
from panoseti_daq.frames import PanoFrame
from panoseti_daq.messages import StreamImagesRequest
from panoseti_daq.server.hub import EndReason
from tests.conftest import daq_config
from tests.helpers import (
    init_hp_io,
    movie_frame,
    next_reply,
    open_stream,
    stalled_stream_client,
    upload,
    wait_until,
)

pytestmark = pytest.mark.anyio

SMALL_WINDOW = 2**16  # the smallest HTTP/2 window: a reader that reads slowly soon blocks sends


@pytest.fixture
def anyio_backend():
    return "asyncio"  # raw grpclib calls from the test


def _small_window_channel(server):
    """A maker of channels with 64 KiB windows, so that reading slowly holds the server's
    handler back (a grpclib client acknowledges data only as it is read)."""
    config = Configuration(
        http2_connection_window_size=SMALL_WINDOW, http2_stream_window_size=SMALL_WINDOW
    )
    return lambda: Channel("127.0.0.1", server.port, codec=DaqCodec(), config=config)


async def _watch_queue_depths(server, limit: int, seen: list[int]) -> None:
    """Record the deepest client queue, every millisecond, until cancelled."""
    while True:
        depths = [client.queue_depth for client in server.hub.subscriber_stats()]
        seen.append(max(depths, default=0))
        assert seen[-1] <= limit
        await anyio.sleep(0.001)


async def test_slow_reader_keeps_streaming_with_exact_drop_notices(make_server, run_dir):
    """R-STREAM-11: under a high ingest rate a slow reader (reads with a delay) keeps streaming;
    the notices on its frames count exactly the frames it missed; a fast reader beside it misses
    nothing; no client queue ever holds more than max_read_queue_size frames."""
    count, queue = 1500, 8
    async with make_server(
        max_read_queue_size=queue,
        reader_timeout=0.5,
        max_reader_enqueue_timeouts=4,
        max_reader_dequeue_timeouts=100,
    ) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with (
            open_stream(server, ph=False) as fast,
            open_stream(server, ph=False, make_channel=_small_window_channel(server)) as slow,
        ):
            await wait_until(lambda: server.hub.subscriber_count == 2)
            fast_got: list[tuple[int, str]] = []
            slow_got: list[tuple[int, str]] = []

            async def read_fast() -> None:
                while len(fast_got) < count + 1:
                    reply = await fast.recv_message()
                    fast_got.append((reply.frame.frame_number, reply.message))

            async def read_slowly() -> None:
                while not slow_got or slow_got[-1][0] != count:
                    reply = await slow.recv_message()
                    slow_got.append((reply.frame.frame_number, reply.message))
                    await anyio.sleep(0.002)

            depths: list[int] = []
            async with anyio.create_task_group() as readers:
                readers.start_soon(_watch_queue_depths, server, queue, depths)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_fast)
                    tg.start_soon(read_slowly)
                    await upload(server, [movie_frame(1, i) for i in range(count)])
                    (slow_client,) = [
                        s for s in server.hub._subscribers if s.peer and s.dropped
                    ]  # the slow one: it has overrun
                    # Once its queue has room, one last frame carries the last notice.
                    await wait_until(lambda: slow_client.queue_depth < queue)
                    await upload(server, [movie_frame(1, count)])
                readers.cancel_scope.cancel()
            assert slow_client.ended is None
    assert [number for number, _ in fast_got] == list(range(count + 1))
    assert all(message == "" for _, message in fast_got)
    numbers = [number for number, _ in slow_got]
    assert numbers == sorted(set(numbers)) and numbers[-1] == count
    notices = [dropped_before(message) for _, message in slow_got]
    # Each notice counts exactly the frames lost between two frames received.
    gaps = [b - a - 1 for a, b in zip([-1, *numbers], numbers, strict=False)]
    assert notices == gaps
    assert sum(notices) == slow_client.dropped == count + 1 - len(numbers) > 0
    assert max(depths) <= queue


async def test_slow_reader_that_keeps_taking_is_not_ended_past_the_limit(make_server, run_dir):
    """R-STREAM-11: only a full queue that goes untaken for max_reader_enqueue_timeouts x
    reader_timeout ends a reader. A slow reader (small window, a delay per message) overruns in
    each of three bursts and takes what was queued; the bursts are further apart than that
    limit, so the stream runs well past it from the first overrun: it is not ended, and its
    notices count exactly the frames it missed."""
    queue, reader_timeout, enqueue_timeouts = 4, 0.25, 2
    limit_s = reader_timeout * enqueue_timeouts
    async with make_server(
        max_read_queue_size=queue,
        reader_timeout=reader_timeout,
        max_reader_enqueue_timeouts=enqueue_timeouts,
        max_reader_dequeue_timeouts=100,
    ) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(
            server, ph=False, make_channel=_small_window_channel(server)
        ) as slow:
            await wait_until(lambda: server.hub.subscriber_count == 1)
            (reader,) = server.hub._subscribers
            got: list[tuple[int, str]] = []

            async def read_slowly() -> None:
                while True:
                    reply = await next_reply(slow)  # GRPCError if the server ends it
                    got.append((reply.frame.frame_number, reply.message))
                    await anyio.sleep(0.002)

            async def drained() -> None:
                await wait_until(lambda: reader.queue_depth == 0 and len(got) == reader.sent)

            burst, dropped = 100, []
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_slowly)
                for round_ in range(3):
                    numbers = range(round_ * burst, (round_ + 1) * burst)
                    await upload(server, [movie_frame(1, number) for number in numbers])
                    dropped.append(reader.dropped)
                    if round_ == 0:
                        first_overrun = time.monotonic()
                    await drained()
                    # The time under test: no frame comes, the reader has taken everything.
                    await anyio.sleep(1.5 * limit_s)
                    assert reader.ended is None
                await upload(server, [movie_frame(1, 3 * burst)])  # carries the last notice
                await wait_until(lambda: got and got[-1][0] == 3 * burst)
                assert time.monotonic() - first_overrun > 2 * limit_s
                assert reader.ended is None and server.hub.subscriber_count == 1
                tg.cancel_scope.cancel()
    assert 0 < dropped[0] < dropped[1] < dropped[2]  # it overran in every burst
    numbers = [number for number, _ in got]
    assert numbers == sorted(set(numbers)) and numbers[-1] == 3 * burst
    gaps = [b - a - 1 for a, b in zip([-1, *numbers], numbers, strict=False)]
    assert [dropped_before(message) for _, message in got] == gaps
    assert sum(gaps) == reader.dropped == dropped[2]


def _read_trailers(sock: socket.socket, conn: h2.connection.H2Connection) -> dict[str, str]:
    """Read what the server sent, without acknowledging any data, up to its trailers."""
    sock.settimeout(5.0)
    while True:
        data = sock.recv(1 << 20)
        assert data, "the server closed the connection without trailers"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.TrailersReceived):
                return {k.decode(): v.decode() for k, v in event.headers}


async def test_stalled_reader_is_ended_on_time_with_the_reason(make_server, run_dir):
    """R-STREAM-11: a reader that stops reading is ended once its full queue has gone untaken
    for max_reader_enqueue_timeouts x reader_timeout, with RESOURCE_EXHAUSTED "client too slow:
    no frame taken for N s, M frames dropped"; it reaches the client even though its flow-control
    window is shut. The limit (1 s) is long beside an upload, and the end is checked against
    the hub's own deadline: at it or after, and well before a second limit has passed."""
    limit_s = 1.0
    async with make_server(
        max_read_queue_size=4,
        reader_timeout=limit_s / 2,
        max_reader_enqueue_timeouts=2,
        max_reader_dequeue_timeouts=100,
    ) as server:
        assert (await init_hp_io(server, run_dir)).success
        request = StreamImagesRequest(stream_movie_data=True, update_interval_seconds=0.0)
        with stalled_stream_client(server.port, request) as (sock, conn):
            await wait_until(lambda: server.hub.subscriber_count == 1)
            (stalled,) = server.hub._subscribers
            # More than a 64 KiB window and the queue: its handler blocks in a send.
            await upload(server, [movie_frame(1, i) for i in range(100)])
            assert stalled.queue_depth == 4
            full_until = stalled.deadline_s  # when its queue filled, plus the limit
            await wait_until(lambda: stalled.ended is not None)
            ended_at = time.monotonic()
            assert stalled.ended.reason is EndReason.TOO_SLOW
            # Not before its deadline; after it by less than the limit itself (a generous bound
            # on a loaded host: an end by any later timer, e.g. the idle one, comes later still).
            assert full_until <= ended_at < full_until + limit_s
            await wait_until(lambda: server.hub.subscriber_count == 0)
            trailers = await anyio.to_thread.run_sync(_read_trailers, sock, conn)
    assert trailers["grpc-status"] == "8"  # RESOURCE_EXHAUSTED
    message = urllib.parse.unquote(trailers["grpc-message"])
    assert message == f"client too slow: no frame taken for 1 s, {stalled.dropped} frames dropped"
    # Every frame was taken (sent or stuck in the shut window), queued, or dropped and counted.
    assert stalled.sent + 4 + stalled.dropped == 100 and stalled.dropped > 0


async def test_parsed_frames_carry_dropped_before(make_server, run_dir):
    """R-CLI-10: the client's parsed dicts carry `dropped_before` (0 when none); typed messages
    keep the server's `message`; the decoder's replies (`replies=True`, what the CLI reads)
    carry both, with frames and the server's name."""
    async with make_server(max_read_queue_size=4) as server:
        assert (await init_hp_io(server, run_dir)).success
        publish = server.core.publisher("upload")
        async with AsyncDaqClient(daq_config(server)) as client:
            parsed = client.stream_images(
                update_interval_seconds=0.0, stream_pulse_height_data=False
            )
            typed = client.stream_images(
                update_interval_seconds=0.0,
                stream_pulse_height_data=False,
                parse_pano_images=False,
            )
            fast = client.stream_images(
                update_interval_seconds=0.0, stream_pulse_height_data=False, replies=True
            )
            async with parsed, typed, fast:
                await wait_until(lambda: server.hub.subscriber_count == 3)
                for number in range(10):  # without yielding: 4 queued, 6 dropped per client
                    publish(movie_frame(1, number))
                got = [await parsed.__anext__() for _ in range(4)]
                messages = [await typed.__anext__() for _ in range(4)]
                replies = [await fast.__anext__() for _ in range(4)]
                await wait_until(
                    lambda: all(s.queue_depth == 0 for s in server.hub.subscriber_stats())
                )
                publish(movie_frame(1, 10))
                got.append(await parsed.__anext__())
                messages.append(await typed.__anext__())
                replies.append(await fast.__anext__())
    assert [(f["frame_number"], f["dropped_before"]) for f in got] == [
        (0, 0),
        (1, 0),
        (2, 0),
        (3, 0),
        (10, 6),
    ]
    assert [m.message for m in messages] == ["", "", "", "", "dropped 6 frames"]
    assert [(r.frame.frame_number, r.dropped_before) for r in replies] == [
        (f["frame_number"], f["dropped_before"]) for f in got
    ]
    assert all(isinstance(r.frame, PanoFrame) for r in replies)
    assert {r.name for r in replies} == {server.config.server_name}


def test_dropped_before_reads_only_the_notice():
    """R-CLI-10: the count from "dropped N frames"; anything else is 0."""
    assert dropped_before("dropped 12 frames") == 12
    assert dropped_before("dropped 1 frame") == 1
    assert dropped_before("") == 0
    assert dropped_before("hello") == 0
    assert dropped_before("dropped many frames") == 0


@pytest.mark.timeout(30)  # 3,000 frames uploaded and read back
async def test_our_client_bounds_how_far_a_stalled_viewer_falls_behind(make_server, run_dir):
    """R-STREAM-11, R-CLI-10 through our client: a viewer that stops reading while 3,000 frames
    come has few frames waiting for it when it reads again (its 256 KiB HTTP/2 window, ~110
    img16 images, its stream buffer and the server's queue); the notices of the frames it
    missed come with the frames after them, and add up to all it missed. With grpclib's 4 MiB
    window it had ~2,000 stale frames to read through first."""
    total = 3000
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        async with AsyncDaqClient(daq_config(server)) as client:
            stream = client.stream_images(
                update_interval_seconds=0.0, stream_pulse_height_data=False
            )
            async with stream:
                await wait_until(lambda: server.hub.subscriber_count == 1)
                await upload(server, [movie_frame(1, number) for number in range(total)])
                (subscriber,) = server.hub.subscriber_stats()
                assert subscriber.dropped > 0  # the server did not wait for the viewer
                # It reads again: everything that was on its way, until nothing is left.
                got = []
                async for frame in stream:
                    got.append((frame["frame_number"], frame["dropped_before"]))
                    (subscriber,) = server.hub.subscriber_stats()
                    if subscriber.queue_depth == 0 and subscriber.sent == len(got):
                        break
                await upload(server, [movie_frame(1, total)])
                frame = await stream.__anext__()
                got.append((frame["frame_number"], frame["dropped_before"]))
    numbers = [number for number, _ in got]
    assert numbers == sorted(numbers) and numbers[-1] == total
    stale = next(index for index, (_, dropped) in enumerate(got) if dropped)
    assert stale <= 300, f"{stale} frames came before the first drop notice"
    assert sum(dropped for _, dropped in got) + len(got) == total + 1


@pytest.mark.parametrize("window", [65_534, 2**31, 0])
def test_client_window_out_of_range_is_refused_by_name(window):
    """http2_window_bytes outside HTTP/2's 65535 .. 2**31-1 is a ValueError naming it."""
    with pytest.raises(
        ValueError, match=f"http2_window_bytes must be between 65535 and .*{window}"
    ):
        AsyncDaqClient({"daq_nodes": [{"ip_addr": "127.0.0.1:1"}]}, http2_window_bytes=window)
