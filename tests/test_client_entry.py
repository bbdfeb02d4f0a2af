"""AsyncDaqClient started by anyio.run on each backend, and under a running trio-asyncio loop.

trio-asyncio is imported only inside tests: importing it patches asyncio for the process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import numpy as np
import pytest

from panoseti_daq import AsyncDaqClient
from tests.helpers import REAL_PH, movie_frame
from tests.reference_server import ReferenceServer

pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")

FRAMES = [movie_frame(1, 0), *REAL_PH[:3]]
ROOT = Path(__file__).resolve().parent.parent


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
    import trio_asyncio

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


def run_python(script: str) -> str:
    """Run `script` in a fresh interpreter (a process that has imported nothing yet)."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


ASYNCIO_STATE = """
    import asyncio, asyncio.events, asyncio.tasks

    def asyncio_state():
        return [
            (module.__name__, name, getattr(module, name, None))
            for module in (asyncio, asyncio.events, asyncio.tasks)
            for name in (
                "new_event_loop", "get_event_loop", "set_event_loop", "get_running_loop",
                "_get_running_loop", "get_event_loop_policy", "set_event_loop_policy",
                "current_task",
            )
        ] + [("policy", type(asyncio.get_event_loop_policy()))]
"""


def test_importing_the_package_changes_nothing_in_asyncio():
    """Importing panoseti_daq and every module in it leaves asyncio's functions and event-loop
    policy as they were, and does not import trio-asyncio (which would patch them)."""
    out = run_python(
        ASYNCIO_STATE
        + """
    import importlib, pkgutil, sys
    before = asyncio_state()
    import panoseti_daq
    names = [m.name for m in pkgutil.walk_packages(panoseti_daq.__path__, "panoseti_daq.")]
    for name in names:
        importlib.import_module(name)
    assert "panoseti_daq.server.app" in names and "panoseti_daq.client.aio" in names, names
    changed = [a for a, b in zip(before, asyncio_state()) if a != b]
    assert not changed, changed
    assert "trio_asyncio" not in sys.modules
    print("unchanged", len(names))
    """
    )
    assert out.startswith("unchanged")


def test_the_package_loads_the_clients_on_first_use():
    """`import panoseti_daq` loads the data model only: no grpclib, anyio or pyubx2 until a
    client is named; `dir()` and `from panoseti_daq import *` still offer every name."""
    out = run_python(
        """
    import sys
    import panoseti_daq
    heavy = ("grpclib", "anyio", "pyubx2", "panoseti_daq.client")
    assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
    assert {"AsyncDaqClient", "DaqClient", "UbloxClient"} <= set(dir(panoseti_daq))
    from panoseti_daq import DaqClient
    assert "grpclib" in sys.modules and "pyubx2" not in sys.modules
    namespace = {}
    exec("from panoseti_daq import *", namespace)
    assert set(panoseti_daq.__all__) <= set(namespace), set(panoseti_daq.__all__) - set(namespace)
    print("lazy")
    """
    )
    assert out.startswith("lazy")


SERVER_AND_CLIENT = """
    import anyio
    from panoseti_daq import AsyncDaqClient
    from panoseti_daq._grpclib.bridge import grpclib_loop
    from panoseti_daq.config import ServerConfig
    from panoseti_daq.server import DaqDataServer
    from tests.helpers import movie_frame

    async def upload_and_stream():
        config = ServerConfig.defaults().replace(shutdown_grace_period=2.0)
        async with DaqDataServer(config, host="127.0.0.1", port=0, uds="") as server:
            nodes = {"daq_nodes": [{"ip_addr": f"127.0.0.1:{server.port}"}]}
            async with AsyncDaqClient(nodes) as client:
                await client.upload_images(None, [movie_frame(3, 0), movie_frame(3, 1)])
            published = server.hub.published
        async with grpclib_loop() as loop:
            assert await loop.run(anyio_on_grpclib_loop) == 1
        return published

    async def anyio_on_grpclib_loop():
        with anyio.fail_after(5):  # a cancel scope: anyio asks asyncio for the current task
            send, receive = anyio.create_memory_object_stream[int](1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(send.send, 1)
                return await receive.receive()
"""


def test_anyio_asyncio_backend_imported_first_still_finds_grpclib_loop_under_trio():
    """Issue 5, 16: a program that ran anyio on asyncio (importing anyio's asyncio backend
    before trio-asyncio) then runs the server and client under trio: RPC handlers and client
    tasks use anyio on grpclib's trio-asyncio loop."""
    out = run_python(
        SERVER_AND_CLIENT
        + """
    import sys
    assert anyio.run(upload_and_stream) == 2
    assert "anyio._backends._asyncio" in sys.modules and "trio_asyncio" not in sys.modules
    assert anyio.run(upload_and_stream, backend="trio") == 2
    print("ok")
    """
    )
    assert out.strip() == "ok"


def test_after_a_trio_loop_plain_asyncio_programs_keep_plain_asyncio_loops():
    """Once a trio-asyncio loop has run (trio-asyncio imported), asyncio.run(), anyio.run()
    and new threads still get asyncio's own loops, not trio-asyncio's SyncTrioEventLoop."""
    out = run_python(
        SERVER_AND_CLIENT
        + """
    import asyncio, threading
    assert anyio.run(upload_and_stream, backend="trio") == 2
    import trio_asyncio

    async def loop_type():
        return type(asyncio.get_running_loop())

    in_thread = []
    thread = threading.Thread(target=lambda: in_thread.append(asyncio.run(loop_type())))
    thread.start()
    thread.join(10)
    found = [asyncio.run(loop_type()), anyio.run(loop_type), *in_thread]
    assert len(found) == 3
    assert not any(issubclass(t, trio_asyncio.BaseTrioEventLoop) for t in found), found
    assert anyio.run(upload_and_stream) == 2
    print("ok")
    """
    )
    assert out.strip() == "ok"
