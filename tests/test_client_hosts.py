"""The async client with several DAQ nodes and against the grpcio reference server (§13)."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from panoseti_daq import AsyncDaqClient, DaqClient, RpcError
from tests.conftest import daq_config
from tests.helpers import (
    REAL_PH,
    movie_frame,
    ph_frame,
    server_process,
    stats_lines,
    wait_until,
)
from tests.reference_server import ReferenceServer

pytestmark = pytest.mark.anyio


async def test_three_hosts_one_stopped_mid_stream(make_server, run_dir, short_tmp):
    """R-CLI-6: frames merge from three servers; one is stopped mid-stream; the others go on."""
    received: list[tuple[int, int]] = []

    async def receive(stream, count):
        with anyio.fail_after(15):
            while len(received) < count:
                image = await stream.__anext__()
                received.append((image["module_id"], image["frame_number"]))

    two_dir = short_tmp / "two"
    (two_dir / "data" / "module_1" / "obs_X").mkdir(parents=True)
    (two_dir / "data" / "module_1" / "obs_X" / "module_1.daq-active").touch()
    stats = two_dir / "stats.jsonl"
    stats_args = ("--stats-file", str(stats), "--stats-interval", "0.02")
    with server_process(two_dir, *stats_args) as (process, port, _):
        async with make_server() as one, make_server() as three:
            config = daq_config(one, three)
            config["daq_nodes"].append({"ip_addr": f"127.0.0.1:{port}"})
            two = f"127.0.0.1:{port}"
            async with AsyncDaqClient(config) as client:
                local = [f"127.0.0.1:{one.port}", f"127.0.0.1:{three.port}"]
                for host, data_dir in ((local, run_dir), (two, two_dir / "data")):
                    hp_io = {"data_dir": str(data_dir), "update_interval_seconds": 0.05}
                    assert await client.init_hp_io(host, {**hp_io, "force": True})
                stream = client.stream_images(None, True, True, 0.0)
                # Host two runs in its own process: its stats file says when it has the client.
                await wait_until(
                    lambda: (
                        one.hub.subscriber_count == three.hub.subscriber_count == 1
                        and [line["stream_clients"] for line in stats_lines(stats)[-1:]] == [1]
                    ),
                    timeout_s=15,
                )
                for module, host in enumerate(
                    (f"127.0.0.1:{one.port}", two, f"127.0.0.1:{three.port}"), start=1
                ):
                    await client.upload_images(host, [movie_frame(module, 0)])
                await receive(stream, 3)
                process.terminate()  # host two stops mid-stream
                await anyio.to_thread.run_sync(process.wait, 10)
                await client.upload_images(local, [ph_frame(5, 1)])
                await receive(stream, 5)
                await stream.aclose()
    assert sorted(received[:3]) == [(1, 0), (2, 0), (3, 0)]
    assert received[3:] == [(5, 1), (5, 1)]


async def test_named_host_that_does_not_answer(make_server):
    """R-CLI-2, R-CLI-3: only answering nodes are valid hosts; a named host that does not answer
    is a ConnectionError naming it."""
    async with make_server() as server:
        config = {
            "daq_nodes": [{"ip_addr": f"127.0.0.1:{server.port}"}, {"ip_addr": "127.0.0.1:1"}]
        }
        async with AsyncDaqClient(config) as client:
            assert await client.get_valid_daq_hosts() == {f"127.0.0.1:{server.port}"}
            with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1"):
                await client.init_hp_io(
                    "127.0.0.1:1", {"simulate_daq": True, "update_interval_seconds": 0.1}
                )
            with pytest.raises((ConnectionError, RpcError)) as info:
                async for _ in client.stream_images("127.0.0.1:1", True, True, 0.0):
                    pass
            assert "127.0.0.1:1" in str(info.value)


async def test_init_hp_io_takes_data_dir_from_the_node(make_server, run_dir):
    """R-CLI-5: data_dir comes from hp_io_cfg when present, else from the node in daq_config;
    init_sim starts the simulation; True when every host succeeded."""
    async with make_server() as server:
        node = {"ip_addr": f"127.0.0.1:{server.port}", "data_dir": str(run_dir)}
        async with AsyncDaqClient({"daq_nodes": [node]}) as client:
            hp_io = {"update_interval_seconds": 0.05, "force": True}
            assert await client.init_hp_io(None, hp_io)
            assert server.core.hp_io.data_dir == str(run_dir.resolve())
            assert server.core.hp_io.simulate_daq is False
            assert not await client.init_hp_io(None, {**hp_io, "data_dir": "/nonexistent/x"})
            assert server.core.hp_io.data_dir == str(run_dir.resolve())  # kept (R-INIT-7)
            assert await client.init_sim()
            assert server.core.hp_io.simulate_daq is True


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_upload_with_a_bad_image_keeps_the_images_before_it(make_server, anyio_backend):
    """R-CLI-7, R-UP-3: an image that is not one raises ImageError from upload_images, after
    every host has accepted the images before it (and none after it)."""
    from panoseti_daq import ImageError

    bad = movie_frame(6, 2).to_dict()
    bad["image_array"] = bad["image_array"][:5]  # 5 pixels for a 32x32 image
    images = [movie_frame(6, 0), movie_frame(6, 1), bad, movie_frame(6, 3)]
    async with make_server() as one, make_server() as two:
        async with AsyncDaqClient(daq_config(one, two)) as client:
            with pytest.raises(ImageError):
                await client.upload_images(None, images)
        for server in (one, two):
            assert server.hub.published == 2
            assert server.hub.latest[(6, "img16")].frame.frame_number == 1


async def test_our_client_against_the_grpcio_server(tmp_path):
    """Interop: the same parsed result from a grpcio server built from schema/."""
    frames = REAL_PH[:8]
    with ReferenceServer(frames) as reference:
        config = {"daq_nodes": [{"ip_addr": f"127.0.0.1:{reference.port}"}]}
        async with AsyncDaqClient(config) as client:
            assert await client.ping(f"127.0.0.1:{reference.port}")
            got = []
            async for image in client.stream_images(None, False, True, 0.0):
                got.append(image)
                if len(got) == len(frames):
                    break
            await client.upload_images(None, frames[:3])
        uploaded = reference.wait_for_uploads(3)
    for image, frame in zip(got, frames, strict=True):
        expected = frame.to_dict()
        np.testing.assert_array_equal(image["image_array"], expected["image_array"])
        assert image["image_array"].dtype == np.int16
        assert (
            image["header"]["pandas_unix_timestamp"] == expected["header"]["pandas_unix_timestamp"]
        )
        assert (image["module_id"], image["frame_number"]) == (frame.module_id, frame.frame_number)
    assert len(uploaded) == 3


def test_blocking_client_streams_and_stops_cleanly(live_server):
    """R-CLI-8: the blocking client; breaking out of the stream cancels its RPC."""
    daq, net, _ = live_server
    with DaqClient(daq, net) as client:
        assert client.init_sim()
        stream = client.stream_images(None, True, True, 0.0, wait_for_ready=True)
        images = [image for _, image in zip(range(6), stream, strict=False)]
        stream.close()
        assert len(images) == 6 and {i["type"] for i in images} <= {"MOVIE", "PULSE_HEIGHT"}
        assert client.ping(next(iter(client.get_valid_daq_hosts())))


@pytest.mark.parametrize("error", [KeyError("x"), ConnectionError("gone")])
async def test_body_exceptions_come_out_as_themselves(make_server, error):
    """R-CLI-8: an exception raised inside `async with` is not wrapped in an exception group."""
    async with make_server() as server:
        with pytest.raises(type(error)) as info:
            async with AsyncDaqClient(daq_config(server)) as client:
                stream = client.stream_images(None, True, True, 0.0)
                raise error
        assert info.value is error
        del stream


def test_blocking_client_body_exception_comes_out_as_itself(live_server):
    daq, net, _ = live_server
    with pytest.raises(ConnectionError, match="mine"), DaqClient(daq, net):
        raise ConnectionError("mine")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_stream_outliving_its_event_loop_is_collected_quietly(backend):
    """R-CLI-8: a stream still referenced after its client and loop ended is collected without
    an error (its RPCs ended with the client)."""
    import gc

    from tests.helpers import free_port

    async def open_and_leave():
        host = f"127.0.0.1:{free_port()}"  # nobody listens: the stream never gets going
        async with AsyncDaqClient({"daq_nodes": [{"ip_addr": host}]}) as client:
            return client.stream_images(host, True, True, 0.0)

    stream = anyio.run(open_and_leave, backend=backend)
    del stream
    gc.collect()  # pytest turns an exception in __del__ into a failure (filterwarnings)


@pytest.mark.parametrize(
    ("hp_io", "key"),
    [
        ({"update_interval_seconds": 0.1, "forse": True}, "forse"),
        ({"update_interval_seconds": "0.1"}, "update_interval_seconds"),
        ({"force": True}, "update_interval_seconds"),
    ],
)
async def test_init_hp_io_validates_before_sending(make_server, run_dir, hp_io, key):
    """R-CFG-2: init_hp_io refuses an unknown key, a wrong type or a missing required key with a
    ConfigError naming the key, before anything is sent: the server keeps its hp_io."""
    from panoseti_daq.errors import ConfigError

    async with make_server() as server:
        node = {"ip_addr": f"127.0.0.1:{server.port}", "data_dir": str(run_dir)}
        async with AsyncDaqClient({"daq_nodes": [node]}) as client:
            with pytest.raises(ConfigError) as info:
                await client.init_hp_io(None, {**hp_io, "data_dir": str(run_dir)})
            assert info.value.key == key
            assert server.core.hp_io is None
