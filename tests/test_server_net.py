"""Listeners, reflection, health, shutdown and config errors (spec §10, §11)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time

import anyio
import pytest

from panoseti_daq import AsyncDaqClient, ConfigError, RpcError
from panoseti_daq.server import DaqDataServer
from tests.conftest import daq_config
from tests.helpers import (
    init_hp_io,
    ipv6_loopback,
    movie_frame,
    next_reply,
    open_stream,
    server_process,
    upload,
)

pytestmark = pytest.mark.anyio


async def test_tcp_and_unix_socket_at_once(make_server):
    """R-NET-1: one server answers on TCP and on its Unix socket (both backends)."""
    async with make_server() as server:
        config = {
            "daq_nodes": [
                *daq_config(server)["daq_nodes"],
                *daq_config(server, unix=True)["daq_nodes"],
            ]
        }
        async with AsyncDaqClient(config) as client:
            status = await client.get_daq_host_status()
    assert status == {f"127.0.0.1:{server.port}": True, f"unix://{server.uds_path}": True}


async def _pings(host: str, port: int) -> bool:
    from grpclib.client import Channel
    from grpclib.const import Cardinality

    from panoseti_daq._grpclib.codec import DaqCodec
    from panoseti_daq.messages import Empty

    channel = Channel(host, port, codec=DaqCodec())
    try:
        with anyio.fail_after(5):
            async with channel.request(
                "/daqdata.DaqData/Ping", Cardinality.UNARY_UNARY, Empty, Empty
            ) as stream:
                await stream.send_message(Empty(), end=True)
                return await stream.recv_message() == Empty()
    finally:
        channel.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this host")
async def test_wildcard_port_0_listens_on_ipv4_and_ipv6_at_one_port(base_config):
    """R-NET-1: host "[::]" with port 0 binds one free port that answers over IPv4 and IPv6
    (the kernel picks the port in the bind: no window between choosing and binding it)."""
    async with DaqDataServer(base_config, host="[::]", port=0, uds="") as server:
        assert server.port
        assert await _pings("127.0.0.1", server.port)
        assert await _pings("::1", server.port)


async def test_stale_socket_is_replaced(base_config, short_tmp):
    """R-NET-2: a socket file nobody listens on is removed at start."""
    path = short_tmp / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    async with DaqDataServer(base_config, host="127.0.0.1", port=0, uds=str(path)) as server:
        async with AsyncDaqClient(daq_config(server, unix=True)) as client:
            assert await client.get_valid_daq_hosts() == {f"unix://{path}"}
    assert not path.exists()  # removed at stop


async def test_non_socket_file_is_an_error(base_config, short_tmp):
    """R-NET-2: a regular file at the socket path is an error at start, and is left alone."""
    path = short_tmp / "file.sock"
    path.write_text("keep me")
    with pytest.raises(ConfigError, match="is not a socket"):
        async with DaqDataServer(base_config, host="127.0.0.1", port=0, uds=str(path)):
            pass
    assert path.read_text() == "keep me"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("x" * 120 + ".sock", "socket path is too long"),
        ("missing/s.sock", "directory .* does not exist"),
    ],
)
async def test_socket_path_no_socket_fits_is_an_error_naming_it(
    base_config, short_tmp, name, problem
):
    """R-NET-2: a socket path too long for sun_path, or in a missing directory, is a
    ConfigError naming the key and the problem, not an OSError from bind."""
    with pytest.raises(ConfigError, match=f"^'unix_domain_socket': {problem}"):
        async with DaqDataServer(base_config, host="127.0.0.1", port=0, uds=str(short_tmp / name)):
            pass


async def test_health_serving(make_server):
    """R-NET-4: the standard health service reports SERVING while running (NOT_SERVING during
    shutdown, through the real SIGTERM path: test_shutdown.py)."""
    from grpclib.health.v1.health_grpc import HealthStub
    from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

    from panoseti_daq._grpclib.bridge import grpclib_loop
    from tests.helpers import channel

    async with make_server() as server:

        async def check(service):
            ch = channel(server)
            try:
                return (await HealthStub(ch).Check(HealthCheckRequest(service=service))).status
            finally:
                ch.close()

        async with grpclib_loop() as loop:
            assert await loop.run(check, "") == HealthCheckResponse.SERVING
            assert await loop.run(check, "daqdata.DaqData") == HealthCheckResponse.SERVING


GRPCIO_REFLECTION = textwrap.dedent(
    """
    import sys, grpc
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    channel = grpc.insecure_channel(sys.argv[1])
    database = ProtoReflectionDescriptorDatabase(channel)
    print(",".join(sorted(database.get_services())))
    service = DescriptorPool(database).FindServiceByName("daqdata.DaqData")
    for method in service.methods:
        print(method.name, method.input_type.full_name, method.output_type.full_name,
              method.client_streaming, method.server_streaming)
    """
)


@pytest.mark.timeout(30)  # a client process
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_grpcio_reflection_client_resolves_the_service(make_server):
    """R-NET-3: a grpcio reflection client lists daqdata.DaqData, health and reflection itself,
    and resolves daqdata.DaqData."""
    async with make_server() as server:
        result = await anyio.run_process(
            [sys.executable, "-c", GRPCIO_REFLECTION, f"127.0.0.1:{server.port}"], check=False
        )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    services = out.splitlines()[0].split(",")
    assert "daqdata.DaqData" in services and "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services  # reflection itself
    assert "grpc.reflection.v1.ServerReflection" in services
    assert "StreamImages daqdata.StreamImagesRequest daqdata.StreamImagesResponse False True" in out
    assert "UploadImages daqdata.UploadImageRequest google.protobuf.Empty True False" in out


async def first_frame(client, timeout_s=20.0):
    """Wait until the server streams (its --init-sim may still be starting)."""
    with anyio.fail_after(timeout_s):
        while True:
            try:
                async for _ in client.stream_images(None, True, True, 0.0):
                    return
            except RpcError as exc:
                if exc.status.name != "FAILED_PRECONDITION":
                    raise
                await anyio.sleep(0.05)


@pytest.mark.timeout(30)  # a server process
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
async def test_sigterm_while_streaming(short_tmp, backend):
    """R-STOP-1: streams end with UNAVAILABLE, the simulation's files go, exit code 0."""
    with server_process(short_tmp, "--init-sim", backend=backend) as (process, port, _uds):
        config = {"daq_nodes": [{"ip_addr": f"127.0.0.1:{port}"}]}
        errors = []
        async with AsyncDaqClient(config) as client:
            await first_frame(client)

            receiving: set[int] = set()
            all_receiving = anyio.Event()

            async def reader(slot: int) -> None:
                try:
                    async for _ in client.stream_images(None, True, True, 0.0):
                        receiving.add(slot)
                        if len(receiving) == 5:
                            all_receiving.set()
                except RpcError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                for slot in range(5):
                    tg.start_soon(reader, slot)
                with anyio.fail_after(20):
                    await all_receiving.wait()  # every stream is active and has had a frame
                assert any((short_tmp / "sim").rglob("*.pff"))
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
            _out, err = await anyio.to_thread.run_sync(process.communicate, None, 10)
        elapsed = time.monotonic() - started
    assert process.returncode == 0, err
    assert elapsed < 3 + 1
    assert [e.status.name for e in errors] == ["UNAVAILABLE"] * 5
    assert all("shutting down" in e.details for e in errors)
    assert not (short_tmp / "sim").exists()
    assert "Traceback" not in err and "Warning" not in err


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"max_read_queue_size": "50"}, "max_read_queue_size"),
        ({"no_such_key": 1}, "no_such_key"),
        ({"reader_timeout": -1}, "reader_timeout"),
        ({"simulate_daq_cfg": {"simulation_mode": "tape"}}, "simulate_daq_cfg.simulation_mode"),
        ({"valid_data_products": ["img32"]}, "valid_data_products"),
    ],
)
@pytest.mark.timeout(30)  # a server process
def test_bad_config_exits_2_naming_the_key(tmp_path, settings, key):
    """R-CFG-1: unknown key, wrong type, out-of-range value: one message, exit code 2."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(settings))
    result = subprocess.run(
        [sys.executable, "-m", "panoseti_daq.serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"'{key}'" in lines[0] and str(path) in lines[0]


async def test_unix_socket_only_server_streams_and_survives_its_file_removed(
    base_config, short_tmp, run_dir
):
    """R-NET-1, R-NET-2: with no TCP port (-1) the server listens on its Unix socket only and
    streams there through our codec; an operator who removed the socket file meanwhile does not
    make the stop fail (the file is gone already)."""
    path = short_tmp / "only.sock"
    async with DaqDataServer(base_config, host="127.0.0.1", port=-1, uds=str(path)) as server:
        assert server.port is None and path.is_socket()
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server, ph=False) as stream:
            await upload(server, [movie_frame(1, 7)])
            reply = await next_reply(stream)
        assert reply.frame is not None and reply.frame.frame_number == 7
        path.unlink()
    assert not path.exists()
