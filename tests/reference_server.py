"""A grpcio DaqData server built from schema/: the interop reference for our clients.

Test and benchmark use only. It implements DaqData minimally but correctly with protobuf's own
messages (no code of ours on the wire path): Ping; InitHpIo answers success and records the
request; StreamImages sends the given frames that match the request's types and modules
(R-STREAM-1, -6, -7), then holds the stream open until the client goes away (or ends it, if
`hold_open=False`); UploadImages collects the uploaded images.

    with ReferenceServer([frame, ...]) as server:
        ... connect to f"127.0.0.1:{server.port}" ...
        images = server.wait_for_uploads(3)

It is a threaded `grpc.server`, so it runs beside any event loop (asyncio or trio) in the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
from google.protobuf import empty_pb2, json_format, struct_pb2

from panoseti_daq import PanoFrame, product_for
from panoseti_daq.frames import plain_header
from tests.reference import modules

pb2, pb2_grpc = modules()

__all__ = ["ReferenceServer", "frame_of_message", "message_of_frame", "pb2", "pb2_grpc"]


def message_of_frame(frame: PanoFrame) -> Any:
    """The protobuf (reference) PanoImage of a frame, built without our codec."""
    header = struct_pb2.Struct()
    header.update(plain_header(frame.header))
    return pb2.PanoImage(
        type=int(frame.type),
        header=header,
        image_array=frame.wire_pixels().tolist(),
        shape=list(frame.shape),
        bytes_per_pixel=frame.bytes_per_pixel,
        file=frame.file,
        frame_number=frame.frame_number,
        module_id=frame.module_id,
    )


def frame_of_message(image: Any) -> PanoFrame:
    """A PanoFrame from a protobuf (reference) PanoImage, parsed without our codec."""
    product = product_for(image.type, list(image.shape), image.bytes_per_pixel)
    return PanoFrame.create(
        product,
        json_format.MessageToDict(image.header),
        np.asarray(image.image_array, dtype=np.int64),
        image.module_id,
        image.file,
        image.frame_number,
    )


class ReferenceDaqData(pb2_grpc.DaqDataServicer):
    """The servicer: state shared with the test through a condition variable."""

    def __init__(self, frames: Iterable[PanoFrame], hold_open: bool) -> None:
        self.images = [message_of_frame(frame) for frame in frames]
        self.hold_open = hold_open
        self.uploaded: list[Any] = []
        self.init_requests: list[Any] = []
        self.stream_requests: list[Any] = []
        self.active_streams = 0
        self.changed = threading.Condition()

    def _note(self, update: Any) -> None:
        with self.changed:
            update()
            self.changed.notify_all()

    def Ping(self, request: Any, context: Any) -> Any:
        return empty_pb2.Empty()

    def InitHpIo(self, request: Any, context: Any) -> Any:
        self._note(lambda: self.init_requests.append(request))
        return pb2.InitHpIoResponse(success=True)

    def StreamImages(self, request: Any, context: Any) -> Any:
        if not (request.stream_movie_data or request.stream_pulse_height_data):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no image type requested")
        wanted = set()
        if request.stream_movie_data:
            wanted.add(pb2.PanoImage.MOVIE)
        if request.stream_pulse_height_data:
            wanted.add(pb2.PanoImage.PULSE_HEIGHT)
        modules = set(request.module_ids)
        gone = threading.Event()
        context.add_callback(gone.set)
        self._note(lambda: self.stream_requests.append(request))
        self._note(lambda: setattr(self, "active_streams", self.active_streams + 1))
        try:
            for image in self.images:
                if image.type in wanted and (not modules or image.module_id in modules):
                    response = pb2.StreamImagesResponse(name="reference", pano_image=image)
                    response.timestamp.GetCurrentTime()
                    yield response
            if self.hold_open:
                gone.wait()
        finally:
            self._note(lambda: setattr(self, "active_streams", self.active_streams - 1))

    def UploadImages(self, request_iterator: Any, context: Any) -> Any:
        for request in request_iterator:
            if request.HasField("pano_image"):
                self._note(lambda r=request: self.uploaded.append(r.pano_image))
        return empty_pb2.Empty()


class ReferenceServer:
    """A threaded grpcio DaqData server on a free loopback port (and a Unix socket if given)."""

    def __init__(
        self,
        frames: Iterable[PanoFrame] = (),
        *,
        hold_open: bool = True,
        uds_path: str | None = None,
        max_workers: int = 16,
    ) -> None:
        self.servicer = ReferenceDaqData(frames, hold_open)
        self.uds_path = uds_path
        self._server = grpc.server(ThreadPoolExecutor(max_workers=max_workers))
        pb2_grpc.add_DaqDataServicer_to_server(self.servicer, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        if uds_path:
            self._server.add_insecure_port(f"unix://{uds_path}")

    def __enter__(self) -> ReferenceServer:
        self._server.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def stop(self, grace_s: float | None = None) -> None:
        """Stop serving; active streams end (CANCELLED/UNAVAILABLE at the client)."""
        self._server.stop(grace_s).wait()

    def wait_for(self, condition: Any, timeout_s: float = 10.0) -> None:
        """Block until `condition(servicer)` holds; TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self.servicer.changed:
            while not condition(self.servicer):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("reference server: condition not reached")
                self.servicer.changed.wait(left)

    def wait_for_uploads(self, count: int, timeout_s: float = 10.0) -> list[Any]:
        """The first `count` uploaded PanoImages (protobuf messages), once they arrived."""
        self.wait_for(lambda s: len(s.uploaded) >= count, timeout_s)
        return list(self.servicer.uploaded[:count])
