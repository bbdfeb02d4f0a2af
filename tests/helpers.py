"""Helpers for tests: frames, raw grpclib calls, and waiting on conditions with a bound."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import numpy as np
from grpclib.client import Channel
from grpclib.const import Cardinality

from panoseti_daq import PanoFrame, pff, product_named
from panoseti_daq._bundled import NGC7331_PH256
from panoseti_daq._grpclib.bridge import grpclib_loop
from panoseti_daq._grpclib.codec import DaqCodec
from panoseti_daq.messages import (
    Empty,
    InitHpIoRequest,
    InitHpIoResponse,
    StreamImagesRequest,
)
from panoseti_daq.server.process import free_port, serve_command, started
from panoseti_daq.wire.codec import StreamReply, UploadItem

PH256 = product_named("ph256")
REAL_PH = [
    PanoFrame(PH256, h, p, 254, NGC7331_PH256.name, i)
    for i, (h, p) in enumerate(pff.iter_frames(NGC7331_PH256, PH256))
]


def movie_frame(module: int, number: int, name: str = "img16") -> PanoFrame:
    product = product_named(name)
    pixels = (np.arange(product.pixel_count) + number) % 200
    header = {f"quabo_{q}": {"pkt_num": number, "tv_sec": 1721882092} for q in range(4)}
    return PanoFrame.create(product, header, pixels, module, "m.pff", number)


def ph_frame(module: int, number: int) -> PanoFrame:
    frame = REAL_PH[number % len(REAL_PH)]
    return PanoFrame(frame.product, frame.header, frame.pixels, module, frame.file, number)


def channel(server, codec=None) -> Channel:
    """A grpclib channel to `server` by TCP (by its Unix socket when it has no TCP listener);
    create it on grpclib's loop (see `on_grpclib_loop`)."""
    if server.port is None:
        return Channel(path=server.uds_path, codec=codec or DaqCodec())
    return Channel("127.0.0.1", server.port, codec=codec or DaqCodec())


async def on_grpclib_loop(fn, *args):
    """Run the asyncio coroutine function `fn(*args)` on grpclib's loop, from a test on either
    backend: the running asyncio loop, or under trio a trio-asyncio loop
    (panoseti_daq._grpclib.bridge)."""
    async with grpclib_loop() as loop:
        return await loop.run(fn, *args)


async def call(
    server, method, requests, request_type, reply_type, codec=None, trailers=False, metadata=None
):
    """One unary-reply call of DaqData `method` sending `requests` (a list; several for
    UploadImages) on either backend, with request `metadata` if given; returns the reply. With
    `trailers`, also reads the trailing metadata (where a non-OK status that follows a reply
    message is raised)."""
    cardinality = Cardinality.STREAM_UNARY if method == "UploadImages" else Cardinality.UNARY_UNARY
    if method == "StreamImages":
        cardinality = Cardinality.UNARY_STREAM

    async def run():
        ch = channel(server, codec)
        try:
            async with ch.request(
                f"/daqdata.DaqData/{method}",
                cardinality,
                request_type,
                reply_type,
                metadata=metadata,
            ) as stream:
                for request in requests:
                    await stream.send_message(request)
                await stream.end()
                reply = await stream.recv_message()
                if trailers:
                    await stream.recv_trailing_metadata()
                return reply
        finally:
            ch.close()

    return await on_grpclib_loop(run)


async def init_hp_io(server, data_dir, force=True, interval=0.05, **extra) -> InitHpIoResponse:
    request = InitHpIoRequest(
        data_dir=str(data_dir), update_interval_seconds=interval, force=force, **extra
    )
    return await call(server, "InitHpIo", [request], InitHpIoRequest, InitHpIoResponse)


async def upload(server, frames, metadata=None) -> None:
    items = [UploadItem(frame) for frame in frames]
    await call(server, "UploadImages", items, UploadItem, Empty, metadata=metadata)


class RawStream:
    """A grpclib client stream usable from a test on either backend: each call runs on
    grpclib's loop."""

    def __init__(self, loop, stream) -> None:
        self._loop = loop
        self.grpclib_stream = stream

    async def recv_message(self):
        return await self._loop.run(self.grpclib_stream.recv_message)

    async def recv_initial_metadata(self):
        return await self._loop.run(self.grpclib_stream.recv_initial_metadata)

    async def recv_trailing_metadata(self):
        return await self._loop.run(self.grpclib_stream.recv_trailing_metadata)

    async def cancel(self):
        return await self._loop.run(self.grpclib_stream.cancel)


@contextlib.asynccontextmanager
async def raw_call(
    make_channel, method, cardinality, request_type, reply_type, request
) -> AsyncIterator[RawStream]:
    """A call of `method` (a DaqData method's name, or a whole path such as
    "/ubloxcontrol.UbloxControl/CaptureUblox") with `request` sent, on the grpclib channel
    `make_channel()` makes (on grpclib's loop), usable from a test on either backend. Leaving
    resets the stream, as a client that goes away does (grpclib would otherwise wait for the
    server to finish), and closes the channel."""
    async with grpclib_loop() as loop:

        async def start():
            ch = make_channel()
            path = method if method.startswith("/") else f"/daqdata.DaqData/{method}"
            stream = ch.request(path, cardinality, request_type, reply_type)
            await stream.__aenter__()
            await stream.send_message(request, end=True)
            return ch, stream

        async def stop(ch, stream):
            try:
                with contextlib.suppress(Exception):
                    await stream.cancel()
                with contextlib.suppress(Exception):
                    await stream.__aexit__(None, None, None)
            finally:
                ch.close()

        ch, stream = await loop.run(start)
        try:
            yield RawStream(loop, stream)
        finally:
            with anyio.CancelScope(shield=True):
                await loop.run(stop, ch, stream)


@contextlib.asynccontextmanager
async def open_stream(
    server,
    movie=True,
    ph=True,
    interval=0.0,
    module_ids=(),
    subscribed=True,
    make_channel=None,
) -> AsyncIterator[RawStream]:
    """A raw StreamImages call on either backend (yields a `RawStream`; the request is sent).

    With `subscribed` (the default), it first waits for the response headers, which the server
    sends once it has subscribed the stream to the hub: an event, no polling. Calls the server
    refuses before subscribing (R-STREAM-1 .. R-STREAM-5) need `subscribed=False`.
    `make_channel`, if given, makes the channel (on grpclib's loop) instead of `channel(server)`.
    """
    request = StreamImagesRequest(
        stream_movie_data=movie,
        stream_pulse_height_data=ph,
        update_interval_seconds=interval,
        module_ids=list(module_ids),
    )
    async with raw_call(
        make_channel or (lambda: channel(server)),
        "StreamImages",
        Cardinality.UNARY_STREAM,
        StreamImagesRequest,
        StreamReply,
        request,
    ) as raw:
        if subscribed:
            await raw.recv_initial_metadata()
        yield raw


def stats_lines(path) -> list[dict]:
    """The complete JSON lines of a server's stats file (serve --stats-file) so far: none before
    the file exists, and not a last line still being written."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


async def wait_until(condition, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll a cheap in-process condition until it holds; fail after `timeout_s`."""
    with anyio.fail_after(timeout_s):
        # Polls conditions the code under test gives no event for.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


@contextlib.contextmanager
def stalled_stream_client(port: int, request: StreamImagesRequest):
    """A real HTTP/2 client that sends StreamImages and then never reads its socket.

    The server may send only one HTTP/2 window (64 KiB) before it must wait: a client that is
    truly stalled, unlike a grpclib client, which acknowledges data as it arrives. Yields the
    socket and the h2 connection (to read what the server sent without acknowledging it).
    """
    import socket

    import h2.config
    import h2.connection

    sock = socket.create_connection(("127.0.0.1", port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/daqdata.DaqData/StreamImages"),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    body = bytes(request)
    conn.send_data(stream_id, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
    sock.sendall(conn.data_to_send())
    try:
        yield sock, conn
    finally:
        sock.close()


def serve_refused(
    cwd: Path, *args: str, config: dict | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    """`python -m panoseti_daq.serve ARGS` (with `config` as its --config) that is expected to
    refuse to start: it must exit by itself within `timeout`."""
    argv = serve_command(*args)
    if config is not None:
        (cwd / "c.json").write_text(json.dumps(config))
        argv += ["--config", str(cwd / "c.json")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def one_line_exit_2(result: subprocess.CompletedProcess, *words: str) -> str:
    """The one line `serve` printed, exiting with 2 before listening, containing `words`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert "listening" not in result.stderr and "Traceback" not in result.stderr
    return lines[0]


@contextlib.contextmanager
def server_process(tmp, *extra_args: str, config: dict | None = None, backend: str = "trio"):
    """`python -m panoseti_daq.serve` in a subprocess on a free loopback port.

    Yields (process, port, uds_path) once the port accepts connections; always stops it
    (SIGKILL: the tests that stop it gracefully signal it themselves first).
    """
    import signal

    port = free_port()
    uds = str(tmp / "srv.sock")
    settings = {
        "simulate_daq_cfg": {"data_dir": str(tmp / "sim"), "frame_rate_hz": 50},
        "allowed_data_roots": [str(tmp)],
        "daq_active_check": ["marker"],
        "shutdown_grace_period": 3,
        "server_name": "subprocess-node",
        **(config or {}),
    }
    config_path = tmp / "server_config.json"
    config_path.write_text(json.dumps(settings))
    command = serve_command(
        *("--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)),
        *("--uds", uds, "--backend", backend, *extra_args),
    )
    with started(
        command,
        port,
        stop_signal=signal.SIGKILL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        yield process, port, uds


async def next_reply(stream):
    """The next message of a server stream; the stream's status as GRPCError when it ends.

    Once headers have arrived, grpclib reports the final status with the trailers: recv_message
    returns None, and recv_trailing_metadata raises for a non-OK status.
    """
    reply = await stream.recv_message()
    if reply is None:
        await stream.recv_trailing_metadata()
        raise AssertionError("the stream ended with status OK")
    return reply


def fill_flow_control_window(sock, timeout_s: float = 10.0) -> int:
    """Read a stalled client's socket (see `stalled_stream_client`) until the server has sent a
    whole HTTP/2 flow-control window (65,535 bytes of DATA) without acknowledging any of it.

    From then on the server's handler cannot send: its stream does not end by itself. Returns
    the number of DATA bytes read.
    """
    import time

    window = 65_535
    deadline = time.monotonic() + timeout_s
    buffer = b""
    data = 0
    while data < window:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65_536)  # raises TimeoutError when the server stops sending early
        if not chunk:
            raise ConnectionError(f"server closed the connection after {data} DATA bytes")
        buffer += chunk
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            if buffer[3] == 0:  # a DATA frame (grpclib pads none)
                data += length
            buffer = buffer[9 + length :]
    return data


def h2_unary_call(
    target,
    path: str,
    request: bytes | None,
    grpc_timeout: str | None = None,
    raw_data: bytes | None = None,
) -> tuple[int, str]:
    """One gRPC call by a bare HTTP/2 client: (grpc-status, grpc-message) of the reply.

    `target` is a TCP port on 127.0.0.1 or a Unix socket path. Unlike grpclib or grpcio, this
    client does not enforce the deadline it sends (`grpc_timeout`, e.g. "300m"): it waits for
    the server's own answer, so a test can read the status a server gives when the deadline
    runs out while it waits, without racing the client's timer. `request` None sends no
    message at all; `raw_data` is sent as the request's DATA instead of `request` framed as
    one message (to send malformed framing). Blocking: run it in a thread.
    """
    import socket
    import urllib.parse

    import h2.config
    import h2.connection
    import h2.events

    if isinstance(target, int):
        sock = socket.create_connection(("127.0.0.1", target), timeout=30)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(30)
        sock.connect(str(target))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    if grpc_timeout is not None:
        headers.append(("grpc-timeout", grpc_timeout))
    if request is None:  # a call without a request message
        conn.send_headers(stream_id, headers, end_stream=True)
    else:
        conn.send_headers(stream_id, headers)
        message = b"\x00" + len(request).to_bytes(4, "big") + request
        conn.send_data(stream_id, message if raw_data is None else raw_data, end_stream=True)
    status: dict[str, str] = {}
    try:
        sock.sendall(conn.data_to_send())
        while True:
            chunk = sock.recv(65_536)
            if not chunk:
                raise ConnectionError("the server closed the connection before the status")
            for event in conn.receive_data(chunk):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    for key, value in event.headers:
                        key = key.decode() if isinstance(key, bytes) else key
                        value = value.decode() if isinstance(value, bytes) else value
                        status[key] = value
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    raise ConnectionError(f"stream reset: {event.error_code!r}")
                if isinstance(event, h2.events.StreamEnded):
                    message = urllib.parse.unquote(status.get("grpc-message", ""))
                    return int(status["grpc-status"]), message
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()


def ipv6_loopback() -> bool:
    """Whether this host can bind ::1 (some containers have no IPv6)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
