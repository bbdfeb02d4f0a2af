"""panoseti_daq: the live window into PANOSETI DAQ data over gRPC."""

from __future__ import annotations

from . import pff
from .client import AioDaqDataClient, AsyncDaqClient, DaqClient, DaqDataClient
from .errors import CodecError, ConfigError, ImageError, PanosetiDaqError, PFFError, RpcError
from .frames import PanoFrame
from .products import PRODUCTS, DataProduct, ImageType, product_for, product_named
from .timestamps import FrameTime, frame_time, wr_to_unix_ns

__version__ = "0.1.0"

__all__ = [
    "PRODUCTS",
    "AioDaqDataClient",
    "AsyncDaqClient",
    "CodecError",
    "ConfigError",
    "DaqClient",
    "DaqDataClient",
    "DataProduct",
    "FrameTime",
    "ImageError",
    "ImageType",
    "PFFError",
    "PanoFrame",
    "PanosetiDaqError",
    "RpcError",
    "__version__",
    "frame_time",
    "pff",
    "product_for",
    "product_named",
    "wr_to_unix_ns",
]
