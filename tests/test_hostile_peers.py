"""Nothing one peer sends hurts another (spec section 15): each attack of issue 21, by a grpcio
client or raw sockets (input we did not write), beside a grpcio viewer with default settings
that must keep getting frames.

The server runs as `python -m panoseti_daq.serve --init-sim` (trio backend) in a subprocess,
with short connection timeouts and `max_message_bytes` above a default grpcio client's 4 MiB,
so that R-PEER-1 and R-PEER-2 are seen apart.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import numpy as np
import pytest
from google.protobuf import empty_pb2, struct_pb2

from tests.helpers import server_process, wait_until
from tests.reference import modules

pytestmark = pytest.mark.timeout(60)

pb2, pb2_grpc = modules()

MIB = 1024 * 1024
LIMITS = {
    "max_message_bytes": 8 * MIB,
    "handshake_timeout_seconds": 0.5,
    "idle_connection_timeout_seconds": 1.0,
    "max_connections": 40,
    "max_concurrent_rpcs": 10,
    "max_streams_per_peer": 4,
}


class Viewer:
    """A grpcio StreamImages client with default settings (4 MiB receive limit), reading in a
    thread: counts frames and keeps the error that ended its stream, if any."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        request = pb2.StreamImagesRequest(
            stream_movie_data=True, stream_pulse_height_data=True, update_interval_seconds=0.0
        )
        self.call = pb2_grpc.DaqDataStub(self.channel).StreamImages(request, timeout=120)
        self.frames = 0
        self.arrivals: list[float] = []
        self.error: grpc.RpcError | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for _ in self.call:
                with self._changed:
                    self.frames += 1
                    self.arrivals.append(time.monotonic())
                    self._changed.notify_all()
        except grpc.RpcError as exc:
            with self._changed:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    self.error = exc
                self._changed.notify_all()

    def wait_ended(self, timeout_s: float) -> grpc.RpcError | None:
        self._thread.join(timeout_s)
        return self.error

    def more_frames(self, count: int = 5, timeout_s: float = 10.0) -> None:
        """Assert the stream is alive: `count` more frames arrive within `timeout_s`."""
        with self._changed:
            target = self.frames + count
            self._changed.wait_for(
                lambda: self.frames >= target or self.error is not None, timeout_s
            )
            assert self.error is None, f"the viewer's stream ended: {self.error}"
            assert self.frames >= target, f"the viewer got {self.frames} of {target} frames"

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(10)
        self.channel.close()


def _rss_kib(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def hostile():
    """(process, target, tmp) of a simulating server with the LIMITS above."""
    with (
        tempfile.TemporaryDirectory(prefix="pdaqhp", dir="/tmp") as name,
        server_process(Path(name), "--init-sim", config=LIMITS) as (process, port, _uds),
    ):
        tmp = Path(name)
        target = f"127.0.0.1:{port}"
        _wait_streaming(target)
        yield process, target, tmp


def _wait_streaming(target: str, timeout_s: float = 20.0) -> None:
    """Until the server streams (`--init-sim` configures hp_io after the port listens)."""
    request = pb2.StreamImagesRequest(stream_movie_data=True, update_interval_seconds=0.0)
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = pb2_grpc.DaqDataStub(channel)
        while True:
            call = stub.StreamImages(request, timeout=10)
            try:
                next(call)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # no event tells a client when hp_io becomes valid
            finally:
                call.cancel()


@pytest.fixture
def viewer(hostile):
    _, target, _ = hostile
    watching = Viewer(target)
    try:
        watching.more_frames(3, timeout_s=20)  # the simulation is running
        yield watching
    finally:
        watching.close()


def _image(header: dict, pixels=None, module_id: int = 7) -> pb2.PanoImage:
    struct = struct_pb2.Struct()
    struct.update(header)
    values = np.arange(256) if pixels is None else pixels
    return pb2.PanoImage(
        type=pb2.PanoImage.PULSE_HEIGHT,
        header=struct,
        image_array=[int(v) for v in values],
        shape=[16, 16],
        bytes_per_pixel=2,
        module_id=module_id,
    )


def _upload(target: str, images: list[pb2.PanoImage]) -> None:
    with grpc.insecure_channel(target) as channel:
        requests = iter([pb2.UploadImageRequest(pano_image=image) for image in images])
        pb2_grpc.DaqDataStub(channel).UploadImages(requests, timeout=30)


# --- R-PEER-1, R-PEER-2, R-PEER-5: message sizes ---------------------------------------------


def test_a_50_mb_header_is_refused_before_it_is_held(hostile, viewer):
    """R-PEER-1, R-PEER-5: an upload whose header holds one 50 MB string ends with
    RESOURCE_EXHAUSTED naming its size and the limit, the server's peak memory does not grow by
    the message, and the default grpcio viewer beside it keeps streaming."""
    process, target, _ = hostile
    peak_before = _rss_kib(process.pid)
    with pytest.raises(grpc.RpcError) as info:
        _upload(target, [_image({"comment": "x" * 50_000_000})])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than the limit of 8388608 bytes (max_message_bytes)" in info.value.details()
    assert "received message of 5000" in info.value.details()
    viewer.more_frames()
    assert _rss_kib(process.pid) - peak_before < 30 * 1024, "the server held the message"


def test_an_oversized_image_array_is_refused(hostile, viewer):
    """R-PEER-1: a 12 MB image_array, the same; the server answers the next upload."""
    _, target, _ = hostile
    with pytest.raises(grpc.RpcError) as info:
        _upload(target, [_image({}, pixels=np.zeros(12_000_000, dtype=np.uint32))])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_message_bytes" in info.value.details()
    _upload(target, [_image({"quabo_num": 1})])
    viewer.more_frames()


def test_an_oversized_unary_request_is_refused(hostile, viewer):
    """R-PEER-1 for a unary request: a 9 MB StreamImages request (an unknown field) ends that
    call with RESOURCE_EXHAUSTED naming the size and the limit."""
    _, target, _ = hostile
    request = pb2.StreamImagesRequest(stream_movie_data=True).SerializeToString()
    request += b"\x7a" + _varint(9 * MIB) + b"\0" * (9 * MIB)  # field 15, length-delimited
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_stream("/daqdata.DaqData/StreamImages")(request, timeout=20)
        with pytest.raises(grpc.RpcError) as info:
            next(call)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"received message of {len(request)} bytes" in info.value.details()
    viewer.more_frames()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_an_image_too_big_to_relay_is_refused_at_upload(hostile, viewer):
    """R-PEER-2: an image under max_message_bytes whose StreamImages reply would not fit a
    default grpcio client's 4 MiB is INVALID_ARGUMENT naming the image and the size; the viewer
    (which would have been ended with RESOURCE_EXHAUSTED) keeps streaming."""
    _, target, _ = hostile
    small = _image({"quabo_num": 1})
    big = _image({"comment": "y" * (5 * MIB)})
    with pytest.raises(grpc.RpcError) as info:
        _upload(target, [small, big])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert "image 1 of the upload is invalid: it would make a StreamImages reply of 52" in details
    assert "more than the 4194304 bytes" in details
    viewer.more_frames(10)


# --- R-PEER-3: connections ---------------------------------------------------------------------


def _closed_within(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the server closes `sock` within `timeout_s` (EOF or reset), reading what it
    sends meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def _how_closed(sock: socket.socket, timeout_s: float) -> str:
    """ "eof" or "reset" once the server closes `sock`, "open" if it has not within
    `timeout_s`."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "open"
    return "eof"


def test_connections_that_never_finish_the_preface_are_closed(hostile, viewer):
    """R-PEER-3: 20 connections that send nothing, or half the HTTP/2 preface, are closed after
    handshake_timeout_seconds (0.5 s here); their descriptors are given back."""
    process, target, _ = hostile
    host, port = target.rsplit(":", 1)
    fds_before = _open_fds(process.pid)
    sockets = [socket.create_connection((host, int(port))) for _ in range(20)]
    try:
        for sock in sockets[::2]:
            sock.sendall(b"PRI * HTTP/2.0\r\n")
        started = time.monotonic()
        assert all(_closed_within(sock, 5.0) for sock in sockets)
        assert time.monotonic() - started < 3.0
        viewer.more_frames()
    finally:
        for sock in sockets:
            sock.close()
    deadline = time.monotonic() + 5
    while _open_fds(process.pid) > fds_before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_fds(process.pid) <= fds_before + 2


def test_a_connection_with_no_stream_gets_goaway_after_the_idle_timeout(hostile, viewer):
    """R-PEER-3: a connection that finished the handshake but has had no open stream for
    idle_connection_timeout_seconds (1 s here) gets a GOAWAY and is closed."""
    _, target, _ = hostile
    host, port = target.rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(conn.data_to_send())
        started = time.monotonic()
        goaway_at = None
        sock.settimeout(10)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    goaway_at = time.monotonic() - started
            sock.sendall(conn.data_to_send())
    assert goaway_at is not None, "closed without a GOAWAY"
    assert 0.9 <= goaway_at < 4.0
    viewer.more_frames()


def test_connections_beyond_max_connections_are_refused_at_accept(hostile, viewer):
    """R-PEER-3: with max_connections (40) open, further connections are closed at once; the
    viewer's connection, open before, keeps streaming; once the hoard is gone (the handshake
    timeout) new connections are served again."""
    _, target, _ = hostile
    host, port = target.rsplit(":", 1)
    hoard = [socket.create_connection((host, int(port))) for _ in range(45)]
    try:
        # A refused connection is aborted (a reset); a kept one is closed after the handshake
        # timeout (an end of file).
        ends = [_how_closed(sock, 5.0) for sock in hoard]
        refused = [i for i, end in enumerate(ends) if end == "reset"]
        assert ends.count("eof") + ends.count("reset") == 45, ends
        # Open at once: the viewer's connection and the hoard's kept ones, at most 40.
        assert ends.count("eof") <= 40 - 1, ends
        assert refused and refused == list(range(refused[0], 45)), refused
        viewer.more_frames()
    finally:
        for sock in hoard:
            sock.close()
    with grpc.insecure_channel(target) as channel:
        stub = pb2_grpc.DaqDataStub(channel)
        assert stub.Ping(empty_pb2.Empty(), timeout=10, wait_for_ready=True) == empty_pb2.Empty()


# --- R-PEER-4: streams per peer ----------------------------------------------------------------


def test_one_peer_cannot_take_every_stream(hostile, viewer):
    """R-PEER-4: one address holds at most max_streams_per_peer (4) StreamImages streams; the
    next is RESOURCE_EXHAUSTED naming the limit, and the viewer (one of the four) goes on."""
    _, target, _ = hostile
    with grpc.insecure_channel(target) as channel:
        stub = pb2_grpc.DaqDataStub(channel)
        request = pb2.StreamImagesRequest(stream_movie_data=True, update_interval_seconds=0.0)
        calls = [stub.StreamImages(request, timeout=30) for _ in range(3)]
        try:
            for call in calls:
                next(call)  # subscribed: it has a frame
            extra = stub.StreamImages(request, timeout=30)
            with pytest.raises(grpc.RpcError) as info:
                next(extra)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "the limit per peer is 4 (max_streams_per_peer)" in info.value.details()
            viewer.more_frames()
        finally:
            for call in calls:
                call.cancel()


# --- R-INIT-10, R-INIT-11: InitHpIo's checks -----------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "shown"),
    [(float("inf"), "inf"), (1e9, "1000000000.0"), (61.0, "61.0")],
)
def test_an_interval_that_is_not_finite_or_too_long_is_invalid(hostile, viewer, interval, shown):
    """R-INIT-10: an update interval that is infinite or above
    max_client_update_interval_seconds is INVALID_ARGUMENT naming the value and the range; the
    running configuration (and the viewer) is untouched."""
    _, target, tmp = hostile
    with grpc.insecure_channel(target) as channel:
        request = pb2.InitHpIoRequest(
            data_dir=str(tmp), update_interval_seconds=interval, simulate_daq=True
        )
        with pytest.raises(grpc.RpcError) as info:
            pb2_grpc.DaqDataStub(channel).InitHpIo(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"between 0.01 and 60 (max_client_update_interval_seconds), not {shown}" in (
        info.value.details()
    )
    viewer.more_frames()


def _data_dir_cases(tmp: Path) -> list[tuple[str, grpc.StatusCode, str]]:
    (tmp / "a_file").write_text("not a directory")
    loop = tmp / "loop"
    with contextlib.suppress(FileExistsError):
        loop.symlink_to(loop)
    long_path = "/tmp/" + "x" * 300
    return [
        (long_path, grpc.StatusCode.INVALID_ARGUMENT, "cannot be used: File name too long"),
        (str(tmp / "a_file"), grpc.StatusCode.INVALID_ARGUMENT, "is not a directory"),
        (str(tmp / "a_file" / "below"), grpc.StatusCode.INVALID_ARGUMENT, "is not a directory"),
        (str(loop), grpc.StatusCode.INVALID_ARGUMENT, "Too many levels of symbolic links"),
        (str(tmp / "bad\0name"), grpc.StatusCode.INVALID_ARGUMENT, "embedded null byte"),
    ]


def test_data_dir_os_errors_name_the_path_and_the_reason(hostile, viewer):
    """R-INIT-11: every OS error checking a data_dir (name too long, not a directory, a loop of
    links, a NUL byte) is INVALID_ARGUMENT naming the path and the reason, never UNKNOWN."""
    _, target, tmp = hostile
    with grpc.insecure_channel(target) as channel:
        stub = pb2_grpc.DaqDataStub(channel)
        for data_dir, code, reason in _data_dir_cases(tmp):
            request = pb2.InitHpIoRequest(data_dir=data_dir, update_interval_seconds=0.1)
            with pytest.raises(grpc.RpcError) as info:
                stub.InitHpIo(request, timeout=10)
            assert info.value.code() == code, (data_dir, info.value.details())
            assert reason in info.value.details()
            assert repr(data_dir)[1:20] in info.value.details()
    viewer.more_frames()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory")
def test_an_unreadable_data_dir_is_permission_denied(hostile):
    """R-INIT-11: a data_dir this server may not read is PERMISSION_DENIED naming it."""
    _, target, tmp = hostile
    closed = tmp / "closed"
    closed.mkdir(exist_ok=True)
    closed.chmod(0)
    with grpc.insecure_channel(target) as channel:
        request = pb2.InitHpIoRequest(data_dir=str(closed), update_interval_seconds=0.1)
        with pytest.raises(grpc.RpcError) as info:
            pb2_grpc.DaqDataStub(channel).InitHpIo(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert str(closed) in info.value.details()


@pytest.mark.anyio
async def test_connection_counters_and_log_lines(make_server, caplog):
    """R-PEER-3: what an operator sees: the stats' connection counters and one log line per
    kind (refused at accept, closed before the handshake)."""
    import anyio

    async with make_server(max_connections=2, handshake_timeout_seconds=0.2) as server:
        host, port = "127.0.0.1", server.port

        def hoard() -> list[str]:
            socks = [socket.create_connection((host, port)) for _ in range(4)]
            try:
                return [_how_closed(sock, 5.0) for sock in socks]
            finally:
                for sock in socks:
                    sock.close()

        ends = await anyio.to_thread.run_sync(hoard)
        assert sorted(ends) == ["eof", "eof", "reset", "reset"]
        with anyio.fail_after(5):
            while server.stats()["connections"]["open"]:  # noqa: ASYNC110 - no event for it
                await anyio.sleep(0.01)
        counters = server.stats()["connections"]
    assert counters == {
        "open": 0,
        "refused": 2,
        "handshake_timeouts": 2,
        "idle_closed": 0,
        "messages_too_large": 0,
    }
    lines = [r.getMessage() for r in caplog.records if r.name == "panoseti_daq._grpclib.private"]
    assert "refused 1 connection(s): max_connections (2) are open" in lines
    assert any(
        "no HTTP/2 preface and SETTINGS within handshake_timeout_seconds" in line for line in lines
    )
    assert len(lines) == 2  # the second of each kind waits for the next minute's line


@pytest.mark.anyio
async def test_large_message_bodies_are_read_a_few_at_a_time(make_server):
    """R-PEER-5: bodies larger than the HTTP/2 window are read at most max_concurrent_rpcs (1
    here) at a time: while a peer trickles one, another's upload waits (flow control holds
    its bytes with the sender), and goes through once the first peer has gone."""
    import anyio

    async with make_server(
        max_concurrent_rpcs=1, http2_window_bytes=65_535, max_message_bytes=1024 * 1024
    ) as server:
        port = server.port
        trickler = socket.create_connection(("127.0.0.1", port))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/daqdata.DaqData/UploadImages"),
                (":authority", f"127.0.0.1:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        # A message of 600 kB announced; 60 kB of it sent, the rest never.
        body = b"\x00" + (600_000).to_bytes(4, "big") + b"\x0a" * 60_000
        for at in range(0, len(body), 16_384):  # HTTP/2's smallest maximum frame size
            conn.send_data(stream_id, body[at : at + 16_384])
        trickler.sendall(conn.data_to_send())
        await wait_until(lambda: server.stats()["connections"]["open"] == 1)
        await anyio.sleep(0.3)  # its handler has the reading slot (no event tells it)

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            upload = pb2_grpc.DaqDataStub(channel).UploadImages
            request = pb2.UploadImageRequest(pano_image=_image({"pad": "z" * 500_000}))
            future = upload.future(iter([request]), timeout=30)
            await anyio.sleep(1.0)
            assert not future.done(), "a second large body was read at the same time"
            trickler.close()  # the first peer goes: its slot is free
            await anyio.to_thread.run_sync(future.result, 20)


def test_a_call_whose_request_never_comes_is_ended(hostile, viewer):
    """R-PEER-3: a call opened with its headers but no request message (a slowloris holding
    the connection's stream open, which no idle timeout would close) ends after
    handshake_timeout_seconds (0.5 s here) with DEADLINE_EXCEEDED naming why."""
    _, target, _ = hostile
    host, port = target.rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/daqdata.DaqData/StreamImages"),
            (":authority", target),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    status: dict[str, str] = {}
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(conn.data_to_send())
        started = time.monotonic()
        sock.settimeout(10)
        while "grpc-status" not in status:
            data = sock.recv(65536)
            assert data, "closed without a status"
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    status.update((k.decode(), v.decode()) for k, v in event.headers)
            sock.sendall(conn.data_to_send())
    assert status["grpc-status"] == "4", status  # DEADLINE_EXCEEDED
    assert "no request message within 0.5 s" in urllib.parse.unquote(status["grpc-message"])
    assert 0.4 <= time.monotonic() - started < 4.0
    viewer.more_frames()
