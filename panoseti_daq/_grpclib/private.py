"""Every use of another library's private names, in one place, checked against its version.

- grpclib 0.4: `send_framed_messages` writes a batch of gRPC messages to a server stream in one
  HTTP/2 write through the stream's protocol stream (`Stream._stream`) and keeps the counters
  `Stream.send_message` keeps (`_send_message_done`, `_messages_sent`, the connection's).
  `FramedMessageReader` reads a client stream's messages in batches from the protocol stream's
  receive buffer (`Buffer._unacked`, its `_ack_callback`) and keeps the counters
  `Stream.recv_message` keeps (`_messages_received`, the connection's).
- hyperframe 6: h2 4 logs `repr(frame)` of every frame it receives, computed even though its
  logger discards it, and hyperframe's repr of a DATA frame copies the frame's whole payload
  (`Frame._body_repr` serialises the body) to show 20 bytes of it. `cheap_data_frame_repr`
  gives `DataFrame` a `_body_repr` of its own that states the payload's length.
- trio-asyncio 0.16: importing it patches asyncio for the whole process. `import_trio_asyncio`
  is called only where a trio-asyncio loop is started (`bridge.grpclib_loop` under trio); it
  restores asyncio's own `new_event_loop` (kept by trio-asyncio as `_loop._orig_loop_new`) and
  points anyio 4's asyncio backend, if it was imported first, at trio-asyncio's
  `get_running_loop` and `current_task`; and makes trio-asyncio's loops run the callbacks
  already queued in one trio step, as asyncio does (`_run_ready_callbacks_in_one_step`: the
  loop's `_main_loop_one`, `_q_recv`, `_timers`, `_nursery` and `AsyncHandle`'s fields), which
  saves a trio scheduler pass per asyncio callback; makes their `call_soon` check its
  callback only in debug mode, as asyncio's does (`_check_callbacks_in_debug_mode_only`: the
  loop's `_queue_handle`); and makes their socket readers synchronize with the loop before a
  read only when callbacks are left (`_synchronize_readers_only_when_needed`: the loop's
  `_io_task`, `_q_recv` and the handle's `_scope`, `_cancelled`, `_run`, `_raise`), which
  saves a trio scheduler pass and an `epoll_wait` per read.

- grpclib 0.4 (with h2 4): `ConnectionGuard.install(server)` wraps the server's protocol
  factory (`Server._protocol_factory`) to refuse connections beyond a limit at accept and to
  time each connection (the H2Protocol's `connection`, its `processor` with its `streams` and
  `processors` table, grpclib's `Connection._connection`, the h2 connection, for GOAWAY); and
  grpclib's server-side `recv_message` (the name `grpclib.server` calls) is replaced by one
  that reads a message's 5-byte gRPC prefix first and refuses a message larger than the
  connection's limit before reading its body (grpclib has no receive limit of its own:
  vmagamedov/grpclib#195).

A version these were not written for fails loudly (ImportError naming the library and both
versions) instead of misbehaving: take a new minor version only after the tests of this module
(tests/test_private.py, tests/test_client_entry.py) and the suite pass against it, then add it
here.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import contextlib
import importlib.metadata
import logging
import math
import socket
import struct
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import grpclib.server
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.protocol import EventsProcessor, H2Protocol
from grpclib.server import Server, Stream
from h2.events import RemoteSettingsChanged

from ..errors import CodecError

__all__ = [
    "ConnectionGuard",
    "FramedMessageReader",
    "cheap_data_frame_repr",
    "check_message_length",
    "check_version",
    "import_trio_asyncio",
    "send_framed_messages",
]

log = logging.getLogger(__name__)

GRPCLIB_SUPPORTED = ((0, 4),)
TRIO_ASYNCIO_SUPPORTED = ((0, 16),)
HYPERFRAME_SUPPORTED = ((6,),)
ANYIO_SUPPORTED = ((4,),)


def check_version(library: str, installed: str, supported: tuple[tuple[int, ...], ...]) -> None:
    """ImportError unless `installed` starts with one of the `supported` version prefixes."""
    try:
        numbers = tuple(int(part) for part in installed.split(".")[:3])
    except ValueError:
        numbers = ()
    if any(numbers[: len(prefix)] == prefix for prefix in supported):
        return
    wanted = " or ".join(".".join(map(str, prefix)) + ".x" for prefix in supported)
    raise ImportError(
        f"panoseti_daq uses private parts of {library} written for {library} {wanted}, but "
        f"{library} {installed} is installed: install a supported version "
        f"(see pyproject.toml) or update panoseti_daq/_grpclib/private.py"
    )


def _require_attributes(library: str, owner: object, names: tuple[str, ...]) -> None:
    missing = [name for name in names if not hasattr(owner, name)]
    if missing:
        raise ImportError(
            f"{library} no longer has {', '.join(missing)} on {owner!r}: "
            "panoseti_daq/_grpclib/private.py needs updating for this version"
        )


check_version("grpclib", importlib.metadata.version("grpclib"), GRPCLIB_SUPPORTED)
_require_attributes(
    "grpclib",
    Stream,
    ("_send_initial_metadata_done", "_send_message_done", "_messages_sent", "_messages_received"),
)
_require_attributes("grpclib", Server, ("_protocol_factory",))
_require_attributes("grpclib", grpclib.server, ("recv_message",))
_require_attributes("grpclib", EventsProcessor, ("process_remote_settings_changed",))


async def send_framed_messages(stream: Stream[Any, Any], data: bytes, count: int) -> None:
    """Send `count` gRPC messages, already framed one after another in `data`, in one write.

    What grpclib's `Stream.send_message` does for one message, for many: send the initial
    metadata if not yet sent, write (grpclib's protocol stream splits the data by frame size and
    flow-control window, and waits while the window is closed), count. grpclib's SendMessage
    event is not dispatched (the server registers no listener for it).
    """
    if not stream._send_initial_metadata_done:
        await stream.send_initial_metadata()
    protocol_stream = stream._stream
    await protocol_stream.send_data(data)
    stream._send_message_done = True
    stream._messages_sent += count
    connection = protocol_stream.connection
    connection.messages_sent += count
    connection.last_message_sent = time.monotonic()


def import_trio_asyncio() -> ModuleType:
    """trio-asyncio, imported so that plain asyncio code keeps plain asyncio (see module doc).

    Importing trio-asyncio makes `asyncio.new_event_loop()` return a SyncTrioEventLoop (a trio
    run in a helper thread) in every thread, so `asyncio.run()`, `anyio.run()` on asyncio and
    the blocking client would all run 2-3x slower on it: asyncio's own is put back (trio-asyncio's
    `open_loop()` builds its loops itself). trio-asyncio also replaces `asyncio.get_running_loop`
    and `asyncio.current_task`, which code on its loops needs; anyio's asyncio backend keeps the
    functions it found when first imported, so if it came first it is pointed at the new ones.
    Its loops are made to run the callbacks already queued in one trio step
    (`_run_ready_callbacks_in_one_step`), to check `call_soon`'s callback in debug mode only
    (`_check_callbacks_in_debug_mode_only`) and to synchronize a socket reader with the loop
    only when callbacks are left (`_synchronize_readers_only_when_needed`). Idempotent; call
    it only where a trio-asyncio loop is about to start.
    """
    import trio_asyncio
    import trio_asyncio._base
    import trio_asyncio._loop

    check_version("trio-asyncio", trio_asyncio.__version__, TRIO_ASYNCIO_SUPPORTED)
    _require_attributes("trio-asyncio", trio_asyncio._loop, ("_orig_loop_new",))
    _require_attributes("trio-asyncio", trio_asyncio._base.BaseTrioEventLoop, ("_main_loop_one",))
    plain_new_event_loop = trio_asyncio._loop._orig_loop_new
    if asyncio.events.new_event_loop is not plain_new_event_loop:
        asyncio.new_event_loop = asyncio.events.new_event_loop = plain_new_event_loop
    _point_anyio_at(asyncio.get_running_loop, asyncio.current_task)
    _run_ready_callbacks_in_one_step(trio_asyncio._base.BaseTrioEventLoop)
    _check_callbacks_in_debug_mode_only(trio_asyncio._base.BaseTrioEventLoop)
    _synchronize_readers_only_when_needed(trio_asyncio._base.BaseTrioEventLoop)
    module: ModuleType = trio_asyncio
    return module


def _run_ready_callbacks_in_one_step(loop_class: Any) -> None:
    """Make trio-asyncio's loops run the callbacks already queued in one trio step, as
    asyncio's loop runs its ready callbacks in one pass.

    trio-asyncio 0.16's `_main_loop_one` takes one callback (`call_soon`) from the loop's queue
    (`_q_recv`) per call, and each call is a trio checkpoint: a scheduler pass and an
    `epoll_wait` per callback, several per gRPC message. After trio-asyncio's own step, the
    callbacks that were queued by then run without yielding, in order, exactly as that step
    runs them: timers go to the timer heap (`_timers`), a trio task to start (`AsyncHandle`)
    ends the batch the way trio-asyncio starts it, cancelled handles are skipped. Callbacks
    queued meanwhile wait for the next step, as in asyncio (what a callback schedules runs in
    the next pass). Idempotent.
    """
    import heapq

    import sniffio
    import trio
    from trio_asyncio._handles import AsyncHandle

    original = loop_class._main_loop_one
    if getattr(original, "_panoseti_batched", False):
        return
    timer_type = asyncio.TimerHandle
    library = sniffio.thread_local

    async def _main_loop_one(self: Any, no_wait: bool = False) -> None:
        await original(self, no_wait)
        receive = self._q_recv
        for _ in range(receive.statistics().current_buffer_used):
            try:
                handle = receive.receive_nowait()
            except trio.WouldBlock:
                return
            if isinstance(handle, timer_type):
                heapq.heappush(self._timers, handle)
            elif isinstance(handle, AsyncHandle):
                handle._context.run(self._nursery.start_soon, handle._run, name=handle._callback)
                await handle._started.wait()
                return
            elif not handle._cancelled:
                previous, library.name = library.name, "asyncio"
                try:
                    handle._run()
                finally:
                    library.name = previous

    _main_loop_one._panoseti_batched = True  # type: ignore[attr-defined]
    loop_class._main_loop_one = _main_loop_one


def _check_callbacks_in_debug_mode_only(loop_class: Any) -> None:
    """Make trio-asyncio's `call_soon` check its callback only in debug mode, as asyncio does.

    asyncio's `call_soon` checks that the callback is not a coroutine (function) only when the
    loop is in debug mode; trio-asyncio 0.16's checks on every call, and the check (inspect's
    `iscoroutinefunction`, slow for the bound built-in methods that asyncio's tasks and futures
    schedule) costs more than queueing the callback: a few per cent of the server's CPU per
    relayed frame. In debug mode (`loop.set_debug(True)`, PYTHONASYNCIODEBUG) the check stays.
    Idempotent.
    """
    _require_attributes("trio-asyncio", loop_class, ("call_soon", "_queue_handle"))
    if getattr(loop_class.call_soon, "_panoseti_unchecked", False):
        return
    checked = loop_class.call_soon
    handle_type = asyncio.Handle

    def call_soon(self: Any, callback: Any, *args: Any, **context: Any) -> Any:
        if self.get_debug():
            return checked(self, callback, *args, **context)
        return self._queue_handle(handle_type(callback, args, self, **context))

    call_soon._panoseti_unchecked = True  # type: ignore[attr-defined]
    call_soon.__doc__ = checked.__doc__
    loop_class.call_soon = call_soon


def _synchronize_readers_only_when_needed(loop_class: Any) -> None:
    """Make trio-asyncio's socket readers wait for the loop's callbacks only when some are left.

    trio-asyncio 0.16 runs each reader (`add_reader`: every asyncio socket transport) as a trio
    task (`_io_task`) that waits until the socket is readable, runs the read callback, then
    waits (`synchronize`: a trio Event set by a callback queued behind the others) until the
    loop has run the callbacks queued so far, so that the callbacks of one read run before the
    next read, as in asyncio. That wait is one more trio step per read, with an `epoll_wait`,
    before the reader waits for the socket again. Here the reader waits for the socket first,
    and before reading synchronizes only if the loop has callbacks queued or is not idle
    waiting for them (`_q_recv`'s statistics): the callbacks of one read still run before the
    next read. Idempotent.
    """
    _require_attributes("trio-asyncio", loop_class, ("_io_task", "synchronize"))
    if getattr(loop_class._io_task, "_panoseti_synchronized", False):
        return

    async def _io_task(self: Any, fd: int, handle: Any, wait_ready: Any) -> None:
        with handle._scope:
            try:
                while not handle._cancelled:
                    try:
                        await wait_ready(fd)
                    except OSError:
                        # the handle was cancelled and the socket closed before this task ran
                        if handle._cancelled:
                            break
                        raise
                    if handle._cancelled:
                        break
                    queue = self._q_recv.statistics()
                    if queue.current_buffer_used or not queue.tasks_waiting_receive:
                        await self.synchronize()
                        if handle._cancelled:
                            break
                    handle._run()
            except Exception as exc:
                handle._raise(exc)

    _io_task._panoseti_synchronized = True  # type: ignore[attr-defined]
    loop_class._io_task = _io_task


def _point_anyio_at(get_running_loop: object, current_task: object) -> None:
    backend: Any = sys.modules.get("anyio._backends._asyncio")
    if backend is None or backend.get_running_loop is get_running_loop:
        return  # not imported yet: it will import the patched functions itself
    check_version("anyio", importlib.metadata.version("anyio"), ANYIO_SUPPORTED)
    _require_attributes("anyio", backend, ("get_running_loop", "current_task"))
    backend.get_running_loop = get_running_loop
    backend.current_task = current_task


# --- connection limits (R-PEER-1, R-PEER-3, R-PEER-5) --------------------------------------

# The attribute of a grpclib Connection naming the guard of its server.
_GUARD_ATTRIBUTE = "_panoseti_guard"
# Warnings about refused or closed connections: at most one a minute per kind (R-PEER-3).
LOG_INTERVAL_S = 60.0


class _RateLimitedLog:
    """Log a count of events at most once per LOG_INTERVAL_S: the first at once, the rest
    summed into the next line."""

    def __init__(self, level: int, what: str) -> None:
        self.level = level
        self.what = what
        self.count = 0  # every event so far
        self._unlogged = 0
        self._logged_at = -math.inf

    def note(self, reason: str) -> None:
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL_S:
            log.log(self.level, "%s %d connection(s): %s", self.what, self._unlogged, reason)
            self._unlogged = 0
            self._logged_at = now


class ConnectionGuard:
    """The limits one peer's connections are held to, for the grpclib servers it is installed
    on (R-PEER-1, R-PEER-3, R-PEER-5; docs/limits.md).

    - at most `max_connections` open at once (over every server it guards); further ones are
      closed as they are accepted, before any HTTP/2 state is made;
    - a connection that has not sent the HTTP/2 preface and its SETTINGS within
      `handshake_timeout_s` is closed; one with no open stream for `idle_timeout_s` gets a
      GOAWAY and is closed;
    - a received gRPC message larger than `max_message_bytes` ends its call with
      RESOURCE_EXHAUSTED before its body is read; at most `receive_slots` messages larger than
      the HTTP/2 window (`window_bytes`, which bounds the smaller ones already) are read at once.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        handshake_timeout_s: float,
        idle_timeout_s: float,
        max_message_bytes: int,
        receive_slots: int,
        window_bytes: int,
    ) -> None:
        self.max_connections = max_connections
        self.handshake_timeout_s = handshake_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_message_bytes = max_message_bytes
        self.receive_slots = receive_slots
        self.window_bytes = window_bytes
        self.open_connections = 0
        self.refused = _RateLimitedLog(logging.WARNING, "refused")
        self.handshake_timeouts = _RateLimitedLog(logging.WARNING, "closed")
        self.idle_closed = _RateLimitedLog(logging.INFO, "closed")
        self.too_large = 0
        self._receive_slots: asyncio.Semaphore | None = None

    def install(self, server: Server) -> None:
        """Guard the connections `server` accepts; call it before `server.start()`."""
        factory = server._protocol_factory

        def guarded_factory() -> asyncio.Protocol:
            if self.open_connections >= self.max_connections:
                self.refused.note(f"max_connections ({self.max_connections}) are open")
                return _Refused()
            return _GuardedProtocol(factory(), self)

        server._protocol_factory = guarded_factory  # type: ignore[method-assign, assignment]

    def counters(self) -> dict[str, int]:
        """Connections open now, and those refused or closed and messages refused so far."""
        return {
            "open": self.open_connections,
            "refused": self.refused.count,
            "handshake_timeouts": self.handshake_timeouts.count,
            "idle_closed": self.idle_closed.count,
            "messages_too_large": self.too_large,
        }

    def receive_slot(self) -> asyncio.Semaphore:
        # Made on first use, on grpclib's loop, where every handler runs.
        if self._receive_slots is None:
            self._receive_slots = asyncio.Semaphore(self.receive_slots)
        return self._receive_slots


_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a TCP reset


class _Refused(asyncio.Protocol):
    """A connection beyond max_connections: reset at once (R-PEER-3)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        transport.abort()  # type: ignore[attr-defined]


class _GuardedProtocol(asyncio.Protocol):
    """grpclib's H2Protocol with the guard's timers around it (R-PEER-3)."""

    def __init__(self, inner: H2Protocol, guard: ConnectionGuard) -> None:
        # Counted from here: asyncio makes the protocols of a batch of accepted connections
        # before it calls their connection_made.
        guard.open_connections += 1
        self.inner = inner
        self.guard = guard
        self.handshaken = False
        self._timer: asyncio.TimerHandle | None = None
        self._made_at = time.monotonic()
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made_at = time.monotonic()
        self.inner.connection_made(transport)
        setattr(self.inner.connection, _GUARD_ATTRIBUTE, self.guard)
        processors: Any = self.inner.processor.processors
        settings_changed = processors[RemoteSettingsChanged]

        def on_settings(event: Any) -> None:
            if not self.handshaken:
                self.handshaken = True
                self._schedule(self.guard.idle_timeout_s, self._check_idle)
            settings_changed(event)

        processors[RemoteSettingsChanged] = on_settings
        self._schedule(self.guard.handshake_timeout_s, self._check_handshake)

    def _schedule(self, delay_s: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_event_loop().call_later(delay_s, callback)

    def _check_handshake(self) -> None:
        if not self.handshaken and not self._closed:
            self.guard.handshake_timeouts.note(
                "no HTTP/2 preface and SETTINGS within handshake_timeout_seconds "
                f"({self.guard.handshake_timeout_s:g} s)"
            )
            self._close(goaway=False)

    def _check_idle(self) -> None:
        if self._closed:
            return
        idle_s = self.guard.idle_timeout_s
        if self.inner.processor.streams:
            self._schedule(idle_s, self._check_idle)
            return
        connection = self.inner.connection
        last = max(
            self._made_at,
            connection.last_stream_created or 0.0,
            connection.last_data_received or 0.0,
            connection.last_data_sent or 0.0,
        )
        remaining_s = last + idle_s - time.monotonic()
        if remaining_s > 0:
            self._schedule(remaining_s, self._check_idle)
            return
        self.guard.idle_closed.note(
            f"no open stream for idle_connection_timeout_seconds ({idle_s:g} s)"
        )
        self._close(goaway=True)

    def _close(self, *, goaway: bool) -> None:
        connection = self.inner.connection
        if goaway and not connection.is_closing():
            connection._connection.close_connection()
            connection.flush()
        self.inner.processor.close("connection closed by the server (R-PEER-3)")

    # asyncio.Protocol, passed on to grpclib's H2Protocol
    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            self._closed = True
            self.guard.open_connections -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.inner.connection_lost(exc)


_grpclib_recv_message = grpclib.server.recv_message


def check_message_length(connection: Any, length: int) -> None:
    """R-PEER-1: GRPCError RESOURCE_EXHAUSTED when a message of `length` bytes, announced by
    its gRPC prefix on grpclib `connection` (a protocol stream's `.connection`), is larger
    than the limit of the connection's guard; for readers of raw messages too."""
    guard: ConnectionGuard | None = getattr(connection, _GUARD_ATTRIBUTE, None)
    if guard is not None and length > guard.max_message_bytes:
        guard.too_large += 1
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"received message of {length} bytes is larger than the limit of "
            f"{guard.max_message_bytes} bytes (max_message_bytes)",
        )


async def _bounded_recv_message(stream: Any, codec: Any, message_type: Any) -> Any:
    """grpclib's `recv_message` with the guard's receive limit (R-PEER-1, R-PEER-5).

    The 5-byte gRPC prefix is read first: a message longer than `max_message_bytes` ends the
    call with RESOURCE_EXHAUSTED without its body being read (HTTP/2 flow control then holds
    back the rest); a message longer than the HTTP/2 window waits for one of the guard's
    receive slots, so that at most `receive_slots` such bodies are held at once.
    """
    guard: ConnectionGuard | None = getattr(stream.connection, _GUARD_ATTRIBUTE, None)
    if guard is None:
        return await _grpclib_recv_message(stream, codec, message_type)
    prefix = await stream.recv_data(5)
    if not prefix:
        return None
    if prefix[0]:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
    length = int.from_bytes(prefix[1:5], "big")
    check_message_length(stream.connection, length)
    if length <= guard.window_bytes:
        body = await stream.recv_data(length)
    else:
        async with guard.receive_slot():
            body = await stream.recv_data(length)
            return codec.decode(body, message_type)
    return codec.decode(body, message_type)


grpclib.server.recv_message = _bounded_recv_message


class FramedMessageReader:
    """The request messages of a client-streaming call, in batches (one client stream each).

    grpclib's `Stream.recv_message` waits twice per message (its 5-byte prefix, then its bytes)
    and acknowledges every DATA frame to HTTP/2 flow control on its own. This reader takes
    every chunk that has arrived (up to `max_batch_bytes`) in one step, acknowledges them
    together (flow control still opens only as the handler reads), and returns the complete
    messages among them; a message cut between chunks waits for the rest. Messages are not
    decoded (the caller decodes them) and grpclib's RecvMessage event is not dispatched (the
    server registers no listener for it). Only this reader may read the stream.

    The server's connection guard applies as to grpclib's own reads: a message announced
    larger than `max_message_bytes` ends the call before its body is held (R-PEER-1), and a
    message larger than the HTTP/2 window is read only while holding one of the guard's
    receive slots (R-PEER-5). Use it as an async context manager, which gives a slot back.
    """

    _PREFIX_BYTES = 5

    def __init__(self, stream: Stream[Any, Any], max_batch_bytes: int = 65536) -> None:
        self._stream = stream
        buffer = stream._stream.buffer
        _require_attributes("grpclib", buffer, ("_unacked", "_ack_callback"))
        self._queue = buffer._unacked
        self._ack = buffer._ack_callback
        self._max_batch_bytes = max_batch_bytes
        # Chunks received and not yet returned, joined only once they hold a whole message (a
        # large message costs one copy, not one per chunk).
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._need = self._PREFIX_BYTES  # bytes buffered before the first message is whole
        self._ended = False
        self._connection = stream._stream.connection
        self._guard: ConnectionGuard | None = getattr(self._connection, _GUARD_ATTRIBUTE, None)
        self._slot: asyncio.Semaphore | None = None  # the guard's, while a large body is read

    async def __aenter__(self) -> FramedMessageReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._release_slot()

    def _release_slot(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    async def read(self) -> list[bytes]:
        """Every complete message now (waiting for at least one); [] once the client has ended
        its stream. CodecError if it ended in the middle of a message, or sent a compressed
        one (the server decompresses nothing)."""
        while True:
            # The first message's length is known once its prefix is: `_split` sets `_need`.
            messages = self._split() if self._buffered >= self._need else None
            if messages:
                if self._need - self._PREFIX_BYTES <= self._window_bytes():
                    self._release_slot()
                count = len(messages)
                self._stream._messages_received += count
                self._connection.messages_received += count
                self._connection.last_message_received = time.monotonic()
                return messages
            if self._ended:
                if self._buffered:
                    raise CodecError(
                        f"the request stream ended in the middle of a message "
                        f"({self._buffered} bytes of it arrived)"
                    )
                return []
            if self._slot is None and self._need - self._PREFIX_BYTES > self._window_bytes():
                assert self._guard is not None
                slot = self._guard.receive_slot()
                await slot.acquire()
                self._slot = slot
            await self._fill()

    def _window_bytes(self) -> float:
        return math.inf if self._guard is None else self._guard.window_bytes

    async def _fill(self) -> None:
        queue = self._queue
        chunk = await queue.get()
        size = acked = 0
        while True:
            data, data_size, ack_size = chunk
            if not ack_size:  # grpclib's end of stream
                self._ended = True
                break
            self._chunks.append(data)
            size += data_size
            acked += ack_size
            if size >= self._max_batch_bytes or queue.empty():
                break
            chunk = queue.get_nowait()
        self._buffered += size
        if acked:
            self._ack(acked)

    def _split(self) -> list[bytes]:
        """The whole messages buffered; the rest stays buffered."""
        chunks = self._chunks
        buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        end = len(buf)
        pos = 0
        messages: list[bytes] = []
        need = self._PREFIX_BYTES
        while end - pos >= self._PREFIX_BYTES:
            if buf[pos]:
                if messages:
                    break  # the whole messages before it first; the next read raises
                raise CodecError(
                    f"a compressed message (flag {buf[pos]}): "
                    "this server accepts uncompressed ones only"
                )
            length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if messages and length > self._window_bytes():
                break  # the whole messages before it first; the next read takes its slot
            check_message_length(self._connection, length)
            start = pos + self._PREFIX_BYTES
            if end - start < length:
                need = self._PREFIX_BYTES + length
                break
            messages.append(buf[start : start + length])
            pos = start + length
        rest = buf[pos:] if pos else buf
        self._chunks = [rest] if rest else []
        self._buffered = len(rest)
        self._need = need
        return messages


def cheap_data_frame_repr() -> None:
    """Make the repr of a received DATA frame cost nothing per byte (see module doc).

    h2 (`H2Connection._receive_frame`) formats every received frame for its trace log, which is
    off: for a DATA frame, hyperframe 6 serialises the body (a copy of the payload, ~3 % of a
    relaying server's busy time at 3,000 img16 frames/s) to show 20 bytes of it. The repr
    names the payload's length instead. Affects only reprs; idempotent.
    """
    import hyperframe
    from hyperframe.frame import DataFrame

    check_version("hyperframe", hyperframe.__version__, HYPERFRAME_SUPPORTED)
    if getattr(DataFrame.__dict__.get("_body_repr"), "_panoseti_cheap", False):
        return
    if "_body_repr" in DataFrame.__dict__:
        return  # hyperframe has a DataFrame repr of its own: leave it

    def _body_repr(self: Any) -> str:
        return f"data=<{len(self.data)} bytes>"

    _body_repr._panoseti_cheap = True  # type: ignore[attr-defined]
    DataFrame._body_repr = _body_repr  # type: ignore[method-assign]


# Every process that loads the glue (server and clients) receives DATA frames.
cheap_data_frame_repr()
