"""A minimal grpcio DaqData server: the reference the benchmarks measure ours against.

It does what the original service does on the hot path, with protobuf's C codec: UploadImages
puts each image into every StreamImages subscriber's bounded asyncio queue (dropping for a full
queue), and each subscriber sends what its queue holds. Benchmark use only.

    python -m benchmarks._reference_server --port N
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.reference import modules

pb2, pb2_grpc = modules()
from google.protobuf import empty_pb2  # noqa: E402


class ReferenceDaqData(pb2_grpc.DaqDataServicer):
    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self.subscribers: set[asyncio.Queue] = set()

    async def Ping(self, request, context):
        return empty_pb2.Empty()

    async def InitHpIo(self, request, context):
        return pb2.InitHpIoResponse(success=True)

    async def UploadImages(self, request_iterator, context):
        async for request in request_iterator:
            for queue in self.subscribers:
                if not queue.full():
                    queue.put_nowait(request.pano_image)
        return empty_pb2.Empty()

    async def StreamImages(self, request, context):
        queue: asyncio.Queue = asyncio.Queue(self.queue_size)
        self.subscribers.add(queue)
        await context.send_initial_metadata(())
        try:
            while True:
                image = await queue.get()
                yield pb2.StreamImagesResponse(name="reference", pano_image=image)
        finally:
            self.subscribers.discard(queue)


async def serve(port: int, queue_size: int) -> None:
    server = grpc.aio.server()
    pb2_grpc.add_DaqDataServicer_to_server(ReferenceDaqData(queue_size), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queue-size", type=int, default=5000)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C is how it is stopped
        asyncio.run(serve(args.port, args.queue_size))


if __name__ == "__main__":
    main()
