"""The DaqData RPC handlers: thin grpclib handlers over the server core (spec §5 - §7).

Handlers always run on grpclib's asyncio loop; they create their own anyio primitives there
and reach the core only through its channels, `anyio.Event`s and the synchronous hub.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import struct
import time
from pathlib import Path
from typing import Any

import anyio
from grpclib import GRPCError
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Stream

from ..codec import StreamReply, UploadItem, encode_stream_reply
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
from .hub import SubscriberEnded, Subscription, valid_interval
from .scanner import daq_is_active

log = logging.getLogger(__name__)

__all__ = ["DaqDataService"]

_NS = 1_000_000_000


# grpclib cancels a handler when the caller's deadline expires and answers DEADLINE_EXCEEDED
# itself. A handler waiting for a writer stops this much earlier, so that the caller learns why
# (UNAVAILABLE, R-STATE-2, R-STATE-3) instead of racing grpclib's timer.
DEADLINE_MARGIN_S = 0.05


def _remaining_s(stream: Stream) -> float:
    """Seconds a handler may wait within the caller's deadline; infinity when it set none."""
    if stream.deadline is None:
        return math.inf
    return max(0.0, stream.deadline.time_remaining() - DEADLINE_MARGIN_S)


async def _request(stream: Stream) -> Any:
    """The request of a unary-request RPC; malformed bytes are INVALID_ARGUMENT (R-WIRE-5)."""
    try:
        request = await stream.recv_message()
    except CodecError as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, f"malformed request: {exc}") from None
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "no request message")
    return request


_MESSAGE_PREFIX = struct.Struct(">BI")  # gRPC framing: not compressed, length


async def _send_batch(stream: Stream, replies: list[StreamReply]) -> None:
    """Send replies as gRPC messages in one HTTP/2 write, not one write each.

    gRPC frames messages independently of HTTP/2 DATA frames, so several messages may share one;
    grpclib's `send_message` writes to the socket once per message, a system call and an h2
    frame each. This does what it does for a batch: frame, send (grpclib's protocol stream
    splits the data by frame size and flow-control window, and waits when the window is
    closed), count. It skips grpclib's SendMessage event, for which this server registers no
    listener. Initial metadata must have been sent.
    """
    if len(replies) == 1:
        await stream.send_message(replies[0])
        return
    pack = _MESSAGE_PREFIX.pack
    parts = []
    for reply in replies:
        message = encode_stream_reply(reply)
        parts += (pack(0, len(message)), message)
    await stream._stream.send_data(b"".join(parts))
    stream._send_message_done = True
    stream._messages_sent += len(replies)
    connection = stream._stream.connection
    connection.messages_sent += len(replies)
    connection.last_message_sent = time.monotonic()


def _within(path: Path, roots: tuple[Path, ...]) -> bool:
    resolved = path.resolve()
    return any(resolved == root.resolve() or root.resolve() in resolved.parents for root in roots)


class DaqDataService:
    """grpclib servable implementing daqdata.DaqData."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self.config = core.config
        self._writer_lock: anyio.Lock | None = None

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
        """R-STATE-2, R-STATE-3: wait while a writer reconfigures, within the deadline."""
        if not self.writer_lock.locked():
            return
        with anyio.move_on_after(_remaining_s(stream)):
            async with self.writer_lock:
                return
        raise GRPCError(
            Status.UNAVAILABLE, "hp_io is being reconfigured and the deadline expired waiting"
        )

    # -- Ping ------------------------------------------------------------------------------
    async def ping(self, stream: Stream[Empty, Empty]) -> None:
        """R-PING-1: answer whenever the server runs."""
        await _request(stream)
        await stream.send_message(Empty())

    # -- StreamImages ----------------------------------------------------------------------
    async def stream_images(self, stream: Stream[StreamImagesRequest, StreamReply]) -> None:
        request = await _request(stream)
        core, config = self.core, self.config
        # R-STREAM-1 .. R-STREAM-5, in this order.
        if not (request.stream_movie_data or request.stream_pulse_height_data):
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                "stream_movie_data and stream_pulse_height_data are both false: nothing to stream",
            )
        await self._wait_for_writer(stream)
        if not core.hp_io_valid:
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
        core.active_streams += 1
        subscriber = core.hub.subscribe(
            subscription, config.max_read_queue_size, config.max_reader_enqueue_timeouts
        )
        try:
            # Headers now: the client knows it is subscribed before the first frame.
            await stream.send_initial_metadata()
            await self._send_frames(stream, subscriber)
        except SubscriberEnded as ended:
            raise GRPCError(ended.status, ended.message) from None
        finally:
            core.hub.unsubscribe(subscriber)
            core.active_streams -= 1

    async def _send_frames(self, stream: Stream, subscriber) -> None:
        config = self.config
        name = config.server_name
        interval_s = subscriber.subscription.interval_s
        dequeue_timeouts = 0
        next_send = anyio.current_time()
        while True:
            if interval_s > 0:
                await anyio.sleep_until(next_send)  # R-STREAM-9: at most once per interval
            batch = await subscriber.next_batch(config.reader_timeout)
            if not batch:
                # R-STREAM-12: a dequeue timeout; enough in a row end the stream.
                dequeue_timeouts += 1
                if dequeue_timeouts >= config.max_reader_dequeue_timeouts:
                    waited = config.reader_timeout * dequeue_timeouts
                    raise SubscriberEnded(
                        Status.DEADLINE_EXCEEDED, f"no data for {waited:g} s: stream ended"
                    )
                continue
            dequeue_timeouts = 0
            next_send = anyio.current_time() + interval_s
            now_ns = time.time_ns()
            await _send_batch(
                stream,
                [StreamReply(e.frame, name, now_ns, "", encoded_image=e.encoded) for e in batch],
            )
            subscriber.sent += len(batch)

    # -- InitHpIo --------------------------------------------------------------------------
    def _check_hp_io_request(self, request: InitHpIoRequest) -> HpIoConfig:
        """R-INIT-1 .. R-INIT-4: the request's own checks, before any lock is taken."""
        config = self.config
        if not interval_ok(
            request.update_interval_seconds, config.min_hp_io_update_interval_seconds
        ):
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"update_interval_seconds must be >= {config.min_hp_io_update_interval_seconds:g}"
                f", not {request.update_interval_seconds}",
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
        data_dir = Path(request.data_dir).expanduser() if request.data_dir else None
        if data_dir is None or not data_dir.is_dir():
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"data_dir {request.data_dir!r} does not exist"
            )
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
        request = await _request(stream)
        hp_io = self._check_hp_io_request(request)
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
            with anyio.CancelScope(shield=True):
                result = await core.reconfigure(hp_io)
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
        uploader = self.core.uploader()
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
                await uploader.put(item.frame, item.encoded)
            index += 1
        await uploader.flush()  # the reply says: every image is in the hub
        await stream.send_message(Empty())
