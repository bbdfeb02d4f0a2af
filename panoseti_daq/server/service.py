"""The DaqData RPC handlers: thin grpclib handlers over the server core (spec §5 - §7).

Handlers always run on grpclib's asyncio loop; they create their own anyio primitives there
and reach the core only through its channels, `anyio.Event`s and the synchronous hub. The
StreamImages handler is the I/O shell of the hub's state machine (server/hub.py): it waits (for
the hub's wake-up or the time the state machine names), asks `Subscriber.poll(now)`, and sends
what it is given or ends the call with the status the reason maps to.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import stat
import struct
import time
from pathlib import Path
from typing import Any

import anyio
from grpclib import GRPCError
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Stream

from .._private import send_framed_messages
from ..codec import (
    RELAY_LIMIT_BYTES,
    StreamReply,
    UploadItem,
    encode_pano_image,
    encode_stream_reply,
    overrun_notice,
    too_large_to_relay,
)
from ..config import HpIoConfig
from ..errors import CodecError, ImageError
from ..messages import (
    SERVICE_NAME,
    Empty,
    InitHpIoRequest,
    InitHpIoResponse,
    StreamImagesRequest,
)
from .core import ServerCore, interval_ok
from .hub import EndReason, Send, Subscriber, Subscription, Wait, valid_interval
from .scanner import daq_is_active

log = logging.getLogger(__name__)

__all__ = ["DaqDataService"]

_NS = 1_000_000_000

# gRPC metadata with which an in-process uploader (the rpc simulation) names its frames' source.
SOURCE_METADATA_KEY = "x-panoseti-frame-source"

_END_STATUS = {
    EndReason.RECONFIGURED: Status.CANCELLED,  # R-STREAM-13
    EndReason.SHUTDOWN: Status.UNAVAILABLE,  # R-STREAM-3
    EndReason.TOO_SLOW: Status.RESOURCE_EXHAUSTED,  # R-STREAM-11
    EndReason.IDLE: Status.DEADLINE_EXCEEDED,  # R-STREAM-12
    EndReason.SOURCE_FAILED: Status.UNAVAILABLE,  # R-SRC-1
}


# grpclib cancels a handler when the caller's deadline expires and answers DEADLINE_EXCEEDED
# itself. A handler waiting for a writer stops this much earlier, so that the caller learns why
# (UNAVAILABLE, R-STATE-2, R-STATE-3) instead of racing grpclib's timer.
DEADLINE_MARGIN_S = 0.05


def _remaining_s(stream: Stream) -> float:
    """Seconds a handler may wait within the caller's deadline; infinity when it set none."""
    if stream.deadline is None:
        return math.inf
    return max(0.0, stream.deadline.time_remaining() - DEADLINE_MARGIN_S)


async def _request(stream: Stream, timeout_s: float) -> Any:
    """The request of a unary-request RPC; malformed bytes are INVALID_ARGUMENT (R-WIRE-5).

    A client sends it with its call's headers: one that has not within `timeout_s`
    (handshake_timeout_seconds) holds a call open without using it, as a slowloris connection
    would, and gets DEADLINE_EXCEEDED (R-PEER-3).
    """
    try:
        with anyio.fail_after(timeout_s):
            request = await stream.recv_message()
    except CodecError as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, f"malformed request: {exc}") from None
    except TimeoutError:
        raise GRPCError(
            Status.DEADLINE_EXCEEDED,
            f"no request message within {timeout_s:g} s (handshake_timeout_seconds)",
        ) from None
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "no request message")
    return request


_MESSAGE_PREFIX = struct.Struct(">BI")  # gRPC framing: not compressed, length


async def _send_batch(stream: Stream, replies: list[StreamReply]) -> None:
    """Send replies as gRPC messages in one HTTP/2 write, not one write each.

    gRPC frames messages independently of HTTP/2 DATA frames, so several messages may share one;
    grpclib's `send_message` writes to the socket once per message, a system call and an h2
    frame each. Here the messages are framed together and written at once (grpclib has no
    public call for that: `_private.send_framed_messages`).
    """
    if len(replies) == 1:
        await stream.send_message(replies[0])
        return
    pack = _MESSAGE_PREFIX.pack
    parts: list[bytes] = []
    for reply in replies:
        message = encode_stream_reply(reply)
        parts += (pack(0, len(message)), message)
    await send_framed_messages(stream, b"".join(parts), len(replies))


def _within(path: Path, roots: tuple[Path, ...]) -> bool:
    resolved = path.resolve()
    return any(resolved == root.resolve() or root.resolve() in resolved.parents for root in roots)


class _Bell:
    """What the hub rings (from any loop in this thread) when a subscriber has news."""

    __slots__ = ("_event", "ended", "subscriber")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.ended = anyio.Event()  # set once the subscriber has ended
        self.subscriber: Subscriber | None = None

    def ring(self) -> None:
        self._event.set()
        if self.subscriber is not None and self.subscriber.ended is not None:
            self.ended.set()

    def reset(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()

    async def wait(self, timeout_s: float) -> None:
        with anyio.move_on_after(timeout_s):
            await self._event.wait()

    async def wait_for_ring(self) -> None:
        """Wait, with no timer of its own, until the hub (or the deadline guard) rings."""
        await self._event.wait()


async def _enforce_deadlines(subscriber: Subscriber, bell: _Bell, scope: anyio.CancelScope) -> None:
    """Apply the subscriber's deadlines (`Subscriber.deadline_s`) beside its handler.

    R-STREAM-11: a reader whose full queue goes untaken while its handler is stuck in a send (a
    client that stopped reading) is ended by cancelling the send. R-STREAM-12: a reader with
    nothing to send is ended when idle for too long; ending it rings the bell, which wakes the
    handler (which waits without a timer of its own for that deadline, see `_send_frames`).
    """
    step_s = max(subscriber.limits.reader_timeout_s, 0.001)
    while True:
        now = time.monotonic()
        with anyio.move_on_after(min(subscriber.deadline_s - now, step_s)):
            await bell.ended.wait()
        ended = subscriber.expire(time.monotonic())
        if ended is not None:
            if ended.reason is EndReason.TOO_SLOW:
                scope.cancel()
            return


async def _outlast_cancellation(done: anyio.Event) -> None:
    """Wait until `done` is set, also when this task is cancelled meanwhile; then go on with
    the cancellation.

    grpclib cancels a handler with asyncio's `Task.cancel()` (the caller's deadline, a reset
    call, the server closing), which an anyio shielded scope does not hold back. An InitHpIo
    handler that stopped waiting would let readers and the next writer in while the controller
    still reconfigures.
    """
    cancelled: BaseException | None = None
    while not done.is_set():
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class() as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled


def _peer(stream: Stream, uds_path: str | None) -> str:
    """The client's address: "ip:port", or "unix:" and the path of the server's Unix socket."""
    address: Any = stream.peer.addr()
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
        return f"{host}:{address[1]}"
    return f"unix:{address or uds_path or ''}"


# A StreamImagesResponse around a PanoImage adds the server's name, the send time (at most 24
# bytes), the overrun notice ("dropped N frames", at most 32) and the image's tag and length.
_REPLY_OVERHEAD_BYTES = 64


def _reply_bytes(item: UploadItem, server_name: str) -> int:
    """The size, at most, of the StreamImages reply that relays `item`'s image (R-PEER-2)."""
    assert item.frame is not None
    image_bytes = (
        len(item.encoded) if item.encoded is not None else len(encode_pano_image(item.frame))
    )
    return image_bytes + len(server_name.encode()) + _REPLY_OVERHEAD_BYTES


def _data_dir_error(data_dir: str, exc: OSError) -> GRPCError:
    """R-INIT-2, R-INIT-11: what an OSError about `data_dir` tells the caller."""
    if isinstance(exc, FileNotFoundError):
        return GRPCError(Status.INVALID_ARGUMENT, f"data_dir {data_dir!r} does not exist")
    if isinstance(exc, NotADirectoryError):
        return GRPCError(Status.INVALID_ARGUMENT, f"data_dir {data_dir!r} is not a directory")
    reason = exc.strerror or str(exc)
    status = (
        Status.PERMISSION_DENIED if isinstance(exc, PermissionError) else Status.INVALID_ARGUMENT
    )
    return GRPCError(status, f"data_dir {data_dir!r} cannot be used: {reason}")


def _peer_host(stream: Stream) -> str:
    """The client's address without its port, which R-PEER-4 counts streams by: every client
    on the Unix socket is one peer, "unix"."""
    address: Any = stream.peer.addr()
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0])
    return "unix"


class DaqDataService:
    """grpclib servable implementing daqdata.DaqData."""

    def __init__(self, core: ServerCore, uds_path: str | None = None) -> None:
        self.core = core
        self.config = core.config
        self.uds_path = uds_path
        self._writer_lock: anyio.Lock | None = None
        # InitHpIo calls from their request to their answer; readers wait while there are any.
        self._writers = 0
        self._writers_gone: anyio.Event | None = None
        # StreamImages streams per peer address (R-PEER-4).
        self._streams_by_peer: dict[str, int] = {}

    def __mapping__(self) -> dict[str, Handler]:
        prefix = f"/{SERVICE_NAME}"
        return {
            f"{prefix}/StreamImages": Handler(
                self.stream_images, Cardinality.UNARY_STREAM, StreamImagesRequest, StreamReply
            ),
            f"{prefix}/InitHpIo": Handler(
                self.init_hp_io, Cardinality.UNARY_UNARY, InitHpIoRequest, InitHpIoResponse
            ),
            f"{prefix}/Ping": Handler(self.ping, Cardinality.UNARY_UNARY, Empty, Empty),
            f"{prefix}/UploadImages": Handler(
                self.upload_images, Cardinality.STREAM_UNARY, UploadItem, Empty
            ),
        }

    @property
    def writer_lock(self) -> anyio.Lock:
        # Created on first use, on grpclib's loop, where every handler waits on it.
        if self._writer_lock is None:
            self._writer_lock = anyio.Lock()
        return self._writer_lock

    async def _wait_for_writer(self, stream: Stream) -> None:
        """R-STATE-2, R-STATE-3: wait while a writer checks its request or reconfigures, within
        the deadline."""
        if not self._writers:
            return
        with anyio.move_on_after(_remaining_s(stream)):
            while self._writers:
                if self._writers_gone is None:
                    self._writers_gone = anyio.Event()
                await self._writers_gone.wait()
            return
        raise GRPCError(
            Status.UNAVAILABLE, "hp_io is being reconfigured and the deadline expired waiting"
        )

    # -- Ping ------------------------------------------------------------------------------
    async def ping(self, stream: Stream[Empty, Empty]) -> None:
        """R-PING-1: answer whenever the server runs."""
        await _request(stream, self.config.handshake_timeout_seconds)
        await stream.send_message(Empty())

    # -- StreamImages ----------------------------------------------------------------------
    async def stream_images(self, stream: Stream[StreamImagesRequest, StreamReply]) -> None:
        request = await _request(stream, self.config.handshake_timeout_seconds)
        core, config = self.core, self.config
        # R-STREAM-1 .. R-STREAM-5, in this order.
        if not (request.stream_movie_data or request.stream_pulse_height_data):
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                "stream_movie_data and stream_pulse_height_data are both false: nothing to stream",
            )
        await self._wait_for_writer(stream)
        if not core.hp_io_valid:
            if core.source_failure is not None:  # R-SRC-1
                raise GRPCError(
                    Status.FAILED_PRECONDITION,
                    f"hp_io is not valid: {core.source_failure}; call InitHpIo again",
                )
            raise GRPCError(
                Status.FAILED_PRECONDITION, "hp_io is not initialized: call InitHpIo first"
            )
        if core.shutting_down:
            raise GRPCError(Status.UNAVAILABLE, "server shutting down")
        if core.active_streams >= config.max_concurrent_rpcs:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"too many StreamImages clients: the limit is {config.max_concurrent_rpcs}",
            )
        peer = _peer(stream, self.uds_path)
        peer_host = _peer_host(stream)
        if self._streams_by_peer.get(peer_host, 0) >= config.streams_per_peer:  # R-PEER-4
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"too many StreamImages streams from {peer_host}: the limit per peer is "
                f"{config.streams_per_peer} (max_streams_per_peer)",
            )
        interval_s = request.update_interval_seconds
        if not valid_interval(interval_s, config.max_client_update_interval_seconds):
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"update_interval_seconds must be between 0 and "
                f"{config.max_client_update_interval_seconds:g}, not {interval_s}",
            )
        subscription = Subscription(
            movie=request.stream_movie_data,
            pulse_height=request.stream_pulse_height_data,
            module_ids=frozenset(request.module_ids),
            interval_s=interval_s,
        )
        bell = _Bell()
        subscriber = core.hub.subscribe(subscription, time.monotonic(), peer=peer, wake=bell.ring)
        bell.subscriber = subscriber
        self._streams_by_peer[peer_host] = self._streams_by_peer.get(peer_host, 0) + 1
        try:
            # Headers now: the client knows it is subscribed before the first frame.
            await stream.send_initial_metadata()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_enforce_deadlines, subscriber, bell, tg.cancel_scope)
                await self._send_frames(stream, subscriber, bell)
                tg.cancel_scope.cancel()
        finally:
            core.hub.unsubscribe(subscriber)
            left = self._streams_by_peer.pop(peer_host) - 1
            if left:
                self._streams_by_peer[peer_host] = left
        ended = subscriber.ended
        if ended is not None:
            raise GRPCError(_END_STATUS[ended.reason], ended.message)

    async def _send_frames(self, stream: Stream, subscriber: Subscriber, bell: _Bell) -> None:
        """Until the hub ends the subscriber: wait, ask the state machine, send."""
        name = self.config.server_name
        while True:
            bell.reset()
            decision = subscriber.poll(time.monotonic())
            if isinstance(decision, Send):
                now_ns = time.time_ns()
                frames = decision.frames
                await _send_batch(
                    stream,
                    [
                        StreamReply(
                            entry.frame,
                            name,
                            now_ns,
                            overrun_notice(dropped),
                            encoded_image=entry.encoded,
                        )
                        for entry, dropped in frames
                    ],
                )
                subscriber.record_sent(frames, time.monotonic())
            elif isinstance(decision, Wait):
                if decision.until_s >= subscriber.deadline_s:
                    # Nothing to send until the hub rings, or the subscriber's own deadline
                    # (idle, R-STREAM-12), at which `_enforce_deadlines` ends it and rings.
                    # No timer here: under trio a cancelled asyncio timer stays in
                    # trio-asyncio's heap until it would have fired (15 s by default), so one
                    # per wait, i.e. per frame, kept ~15,000 timers alive at 1,000 frames/s
                    # and made the garbage collector's full passes stall for 40-80 ms.
                    await bell.wait_for_ring()
                else:
                    await bell.wait(decision.until_s - time.monotonic())  # paced: next send
            else:
                return  # End: the caller reports it

    # -- InitHpIo --------------------------------------------------------------------------
    def _check_hp_io_request(self, request: InitHpIoRequest) -> HpIoConfig:
        """R-INIT-1 .. R-INIT-4: the request's own checks, before any lock is taken."""
        config = self.config
        # R-INIT-1, R-INIT-10: a finite interval within [minimum, max client interval].
        minimum_s = config.min_hp_io_update_interval_seconds
        maximum_s = config.max_client_update_interval_seconds
        interval_s = request.update_interval_seconds
        if not interval_ok(interval_s, minimum_s):
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"update_interval_seconds must be >= {minimum_s:g}, not {interval_s}",
            )
        if not interval_s <= maximum_s:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"update_interval_seconds must be finite, between {minimum_s:g} and "
                f"{maximum_s:g} (max_client_update_interval_seconds), not {interval_s}",
            )
        hp_io = HpIoConfig(
            data_dir=request.data_dir,
            update_interval_seconds=request.update_interval_seconds,
            force=request.force,
            simulate_daq=request.simulate_daq,
            module_ids=tuple(request.module_ids),
        )
        if request.simulate_daq:
            return hp_io  # R-INIT-8: data_dir is ignored
        if not request.data_dir:
            raise GRPCError(Status.INVALID_ARGUMENT, "data_dir '' does not exist")
        try:
            return self._check_data_dir(request, hp_io)
        except OSError as exc:  # R-INIT-11: never UNKNOWN
            raise _data_dir_error(request.data_dir, exc) from None
        except (ValueError, RuntimeError) as exc:  # a NUL byte; a loop of links (Python < 3.13)
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"data_dir {request.data_dir!r} cannot be used: {exc}"
            ) from None

    def _check_data_dir(self, request: InitHpIoRequest, hp_io: HpIoConfig) -> HpIoConfig:
        """R-INIT-2 .. R-INIT-4, R-INIT-11; OSError for what the file system refuses."""
        config = self.config
        data_dir = Path(request.data_dir).expanduser()
        if not stat.S_ISDIR(data_dir.stat().st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with os.scandir(data_dir):  # PermissionError for a directory this server cannot read
            pass
        if not _within(data_dir, config.allowed_data_roots):
            roots = ", ".join(str(r) for r in config.allowed_data_roots)
            raise GRPCError(
                Status.PERMISSION_DENIED,
                f"data_dir {request.data_dir!r} is outside the allowed data roots ({roots})",
            )
        if not daq_is_active(data_dir, config.daq_active_check):
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"no active DAQ under {request.data_dir!r} (checked: "
                f"{', '.join(config.daq_active_check)})",
            )
        return dataclasses.replace(hp_io, data_dir=str(data_dir.resolve()))

    async def init_hp_io(self, stream: Stream[InitHpIoRequest, InitHpIoResponse]) -> None:
        request = await _request(stream, self.config.handshake_timeout_seconds)
        self._writers += 1
        try:
            await self._init_hp_io(stream, request)
        finally:
            self._writers -= 1
            if not self._writers and self._writers_gone is not None:
                self._writers_gone.set()
                self._writers_gone = None

    async def _init_hp_io(
        self, stream: Stream[InitHpIoRequest, InitHpIoResponse], request: InitHpIoRequest
    ) -> None:
        # File-system checks and a /proc scan: off the event loop.
        hp_io = await anyio.to_thread.run_sync(self._check_hp_io_request, request)
        core = self.core
        if core.shutting_down:
            raise GRPCError(Status.UNAVAILABLE, "server shutting down")
        # R-STATE-2: one writer at a time; a second one waits within its deadline.
        with anyio.move_on_after(_remaining_s(stream)) as scope:
            await self.writer_lock.acquire()
        if scope.cancelled_caught:
            raise GRPCError(Status.UNAVAILABLE, "another InitHpIo is in progress")
        try:
            if not request.force and core.active_streams > 0:
                raise GRPCError(
                    Status.FAILED_PRECONDITION,
                    f"{core.active_streams} StreamImages client(s) active; "
                    "use force=true to reconfigure anyway",
                )
            result = await core.submit(hp_io)
            # R-STATE-2, R-STATE-3: this call stays the writer until the controller is done,
            # also when its caller goes away meanwhile.
            await _outlast_cancellation(result.done)
        finally:
            self.writer_lock.release()
        await stream.send_message(
            InitHpIoResponse(success=result.success, error_message=result.error_message)
        )

    # -- UploadImages ----------------------------------------------------------------------
    async def upload_images(self, stream: Stream[UploadItem, Empty]) -> None:
        """R-UP-1 .. R-UP-5: frames enter the hub; a bad image ends this upload only."""
        index = 0
        valid = self.core.hub.valid_products
        simulated = stream.metadata is not None and (
            stream.metadata.get(SOURCE_METADATA_KEY) == "simulation"
        )
        uploader = self.core.uploader("simulation" if simulated else "upload")
        while True:
            try:
                item = await stream.recv_message()
            except (CodecError, ImageError) as exc:
                raise GRPCError(
                    Status.INVALID_ARGUMENT,
                    f"image {index} of the upload is invalid: {exc}; "
                    f"the {index} image(s) before it were accepted",
                ) from None
            if item is None:
                break
            if item.frame is None:
                log.warning("UploadImages: request %d has no pano_image; skipped", index)
            elif item.frame.product.name not in valid:
                raise GRPCError(
                    Status.INVALID_ARGUMENT,
                    f"image {index} of the upload is {item.frame.product.name}, which this "
                    f"server does not serve (valid: {', '.join(sorted(valid))})",
                )
            else:
                reply_bytes = _reply_bytes(item, self.config.server_name)
                if reply_bytes > RELAY_LIMIT_BYTES:  # R-PEER-2
                    raise GRPCError(
                        Status.INVALID_ARGUMENT,
                        f"image {index} of the upload is invalid: "
                        f"{too_large_to_relay(reply_bytes)}; the {index} image(s) before it "
                        "were accepted",
                    )
                await uploader.put(item.frame, item.encoded)
            index += 1
        await uploader.flush()  # the reply says: every image is in the hub
        await stream.send_message(Empty())
