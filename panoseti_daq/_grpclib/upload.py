"""One UploadImages call on a grpclib channel: the client's uploads and the rpc simulation's."""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping

from grpclib.client import Channel
from grpclib.const import Cardinality

from ..frames import PanoFrame
from ..messages import SERVICE_NAME, Empty
from ..wire.codec import UploadItem

__all__ = ["upload_frames"]

UPLOAD_IMAGES = f"/{SERVICE_NAME}/UploadImages"


async def upload_frames(
    channel: Channel, frames: AsyncIterable[PanoFrame], metadata: Mapping[str, str] | None = None
) -> None:
    """Send every frame in one UploadImages call on `channel` (which uses the DaqCodec), then
    wait for the server's answer: once it arrives, every frame is in the server's hub. Runs on
    grpclib's loop; grpclib's errors pass through."""
    async with channel.request(
        UPLOAD_IMAGES,
        Cardinality.STREAM_UNARY,
        UploadItem,
        Empty,
        metadata=dict(metadata) if metadata else None,
    ) as stream:
        async for frame in frames:
            await stream.send_message(UploadItem(frame))
        await stream.end()
        await stream.recv_message()
