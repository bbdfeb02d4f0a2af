"""The details a client sees of the stream, upload and listener rules, each pinned exactly
(written to kill mutants `make mutate` found surviving: see README, Testing). Both backends."""

from __future__ import annotations

import logging

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from panoseti_daq.messages import UploadImageRequest
from tests.helpers import (
    init_hp_io,
    ipv6_loopback,
    movie_frame,
    next_reply,
    open_stream,
    upload,
)

pytestmark = pytest.mark.anyio


async def test_frames_carry_no_message_and_are_counted(make_server, run_dir):
    """R-WIRE-4, R-STREAM-10: an ordinary frame's `message` is empty; `frames_sent` (the
    stats) counts every frame sent."""
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server, ph=False) as stream:
            await upload(server, [movie_frame(1, i) for i in range(5)])
            replies = [await next_reply(stream) for _ in range(5)]
            await upload(server, [movie_frame(1, 5)])
            replies.append(await next_reply(stream))
            assert server.hub.frames_sent == 6
        assert [r.message for r in replies] == [""] * 6
        assert [r.frame.frame_number for r in replies] == list(range(6))


async def test_idle_stream_waits_every_timeout(make_server, run_dir):
    """R-STREAM-12: the stream ends only after max_reader_dequeue_timeouts whole timeouts."""
    async with make_server(reader_timeout=0.2, max_reader_dequeue_timeouts=3) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server) as stream:
            started = anyio.current_time()
            with pytest.raises(GRPCError) as info, anyio.fail_after(5):
                await next_reply(stream)
            elapsed = anyio.current_time() - started
    assert info.value.status == Status.DEADLINE_EXCEEDED
    assert info.value.message == "no data for 0.6 s: stream ended"
    assert elapsed >= 0.55


async def test_upload_without_image_logs_its_index(make_server, caplog):
    """R-UP-2: the skipped request is named in a warning."""
    from grpclib.encoding.proto import ProtoCodec

    from panoseti_daq.messages import Empty
    from tests.helpers import call

    async with make_server() as server:
        good = UploadImageRequest(pano_image=movie_frame(1, 1).to_message())
        with caplog.at_level(logging.WARNING, "panoseti_daq.server.service"):
            requests = [good, UploadImageRequest(), good]
            await call(server, "UploadImages", requests, UploadImageRequest, Empty, ProtoCodec())
    assert "UploadImages: request 1 has no pano_image; skipped" in caplog.messages


async def test_product_not_served_names_the_valid_ones(make_server):
    """R-DP-1, R-UP-3: the error names the image, its product and the products served."""
    async with make_server(valid_data_products=("ph256", "img8")) as server:
        with pytest.raises(GRPCError) as info:
            await upload(server, [movie_frame(1, 0)])
    assert info.value.status == Status.INVALID_ARGUMENT
    assert info.value.message == (
        "image 0 of the upload is img16, which this server does not serve (valid: img8, ph256)"
    )


async def test_refusals_name_the_reason(make_server, run_dir):
    """R-STREAM-1, R-STREAM-2, R-STREAM-3 (in-process; through SIGTERM: test_shutdown.py):
    the exact status and details of each refusal."""

    async def refusal(server, **stream_args):
        async with open_stream(server, subscribed=False, **stream_args) as stream:
            with pytest.raises(GRPCError) as info:
                await next_reply(stream)
        return info.value.status, info.value.message

    async with make_server() as server:
        assert await refusal(server, movie=False, ph=False) == (
            Status.INVALID_ARGUMENT,
            "stream_movie_data and stream_pulse_height_data are both false: nothing to stream",
        )
        assert await refusal(server) == (
            Status.FAILED_PRECONDITION,
            "hp_io is not initialized: call InitHpIo first",
        )
        assert (await init_hp_io(server, run_dir)).success
        server.core.begin_shutdown()
        assert await refusal(server) == (Status.UNAVAILABLE, "server shutting down")


async def test_pulse_height_only_and_forced_reconfiguration(make_server, run_dir):
    """R-STREAM-7: a pulse-height-only stream gets pulse heights and no movie frames;
    R-STREAM-13: a forced InitHpIo ends it with CANCELLED and says why."""
    from tests.helpers import ph_frame

    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server, movie=False) as stream:
            await upload(server, [movie_frame(1, 0), ph_frame(1, 1), movie_frame(1, 2)])
            await upload(server, [ph_frame(1, 3)])
            got = [(await next_reply(stream)).frame for _ in range(2)]
            assert [(f.product.name, f.frame_number) for f in got] == [("ph256", 1), ("ph256", 3)]
            assert (await init_hp_io(server, run_dir, force=True)).success
            with pytest.raises(GRPCError) as info:
                await next_reply(stream)
    assert (info.value.status, info.value.message) == (
        Status.CANCELLED,
        "server reconfigured by InitHpIo (force=true)",
    )


async def test_empty_data_dir_does_not_exist(make_server, monkeypatch, short_tmp):
    """R-INIT-2: an empty data_dir (not simulating) is INVALID_ARGUMENT, even when the working
    directory, which "" would name, is an allowed root."""
    monkeypatch.chdir(short_tmp)
    async with make_server() as server:
        with pytest.raises(GRPCError) as info:
            await init_hp_io(server, "")
    assert (info.value.status, info.value.message) == (
        Status.INVALID_ARGUMENT,
        "data_dir '' does not exist",
    )


async def test_shutdown_ends_active_streams_with_unavailable(make_server, run_dir):
    """R-STREAM-3, R-STOP-1 (in-process; through SIGTERM: test_shutdown.py): beginning the
    shutdown ends an active stream with exactly UNAVAILABLE "server shutting down"."""
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server) as stream:
            server.core.begin_shutdown()
            with pytest.raises(GRPCError) as info:
                await next_reply(stream)
    assert (info.value.status, info.value.message) == (Status.UNAVAILABLE, "server shutting down")


async def test_deadline_guard_sleeps_while_frames_flow(make_server, run_dir, monkeypatch):
    """R-STREAM-11, R-STREAM-12: a stream's deadline guard (`service._enforce_deadlines`)
    wakes when the stream ends or its deadline comes, not for the frames that ring the
    handler's bell: with a 30 s reader timeout it never applies the deadlines
    (`Subscriber.expire`) while three frames go by."""
    import sys

    from panoseti_daq.server.hub import Subscriber

    expire = Subscriber.expire
    guard_calls = 0

    def counted(self, now):
        nonlocal guard_calls
        if "enforce_deadlines" in sys._getframe(1).f_code.co_name:
            guard_calls += 1
        return expire(self, now)

    monkeypatch.setattr(Subscriber, "expire", counted)
    async with make_server(reader_timeout=30.0) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server, ph=False) as stream:
            for number in range(3):
                await upload(server, [movie_frame(1, number)])
                assert (await next_reply(stream)).frame.frame_number == number
            assert guard_calls == 0


async def _accepts(host: str, port: int) -> bool:
    try:
        stream = await anyio.connect_tcp(host, port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def test_listens_on_the_host_and_port_asked_for(base_config):
    """R-NET-1: the TCP listener binds the `host` and `port` it is given, not every interface
    or a port of its own: another loopback address (127.0.0.2) is refused."""
    from panoseti_daq.server import DaqDataServer
    from panoseti_daq.server.process import free_port

    port = free_port()
    async with DaqDataServer(base_config, host="127.0.0.1", port=port, uds="") as server:
        assert server.port == port
        assert await _accepts("127.0.0.1", port)
        assert not await _accepts("127.0.0.2", port)


async def test_stop_holds_a_stream_that_never_ends_for_the_grace_period(make_server, run_dir):
    """R-STOP-1, R-NET-4, R-STREAM-3, R-NET-2 (in-process; through SIGTERM to a server process:
    test_shutdown.py): leaving the server begins the shutdown; during it the health service
    answers NOT_SERVING and a new stream UNAVAILABLE; a stream that never ends (its client
    stopped reading) holds the stop for `shutdown_grace_period` and not much longer; the Unix
    socket file is removed. Both answers come over new connections, so from the listeners the
    stalled stream holds open: after the grace period they are closed and would refuse them."""
    from grpclib.health.v1.health_grpc import HealthStub
    from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

    from panoseti_daq._grpclib.bridge import grpclib_loop
    from panoseti_daq.messages import StreamImagesRequest
    from tests.helpers import channel, fill_flow_control_window, stalled_stream_client, wait_until

    grace = 1.0
    leave, stopped = anyio.Event(), anyio.Event()

    async def serve(*, task_status):
        async with make_server(shutdown_grace_period=grace) as server:
            task_status.started(server)
            await leave.wait()
        stopped.set()

    async def health(server):
        ch = channel(server)
        try:
            return (await HealthStub(ch).Check(HealthCheckRequest(service=""))).status
        finally:
            ch.close()

    request = StreamImagesRequest(stream_movie_data=True, stream_pulse_height_data=True)
    with anyio.fail_after(8):
        async with anyio.create_task_group() as tg:
            server = await tg.start(serve)
            uds = anyio.Path(server.uds_path)
            assert (await init_hp_io(server, run_dir)).success
            with stalled_stream_client(server.port, request) as (stalled, _):
                await wait_until(lambda: server.core.active_streams == 1)
                await upload(server, [movie_frame(1, i) for i in range(60)])
                await anyio.to_thread.run_sync(fill_flow_control_window, stalled)
                started = anyio.current_time()
                leave.set()
                await wait_until(lambda: server.core.shutting_down)
                async with grpclib_loop() as loop:
                    assert await loop.run(health, server) == HealthCheckResponse.NOT_SERVING
                async with open_stream(server, subscribed=False) as late:
                    with pytest.raises(GRPCError) as info:
                        await next_reply(late)
                await stopped.wait()  # the stalled client still holds its stream
                elapsed = anyio.current_time() - started
    assert (info.value.status, info.value.message) == (Status.UNAVAILABLE, "server shutting down")
    assert grace <= elapsed < 2 * grace + 1.0, elapsed
    assert not await uds.exists()


async def test_idle_deadline_counts_from_the_last_frame(make_server, run_dir):
    """R-STREAM-12: a frame resets the idle count, and the stream ends one whole idle period
    after that frame: not one period after the subscription (half a period after the frame),
    nor at the deadline guard's next regular look (every `reader_timeout`, counted from the
    subscription: one and a half periods after the frame). The period is 2 s, so the bounds
    between these are half a second from each, for a loaded host."""
    period_s = 2.0
    async with make_server(reader_timeout=period_s, max_reader_dequeue_timeouts=1) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server, ph=False) as stream:
            # Half a period in: the deadline now falls between two of the guard's looks.
            await anyio.sleep(period_s / 2)
            await upload(server, [movie_frame(1, 0)])
            assert (await next_reply(stream)).frame.frame_number == 0
            received = anyio.current_time()
            with pytest.raises(GRPCError) as info, anyio.fail_after(3 * period_s):
                await next_reply(stream)
            elapsed = anyio.current_time() - received
    assert info.value.status == Status.DEADLINE_EXCEEDED
    assert 0.75 * period_s <= elapsed < 1.25 * period_s, elapsed


async def test_stream_clients_are_named_by_their_address(base_config, short_tmp, run_dir):
    """Stats (`clients[].peer`, also in the metrics): a StreamImages client is named
    "ip:port", an IPv6 address in brackets, or "unix:" and the server's socket path."""
    import re

    from grpclib.client import Channel

    from panoseti_daq._grpclib.codec import DaqCodec
    from panoseti_daq.config import HpIoConfig
    from panoseti_daq.server import DaqDataServer

    def tcp(address, port):
        return lambda: Channel(address, port, codec=DaqCodec())

    uds = str(short_tmp / "peer.sock")
    async with DaqDataServer(base_config, host="127.0.0.1", port=0, uds=uds) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(None, make_channel=tcp("127.0.0.1", server.port)):
            (client,) = server.hub.subscriber_stats()
            assert re.fullmatch(r"127\.0\.0\.1:\d+", client.peer), client.peer
        async with open_stream(None, make_channel=lambda: Channel(path=uds, codec=DaqCodec())):
            (client,) = server.hub.subscriber_stats()
            assert client.peer == f"unix:{uds}"
    if not ipv6_loopback():
        return
    async with DaqDataServer(base_config, host="::1", port=0, uds="") as server:
        await server.init_hp_io(HpIoConfig(data_dir=str(run_dir)))
        async with open_stream(None, make_channel=tcp("::1", server.port)):
            (client,) = server.hub.subscriber_stats()
            assert re.fullmatch(r"\[::1\]:\d+", client.peer), client.peer


async def test_unary_call_without_a_request_message(make_server):
    """R-WIRE-5: a StreamImages, InitHpIo or Ping call whose client sends no request message
    gets INVALID_ARGUMENT "no request message"."""
    from tests.helpers import h2_unary_call

    async with make_server() as server:
        for method in ("StreamImages", "InitHpIo", "Ping"):
            status = await anyio.to_thread.run_sync(
                h2_unary_call, server.port, f"/daqdata.DaqData/{method}", None
            )
            assert status == (Status.INVALID_ARGUMENT.value, "no request message"), method
