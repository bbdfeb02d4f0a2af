"""The UbloxControl RPC handlers: thin grpclib handlers over the controller (spec sections 4-6).

Handlers run on grpclib's loop, as does the controller; a `UbloxError` from it becomes the
call's status with its details (R-UBX-WIRE-4). Responses are built here from what the port
owner read: the whole frame, pyubx2's fields and the host time of the read (R-UBX-CAP-4/5).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import anyio
from grpclib import GRPCError
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Stream

from .._generated.google.protobuf import Struct
from .._generated.ubloxcontrol import (
    CaptureUbloxRequest,
    CaptureUbloxResponse,
    CaptureUbloxResponseType,
    InitF9TRequest,
    InitF9TResponse,
    InitF9TResponseInitStatus,
    PollRequest,
    PollResponse,
)
from ..errors import CodecError
from ..server.handlers import peer_address, read_request, remaining_s
from .controller import PollEntry, UbloxController
from .errors import UbloxError
from .fanout import Delivery
from .protocol import Received, parsed_data
from .records import utc_datetime

log = logging.getLogger(__name__)

__all__ = ["SERVICE_NAME", "UbloxControlService"]

SERVICE_NAME = "ubloxcontrol.UbloxControl"
# Request sizes: the shipped 40-key config is ~4 KB and every key of the database ~70 KB; 64
# patterns of 256 characters ~17 KB. betterproto2 decodes ~3 µs a byte on the event loop, so a
# 4 MB request (grpclib's limit) would stall every stream of the server for seconds.
MAX_INIT_REQUEST_BYTES = 128 * 1024
MAX_PATTERN_REQUEST_BYTES = 32 * 1024


class _Bounded:
    """A request type whose decoding refuses more than `limit` bytes before parsing them (the
    codec calls `FromString`; an error becomes INVALID_ARGUMENT in `read_request`)."""

    def __init__(self, message_type: Any, limit: int) -> None:
        self.message_type = message_type
        self.limit = limit
        self.__name__ = message_type.__name__

    def FromString(self, data: bytes) -> Any:  # the name the codec calls
        if len(data) > self.limit:
            raise CodecError(f"request of {len(data)} bytes; at most {self.limit} are accepted")
        return self.message_type.FromString(data)


def _status(error: UbloxError) -> GRPCError:
    return GRPCError(Status[error.status], error.details)


def data_response(received: Received, message: str = "") -> CaptureUbloxResponse:
    """R-UBX-CAP-4/5: a DATA response for one frame, stamped with the time it was read."""
    return CaptureUbloxResponse(
        type=CaptureUbloxResponseType.DATA,
        name=received.name,
        parsed_data=Struct.from_dict(parsed_data(received.message)),
        pkt_unix_timestamp=utc_datetime(received.t_ns),
        message=message,
        payload=received.frame,
    )


class EncodedResponse:
    """A CaptureUbloxResponse already encoded: the codec sends its bytes as they are."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # the name the codec calls
        return self.data


class _Encodings:
    """Each message is encoded once, however many streams send it (betterproto2 spends ~0.1 ms
    a field on a TIM-TP's Struct): the encodings of the newest `size` messages, by identity."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[Received, bytes]] = OrderedDict()

    def get(self, received: Received) -> bytes:
        entry = self._entries.get(id(received))
        if entry is not None and entry[0] is received:
            return entry[1]
        data = bytes(data_response(received))
        self._entries[id(received)] = (received, data)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return data


def error_response(name: str, message: str) -> CaptureUbloxResponse:
    return CaptureUbloxResponse(type=CaptureUbloxResponseType.ERROR, name=name, message=message)


def _poll_response(entry: PollEntry) -> CaptureUbloxResponse:
    if entry.answer is None:
        return error_response(entry.name, entry.problem)
    return data_response(entry.answer)


class UbloxControlService:
    """grpclib servable implementing ubloxcontrol.UbloxControl."""

    def __init__(self, controller: UbloxController) -> None:
        self.controller = controller
        self._encodings = _Encodings()

    def __mapping__(self) -> dict[str, Handler]:
        prefix = f"/{SERVICE_NAME}"
        return {
            f"{prefix}/InitF9t": Handler(
                self.init_f9t,
                Cardinality.UNARY_UNARY,
                _Bounded(InitF9TRequest, MAX_INIT_REQUEST_BYTES),
                InitF9TResponse,
            ),
            f"{prefix}/PollMessage": Handler(
                self.poll_message,
                Cardinality.UNARY_UNARY,
                _Bounded(PollRequest, MAX_PATTERN_REQUEST_BYTES),
                PollResponse,
            ),
            f"{prefix}/CaptureUblox": Handler(
                self.capture_ublox,
                Cardinality.UNARY_STREAM,
                _Bounded(CaptureUbloxRequest, MAX_PATTERN_REQUEST_BYTES),
                EncodedResponse,
            ),
        }

    async def init_f9t(self, stream: Stream[InitF9TRequest, InitF9TResponse]) -> None:
        request = await read_request(stream)
        f9t_config = request.f9t_config.to_dict() if request.f9t_config is not None else {}
        peer = peer_address(stream)
        try:
            result = await self.controller.init_f9t(
                f9t_config, request.force_init, peer, remaining_s(stream)
            )
        except UbloxError as exc:
            log.info("InitF9t from %s: %s", peer, exc)
            raise _status(exc) from None
        await stream.send_message(
            InitF9TResponse(
                init_status=InitF9TResponseInitStatus.SUCCESS,
                message=result.message,
                f9t_config=Struct.from_dict(result.accepted_config),
            )
        )

    async def poll_message(self, stream: Stream[PollRequest, PollResponse]) -> None:
        request = await read_request(stream)
        try:
            entries = await self.controller.poll(list(request.patterns), remaining_s(stream))
        except UbloxError as exc:
            raise _status(exc) from None
        await stream.send_message(PollResponse(gnss_packet=[_poll_response(e) for e in entries]))

    async def capture_ublox(self, stream: Stream[CaptureUbloxRequest, EncodedResponse]) -> None:
        request = await read_request(stream)
        news = anyio.Event()

        def wake() -> None:
            news.set()

        try:
            subscriber = await self.controller.subscribe(
                list(request.patterns), wake, remaining_s(stream)
            )
        except UbloxError as exc:
            raise _status(exc) from None
        try:
            # Headers now: the client knows it is subscribed before the first message.
            await stream.send_initial_metadata()
            while True:
                if news.is_set():
                    news = anyio.Event()
                items = subscriber.take()
                for item in items:
                    if isinstance(item, Delivery) and not item.dropped:
                        data = self._encodings.get(item.received)
                    elif isinstance(item, Delivery):
                        notice = f"dropped {item.dropped} messages"
                        data = bytes(data_response(item.received, notice))
                    else:
                        data = bytes(error_response("", item.message))
                    await stream.send_message(EncodedResponse(data))
                if subscriber.ended is not None:
                    raise GRPCError(Status[subscriber.ended.status], subscriber.ended.details)
                if not items:
                    await news.wait()
        finally:
            self.controller.unsubscribe(subscriber)
