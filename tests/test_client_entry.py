"""AsyncDaqClient started by anyio.run on each backend, and under a running trio-asyncio loop."""

from __future__ import annotations

import anyio
import numpy as np
import pytest
import trio_asyncio

from panoseti_daq import AsyncDaqClient

from .helpers import REAL_PH, movie_frame
from .reference_server import ReferenceServer

pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")

FRAMES = [movie_frame(1, 0), *REAL_PH[:3]]


async def first_frames(count: int) -> list[dict]:
    with ReferenceServer(FRAMES) as server:
        config = {"daq_nodes": [{"ip_addr": f"127.0.0.1:{server.port}"}]}
        async with AsyncDaqClient(config) as client:
            async with client.stream_images(None, True, True, 0.0) as stream:
                return [await stream.__anext__() for _ in range(count)]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_run_on_each_backend(backend):
    """Issue 5: `anyio.run(main)` and `anyio.run(main, backend="trio")`; R-PARSE-3: real ph256
    frames (negative int16 values) parse as the frames say."""
    got = anyio.run(first_frames, len(FRAMES), backend=backend)
    for parsed, frame in zip(got, FRAMES, strict=True):
        np.testing.assert_array_equal(parsed["image_array"], frame.pixels)
        assert parsed["image_array"].dtype == frame.pixels.dtype
        assert parsed["header"] == frame.to_dict()["header"]


def test_trio_with_a_running_trio_asyncio_loop_is_reused():
    """Issue 5: under trio the client reuses the trio-asyncio loop the caller already runs."""
    opened = []
    original = trio_asyncio.open_loop

    def counting_open_loop(*args, **kwargs):
        opened.append(1)
        return original(*args, **kwargs)

    async def main():
        async with trio_asyncio.open_loop():
            trio_asyncio.open_loop = counting_open_loop
            try:
                return await first_frames(1)
            finally:
                trio_asyncio.open_loop = original

    got = anyio.run(main, backend="trio")
    assert got[0]["module_id"] == 1
    assert opened == []


def test_plain_asyncio_programs_keep_plain_asyncio_loops():
    """Importing panoseti_daq (and with it trio-asyncio) must not turn every asyncio.run(),
    anyio.run() and blocking-client thread into a trio run in a helper thread: trio-asyncio's
    SyncTrioEventLoop made them 2-3x slower before bridge.py restored asyncio.new_event_loop."""
    import asyncio
    import threading

    import panoseti_daq  # noqa: F401

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    in_thread: list[type] = []
    thread = threading.Thread(target=lambda: in_thread.append(asyncio.run(loop_type())))
    thread.start()
    thread.join(10)
    for found in (asyncio.run(loop_type()), anyio.run(loop_type), *in_thread):
        assert not issubclass(found, trio_asyncio.BaseTrioEventLoop), found
    assert len(in_thread) == 1
