"""Clients of the DaqData service: async (asyncio and trio) and blocking."""

from .aio import AsyncDaqClient, ImageStream, as_frame
from .sync import DaqClient
from .targets import DaqNode, load_daq_nodes

AioDaqDataClient = AsyncDaqClient
DaqDataClient = DaqClient

__all__ = [
    "AioDaqDataClient",
    "AsyncDaqClient",
    "DaqClient",
    "DaqDataClient",
    "DaqNode",
    "ImageStream",
    "as_frame",
    "load_daq_nodes",
]
