"""Who closes a stream (R-CLI-8): its `async with`/`aclose`, a `for` loop over the blocking
iterator, or the client that opened it; never a finalizer (`__del__`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pytest
from anyio.from_thread import start_blocking_portal

from panoseti_daq import AsyncDaqClient, DaqClient
from panoseti_daq.client.stream import ImageStream
from panoseti_daq.client.sync import BlockingImageStream
from panoseti_daq.server import DaqDataServer
from tests.conftest import daq_config
from tests.helpers import movie_frame, wait_until

HP_IO = {"update_interval_seconds": 0.05, "force": True}


def poll(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait, blocking, for a condition of a server running in another thread."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@contextlib.contextmanager
def server_in_a_thread(config) -> Iterator[DaqDataServer]:
    """A DaqDataServer on its own event loop thread, so that a blocking client can use it."""
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(
            DaqDataServer(config, host="127.0.0.1", port=0, uds="")
        ) as server,
    ):
        yield server


def test_no_finalizer_closes_streams():
    """Streams are closed by their owners, never by garbage collection."""
    assert not hasattr(ImageStream, "__del__")
    assert not hasattr(BlockingImageStream, "__del__")


def test_blocking_break_out_of_a_for_loop_cancels_the_rpc(base_config, run_dir):
    """R-CLI-8: `break` out of `for image in stream` cancels the RPC while the client stays
    open; so does `close()`; a stream nobody closed ends with its client."""
    with server_in_a_thread(base_config) as server, DaqClient(daq_config(server)) as client:
        assert client.init_hp_io(None, {**HP_IO, "data_dir": str(run_dir)})
        stream = client.stream_images(None, True, True, 0.0)
        poll(lambda: server.hub.subscriber_count == 1)
        client.upload_images(None, [movie_frame(1, 0)])
        for image in stream:
            assert image["module_id"] == 1
            break
        assert stream.closed
        poll(lambda: server.hub.subscriber_count == 0)
        assert client.ping(f"127.0.0.1:{server.port}")

        closed_by_hand = client.stream_images(None, True, True, 0.0)
        poll(lambda: server.hub.subscriber_count == 1)
        closed_by_hand.close()
        assert closed_by_hand.closed
        poll(lambda: server.hub.subscriber_count == 0)

        left_open = client.stream_images(None, True, True, 0.0)
        poll(lambda: server.hub.subscriber_count == 1)
    assert left_open.closed
    assert list(left_open) == []


@pytest.mark.anyio
async def test_async_stream_closed_by_its_async_with_or_by_its_client(make_server, run_dir):
    """R-CLI-8: leaving `async with client.stream_images(...)` (here by `break`) cancels the
    RPCs while the client stays open; a stream left without it ends when its client closes."""
    async with make_server() as server:
        async with AsyncDaqClient(daq_config(server)) as client:
            assert await client.init_hp_io(None, {**HP_IO, "data_dir": str(run_dir)})
            async with client.stream_images(None, True, True, 0.0) as stream:
                await wait_until(lambda: server.hub.subscriber_count == 1)
                await client.upload_images(None, [movie_frame(1, 0)])
                async for image in stream:
                    assert image["module_id"] == 1
                    break
            assert stream.closed
            await wait_until(lambda: server.hub.subscriber_count == 0)

            left_open = client.stream_images(None, True, True, 0.0)
            await wait_until(lambda: server.hub.subscriber_count == 1)
            await client.upload_images(None, [movie_frame(1, 1)])
            async for image in left_open:
                assert image["frame_number"] == 1
                break
            assert not left_open.closed
        assert left_open.closed
        await wait_until(lambda: server.hub.subscriber_count == 0)
        with pytest.raises(StopAsyncIteration):
            await left_open.__anext__()
