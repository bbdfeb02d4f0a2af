"""panoseti_daq._grpclib.private: the one home of other libraries' private names (issue 16
item 1)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
from grpclib.events import _DispatchServerEvents
from grpclib.server import Stream
from grpclib.testing import ChannelFor

from panoseti_daq._grpclib import private as _private
from panoseti_daq.errors import CodecError


class RawCodec(CodecBase):
    """Messages are their bytes."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return bytes(data)


def framed(*messages: bytes) -> bytes:
    return b"".join(struct.pack(">BI", 0, len(m)) + m for m in messages)


class BatchService:
    """A server-streaming method that sends one batch, then one message, then ends."""

    def __init__(self, batch: list[bytes]) -> None:
        self.batch = batch

    async def batch_then_one(self, stream: Stream) -> None:
        await stream.recv_message()
        await _private.send_framed_messages(stream, framed(*self.batch), len(self.batch))
        await stream.send_message(b"after")

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/test.Batch/Send": Handler(self.batch_then_one, Cardinality.UNARY_STREAM, bytes, bytes)
        }


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_framed_batch_arrives_as_separate_messages_in_order():
    """R-STREAM-3: a batch sent in one write reaches a grpclib client (real h2, in memory) as
    its messages, in order, and the stream goes on normally after it; the initial metadata is
    sent first when the batch is the first thing sent."""
    batch = [b"one", b"", b"three" * 1000, bytes(range(256)) * 100]
    async with ChannelFor([BatchService(batch)], codec=RawCodec()) as channel:
        async with channel.request(
            "/test.Batch/Send", Cardinality.UNARY_STREAM, bytes, bytes
        ) as stream:
            await stream.send_message(b"go", end=True)
            got = [message async for message in stream]
    assert got == [*batch, b"after"]


class ConnectionStub:
    messages_sent = 0
    last_message_sent: float | None = None

    def get_peer(self) -> None:
        return None


class ProtocolStreamStub:
    """grpclib's protocol stream, recording what the server Stream writes (as grpclib's own
    tests do with their H2StreamStub)."""

    def __init__(self) -> None:
        self.connection = ConnectionStub()
        self.writes: list[tuple[str, Any]] = []

    async def send_headers(self, headers: Any, end_stream: bool = False) -> None:
        self.writes.append(("headers", dict(headers)))

    async def send_data(self, data: bytes, end_stream: bool = False) -> None:
        self.writes.append(("data", data))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_batch_is_one_write_and_counted_like_send_message():
    """R-STREAM-3: one data write for the whole batch, after the initial metadata; the stream's
    and the connection's message counters advance as grpclib's send_message advances them."""
    stub = ProtocolStreamStub()
    stream = Stream(
        stub,  # type: ignore[arg-type]
        "/test.Batch/Send",
        Cardinality.UNARY_STREAM,
        bytes,
        bytes,
        codec=RawCodec(),
        status_details_codec=None,
        dispatch=_DispatchServerEvents(),
    )
    data = framed(b"a", b"bc", b"def")
    await _private.send_framed_messages(stream, data, 3)
    assert [kind for kind, _ in stub.writes] == ["headers", "data"]
    assert stub.writes[0][1][":status"] == "200"
    assert stub.writes[1][1] == data
    await stream.send_message(b"g")
    assert stream._messages_sent == 4
    assert stub.connection.messages_sent == 4
    assert stub.connection.last_message_sent is not None
    assert [kind for kind, _ in stub.writes] == ["headers", "data", "data"]


@contextlib.contextmanager
def _counting_steps(steps: Counter[str]) -> Iterator[None]:
    """Count, per trio task name, the steps trio runs meanwhile (a trio instrument)."""
    import trio

    class CountSteps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            steps[task.name] += 1

    instrument = CountSteps()
    trio.lowlevel.add_instrument(instrument)
    try:
        yield
    finally:
        trio.lowlevel.remove_instrument(instrument)


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_asyncio_runs_the_queued_callbacks_in_one_step():
    """The callbacks queued on a trio-asyncio loop run in order, in a few steps of its loop
    task rather than one step (a trio scheduler pass) each; a callback that a callback queues
    runs after them, in a later step, as in asyncio."""

    from panoseti_daq._grpclib.bridge import grpclib_loop

    ran: list[object] = []
    steps: Counter[str] = Counter()

    async def queue_callbacks() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def last() -> None:
            ran.append("queued by a callback")
            done.set_result(None)

        for number in range(200):
            loop.call_soon(ran.append, number)
        loop.call_soon(loop.call_soon, last)
        await done

    async with grpclib_loop() as loop:
        with _counting_steps(steps):
            await loop.run(queue_callbacks)
    assert ran == [*range(200), "queued by a callback"]
    loop_steps = sum(count for name, count in steps.items() if name.endswith("._main_loop"))
    assert 0 < loop_steps < 20, steps


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_asyncio_checks_call_soon_callbacks_as_asyncio_does():
    """trio-asyncio's `call_soon` refuses a coroutine function only in debug mode, as asyncio's
    own loop does: outside debug mode the check costs more than queueing the callback, on every
    asyncio callback of the server (issue 23)."""
    from panoseti_daq._grpclib.bridge import grpclib_loop

    async def coroutine_function() -> None:
        raise AssertionError("cancelled before it runs")

    def accepted(loop: asyncio.AbstractEventLoop) -> bool:
        try:
            loop.call_soon(coroutine_function).cancel()  # type: ignore[arg-type]
        except TypeError:
            return False
        return True

    plain = asyncio.SelectorEventLoop()
    try:
        expected = {}
        for debug in (False, True):
            plain.set_debug(debug)
            expected[debug] = accepted(plain)
    finally:
        plain.close()
    assert expected == {False: True, True: False}
    async with grpclib_loop() as bridge:
        loop = bridge.loop
        try:
            for debug in (False, True):
                loop.set_debug(debug)
                assert accepted(loop) == expected[debug], f"debug mode {debug}"
        finally:
            loop.set_debug(False)


class _Reads(asyncio.Protocol):
    """Notes each read and, through call_soon, each read's callback; `on_read` runs in
    data_received."""

    def __init__(self, on_read: Any = None) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.on_read = on_read
        self.closed: asyncio.Future[None] | None = None
        self.called_back: asyncio.Future[None] | None = None  # resolved by the next callback

    def connection_made(self, transport: Any) -> None:
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.events.append(("read", data))
        asyncio.get_running_loop().call_soon(self.callback, data)
        if self.on_read is not None:
            self.on_read(data)

    def callback(self, data: bytes) -> None:
        self.events.append(("callback", data))
        if self.called_back is not None and not self.called_back.done():
            self.called_back.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.closed is not None
        self.closed.set_result(None)


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_asyncio_runs_a_reads_callbacks_before_the_next_read():
    """The callbacks a read queues run before the socket is read again, as in asyncio, even when
    the next bytes are already waiting (each read here writes the next chunk before returning),
    now that the reader synchronizes with the loop only when callbacks are left (issue 23)."""
    import socket

    from panoseti_daq._grpclib.bridge import grpclib_loop

    ours, theirs = socket.socketpair()
    chunks = [bytes([65 + n]) * 8 for n in range(30)]

    def write_next(data: bytes) -> None:
        index = chunks.index(data) + 1
        if index < len(chunks):
            theirs.send(chunks[index])
        else:
            theirs.close()

    protocol = _Reads(write_next)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: protocol, ours)
        theirs.send(chunks[0])
        assert protocol.closed is not None
        await protocol.closed

    async with grpclib_loop() as bridge:
        await bridge.run(serve)
    expected = [(kind, chunk) for chunk in chunks for kind in ("read", "callback")]
    assert protocol.events == expected


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_asyncio_reader_takes_one_trio_step_per_read_when_the_loop_is_idle():
    """A socket reader on a trio-asyncio loop whose callbacks have all run is woken once per
    read (trio-asyncio's own reader is woken twice: for the socket, then after synchronizing
    with the loop), which saves a trio scheduler pass and an epoll_wait per read (issue 23)."""
    import socket

    from panoseti_daq._grpclib.bridge import grpclib_loop

    steps: Counter[str] = Counter()

    ours, theirs = socket.socketpair()
    reads = 20
    protocol = _Reads()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: protocol, ours)
        for number in range(reads):
            protocol.called_back = loop.create_future()
            theirs.send(bytes([number]))
            await protocol.called_back  # its read and its callback have run
        theirs.close()
        assert protocol.closed is not None
        await protocol.closed

    async with grpclib_loop() as bridge:
        with _counting_steps(steps):
            await bridge.run(serve)
    assert [data for kind, data in protocol.events if kind == "read"] == [
        bytes([number]) for number in range(reads)
    ]
    reader_steps = sum(count for name, count in steps.items() if "_io_task" in name)
    assert reads <= reader_steps <= reads + 3, steps


def test_a_version_not_written_for_fails_loudly():
    """The versions the private uses were written for are checked; another names the library,
    the installed version and the supported ones."""
    _private.check_version("grpclib", "0.4.9", ((0, 4),))
    _private.check_version("trio-asyncio", "0.16.0", ((0, 16),))
    for installed in ("0.5.0", "1.4.0", "0.3.9", "dev"):
        expected = rf"written for grpclib 0\.4\.x, but grpclib {installed} is installed"
        with pytest.raises(ImportError, match=expected):
            _private.check_version("grpclib", installed, ((0, 4),))
    with pytest.raises(ImportError, match=r"trio-asyncio written for trio-asyncio 0\.16\.x"):
        _private.check_version("trio-asyncio", "0.17.1", ((0, 16),))


def test_the_installed_versions_are_supported():
    import importlib.metadata

    import trio_asyncio

    _private.check_version(
        "grpclib", importlib.metadata.version("grpclib"), _private.GRPCLIB_SUPPORTED
    )
    _private.check_version(
        "trio-asyncio", trio_asyncio.__version__, _private.TRIO_ASYNCIO_SUPPORTED
    )


class UploadService:
    """A client-streaming method that reads its request with FramedMessageReader."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.counted = 0
        self.error: str | None = None

    async def upload(self, stream: Stream) -> None:
        reader = _private.FramedMessageReader(stream, max_batch_bytes=40_000)
        try:
            while batch := await reader.read():
                self.batches.append(batch)
        except CodecError as exc:
            self.error = str(exc)
        self.counted = stream._messages_received
        await stream.send_message(b"done")

    def __mapping__(self) -> dict[str, Handler]:
        return {"/test.Upload/Send": Handler(self.upload, Cardinality.STREAM_UNARY, bytes, bytes)}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_framed_reader_returns_every_message_in_order_in_batches():
    """R-UP-1, R-UP-4: the batched reader of an upload gets every message a grpclib client
    sends (real h2, in memory), in order, whole: empty ones, ones cut across DATA frames and
    chunks, more than one batch's worth; grpclib's message counter advances by each."""
    messages = [b"", b"x", bytes(range(256)) * 300, b"y" * 16_379, b"z" * 5, *([b"w" * 3000] * 40)]
    service = UploadService()
    async with ChannelFor([service], codec=RawCodec()) as channel:
        async with channel.request(
            "/test.Upload/Send", Cardinality.STREAM_UNARY, bytes, bytes
        ) as stream:
            for message in messages:
                await stream.send_message(message)
            await stream.end()
            assert await stream.recv_message() == b"done"
    assert [m for batch in service.batches for m in batch] == messages
    assert len(service.batches) > 1
    assert service.counted == len(messages)
    assert service.error is None


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_framed_reader_names_a_stream_that_ends_inside_a_message():
    """R-WIRE-5: a request stream that ends after part of a message is a CodecError saying
    how much of it arrived, after the whole messages before it."""
    service = UploadService()
    async with ChannelFor([service], codec=RawCodec()) as channel:
        async with channel.request(
            "/test.Upload/Send", Cardinality.STREAM_UNARY, bytes, bytes
        ) as stream:
            await stream.send_message(b"whole")
            await stream._stream.send_data(struct.pack(">BI", 0, 10) + b"abc")
            await stream.end()
            assert await stream.recv_message() == b"done"
    assert service.batches == [[b"whole"]]
    assert (
        service.error
        == "the request stream ended in the middle of a message (8 bytes of it arrived)"
    )


def test_data_frame_repr_names_the_length_without_copying_the_payload():
    """hyperframe's repr of a DATA frame (which h2 formats for every frame it receives) states
    the payload's length instead of serialising the whole body; other frames keep theirs."""
    from hyperframe.frame import DataFrame, PingFrame

    _private.cheap_data_frame_repr()
    _private.cheap_data_frame_repr()
    frame = DataFrame(1, data=b"x" * 100_000)
    frame.serialize_body = None  # type: ignore[method-assign,assignment]
    assert repr(frame) == "DataFrame(stream_id=1, flags=[]): data=<100000 bytes>"
    assert "opaque_data" in repr(PingFrame(0))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_framed_reader_waits_for_the_rest_of_a_message_cut_between_reads():
    """R-UP-1: a message whose prefix and first bytes arrive in one read and the rest in a
    later one is returned whole once the rest has come, not taken for the end of the stream."""
    service = UploadService()
    first, second = b"0123456789" * 50, b"after"
    async with ChannelFor([service], codec=RawCodec()) as channel:
        async with channel.request(
            "/test.Upload/Send", Cardinality.STREAM_UNARY, bytes, bytes
        ) as stream:
            data = framed(first, second)
            await stream.send_request()
            await stream._stream.send_data(data[:20])
            for _ in range(20):  # the server reads the piece before the rest is sent
                await asyncio.sleep(0)
            await stream._stream.send_data(data[20:])
            await stream.end()
            assert await stream.recv_message() == b"done"
    assert [m for batch in service.batches for m in batch] == [first, second]
    assert service.error is None


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_framed_reader_names_a_compressed_message_and_reads_a_large_one_whole():
    """R-WIRE-5: a message flagged compressed (the server decompresses nothing) is a CodecError
    naming it, after a 3 MB message before it, which arrives whole."""
    service = UploadService()
    large = bytes(range(256)) * 12_000
    async with ChannelFor([service], codec=RawCodec()) as channel:
        async with channel.request(
            "/test.Upload/Send", Cardinality.STREAM_UNARY, bytes, bytes
        ) as stream:
            await stream.send_message(large)
            await stream._stream.send_data(struct.pack(">BI", 1, 2) + b"zz")
            await stream.end()
            assert await stream.recv_message() == b"done"
    assert [m for batch in service.batches for m in batch] == [large]
    assert (
        service.error == "a compressed message (flag 1): this server accepts uncompressed ones only"
    )
