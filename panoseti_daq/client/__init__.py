"""Clients of the DaqData service: async (asyncio and trio) and blocking.

`AioDaqDataClient` and `DaqDataClient` are the original's names, kept so that existing notebooks
keep working after changing the import.
"""

from ..frames import as_frame
from ..wire.codec import StreamReply
from .aio import AsyncDaqClient
from .stream import ImageStream
from .sync import BlockingImageStream, DaqClient
from .targets import DaqNode, load_daq_nodes

AioDaqDataClient = AsyncDaqClient
DaqDataClient = DaqClient

__all__ = [
    "AioDaqDataClient",
    "AsyncDaqClient",
    "BlockingImageStream",
    "DaqClient",
    "DaqDataClient",
    "DaqNode",
    "ImageStream",
    "StreamReply",
    "as_frame",
    "load_daq_nodes",
]
