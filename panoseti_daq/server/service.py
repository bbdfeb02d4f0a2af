"""The DaqData RPC handlers: thin grpclib handlers over the server core (spec §5 - §7).

Handlers always run on grpclib's asyncio loop; they create their own anyio primitives there
and reach the core only through its channels, `anyio.Event`s and the synchronous hub. The
StreamImages handler is the I/O shell of the hub's state machine (server/hub.py): it waits (for
the hub's wake-up or the time the state machine names), asks `Subscriber.poll(now)`, and sends
what it is given or ends the call with the status the reason maps to.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Collection
from typing import Any

import anyio
from grpclib import GRPCError
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Stream

from .._grpclib.private import FramedMessageReader, send_framed_messages
from ..config import HpIoConfig
from ..errors import CodecError, ImageError
from ..frames import PanoFrame
from ..messages import (
    SERVICE_NAME,
    SOURCE_METADATA_KEY,
    Empty,
    InitHpIoRequest,
    InitHpIoResponse,
    StreamImagesRequest,
)
from ..wire.codec import (
    RELAY_LIMIT_BYTES,
    StreamReply,
    UploadItem,
    decode_upload_item,
    encode_framed_stream_replies,
    encode_pano_image,
    overrun_notice,
    too_large_to_relay,
)
from .admission import Refusal, StreamGate, admit_hp_io, admit_stream
from .core import ServerCore
from .handlers import peer_address, read_request, remaining_s
from .hp_io_checks import hp_io_gate
from .hub import EndReason, Send, Subscriber, Subscription, Wait

log = logging.getLogger(__name__)

__all__ = ["DaqDataService"]

_NS = 1_000_000_000

_END_STATUS = {
    EndReason.RECONFIGURED: Status.CANCELLED,  # R-STREAM-13
    EndReason.SHUTDOWN: Status.UNAVAILABLE,  # R-STREAM-3
    EndReason.TOO_SLOW: Status.RESOURCE_EXHAUSTED,  # R-STREAM-11
    EndReason.IDLE: Status.DEADLINE_EXCEEDED,  # R-STREAM-12
    EndReason.SOURCE_FAILED: Status.UNAVAILABLE,  # R-SRC-1
}


def _invalid_upload(index: int, exc: Exception) -> GRPCError:
    return GRPCError(
        Status.INVALID_ARGUMENT,
        f"image {index} of the upload is invalid: {exc}; "
        f"the {index} image(s) before it were accepted",
    )


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

    def _stream_gate(self, peer_host: str) -> StreamGate:
        core, config = self.core, self.config
        return StreamGate(
            writer_busy=self._writers > 0,
            hp_io_valid=core.hp_io_valid,
            source_failure=core.source_failure,
            shutting_down=core.shutting_down,
            active_streams=core.active_streams,
            max_streams=config.max_concurrent_rpcs,
            peer_host=peer_host,
            peer_streams=self._streams_by_peer.get(peer_host, 0),
            streams_per_peer=config.streams_per_peer,
            max_interval_s=config.max_client_update_interval_seconds,
        )

    async def _wait_for_writer(self, stream: Stream) -> None:
        """R-STATE-2, R-STATE-3: wait while a writer checks its request or reconfigures, within
        the deadline."""
        with anyio.move_on_after(remaining_s(stream)):
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
        await read_request(stream, self.config.handshake_timeout_seconds)
        await stream.send_message(Empty())

    # -- StreamImages ----------------------------------------------------------------------
    async def stream_images(self, stream: Stream[StreamImagesRequest, StreamReply]) -> None:
        request = await read_request(stream, self.config.handshake_timeout_seconds)
        core = self.core
        peer = peer_address(stream, self.uds_path)
        peer_host = _peer_host(stream)
        while True:
            decision = admit_stream(request, self._stream_gate(peer_host))
            if isinstance(decision, Refusal):
                raise GRPCError(decision.status, decision.message)
            if isinstance(decision, Subscription):
                break
            await self._wait_for_writer(stream)
        subscription = decision
        bell = _Bell()
        subscriber = core.hub.subscribe(subscription, time.monotonic(), peer=peer, wake=bell.ring)
        bell.subscriber = subscriber
        self._streams_by_peer[peer_host] = self._streams_by_peer.get(peer_host, 0) + 1
        who = f"stream client {subscriber.client_id} ({peer})"
        # R-OPS-3: one line when a client connects, one when it goes, at info.
        log.info("%s connected: %s", who, subscription.label())
        how = "left"  # the client cancelled or its connection closed: the normal end
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
                how = f"ended by the server ({ended.message})"
            log.info(
                "%s disconnected: %s after %d frames sent, %d dropped",
                who,
                how,
                subscriber.sent,
                subscriber.dropped,
            )
        if ended is not None:
            raise GRPCError(_END_STATUS[ended.reason], ended.message)

    async def _send_frames(self, stream: Stream, subscriber: Subscriber, bell: _Bell) -> None:
        """Until the hub ends the subscriber: wait, ask the state machine, send."""
        name = self.config.server_name
        while True:
            bell.reset()
            decision = subscriber.poll(time.monotonic())
            if isinstance(decision, Send):
                frames = decision.frames
                # Every frame of the batch in one HTTP/2 write (grpclib writes once per
                # message, with no public call for several: _private.send_framed_messages).
                data = encode_framed_stream_replies(
                    [(entry.encoded, overrun_notice(dropped)) for entry, dropped in frames],
                    name,
                    time.time_ns(),
                )
                await send_framed_messages(stream, data, len(frames))
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
    async def init_hp_io(self, stream: Stream[InitHpIoRequest, InitHpIoResponse]) -> None:
        request = await read_request(stream, self.config.handshake_timeout_seconds)
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
        hp_io = HpIoConfig(
            data_dir=request.data_dir,
            update_interval_seconds=request.update_interval_seconds,
            force=request.force,
            simulate_daq=request.simulate_daq,
            module_ids=tuple(request.module_ids),
        )
        # File-system checks and a /proc scan: off the event loop.
        gate = await anyio.to_thread.run_sync(hp_io_gate, self.config, hp_io)
        lock = self.writer_lock
        holding = False
        try:
            while True:
                decision = admit_hp_io(
                    hp_io,
                    dataclasses.replace(
                        gate,
                        shutting_down=self.core.shutting_down,
                        holds_writer_lock=holding,
                        active_streams=self.core.active_streams,
                    ),
                )
                if isinstance(decision, Refusal):
                    raise GRPCError(decision.status, decision.message)
                if isinstance(decision, HpIoConfig):
                    break
                # R-STATE-2: one writer at a time; a second one waits within its deadline.
                with anyio.move_on_after(remaining_s(stream)) as scope:
                    await lock.acquire()
                if scope.cancelled_caught:
                    raise GRPCError(Status.UNAVAILABLE, "another InitHpIo is in progress")
                holding = True
            result = await self.core.submit(decision)
            # R-STATE-2, R-STATE-3: this call stays the writer until the controller is done,
            # also when its caller goes away meanwhile.
            await _outlast_cancellation(result.done)
        finally:
            if holding:
                lock.release()
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
        who = f"upload from {peer_address(stream, self.uds_path)}"
        log.info("%s connected", who)  # R-OPS-3
        how = "left"
        try:
            # Every message that has arrived in one step, decoded here
            # (_private.FramedMessageReader, which applies the guard's limits, R-PEER-1, R-PEER-5).
            async with FramedMessageReader(stream) as reader:
                while True:
                    try:
                        batch = await reader.read()
                    except CodecError as exc:
                        raise _invalid_upload(index, exc) from None
                    if not batch:
                        break
                    for data in batch:
                        accepted = self._accepted(index, data, valid)
                        if accepted is not None:
                            await uploader.put(*accepted)
                        index += 1
            await uploader.flush()  # the reply says: every image is in the hub
            await stream.send_message(Empty())
            how = "done"
        except GRPCError:  # a refused image, or the guard's limits (R-PEER-1)
            how = "refused"
            raise
        finally:
            log.info("%s disconnected: %s after %d images", who, how, index)

    def _accepted(
        self, index: int, data: bytes, valid: Collection[str]
    ) -> tuple[PanoFrame, bytes | None] | None:
        """The frame of upload request `index` and its received image bytes, to publish; None
        for a request without an image (skipped); GRPCError INVALID_ARGUMENT for an image this
        server refuses (R-UP-2, R-UP-3, R-PEER-2)."""
        try:
            item = decode_upload_item(data)
        except (CodecError, ImageError) as exc:
            raise _invalid_upload(index, exc) from None
        if item.frame is None:
            log.warning("UploadImages: request %d has no pano_image; skipped", index)
            return None
        if item.frame.product.name not in valid:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"image {index} of the upload is {item.frame.product.name}, "
                f"which this server does not serve (valid: {', '.join(sorted(valid))})",
            )
        reply_bytes = _reply_bytes(item, self.config.server_name)
        if reply_bytes > RELAY_LIMIT_BYTES:  # R-PEER-2
            raise _invalid_upload(index, ValueError(too_large_to_relay(reply_bytes)))
        return item.frame, item.encoded
