"""panoseti_daq: the live window into PANOSETI DAQ data over gRPC."""

from __future__ import annotations

from .errors import CodecError, ConfigError, ImageError, PanosetiDaqError, PFFError, RpcError
from .frames import PanoFrame
from .products import PRODUCTS, DataProduct, ImageType, product_for, product_named
from .timestamps import FrameTime, frame_time, wr_to_unix_ns

__version__ = "0.1.0"

__all__ = [
    "PRODUCTS",
    "CodecError",
    "ConfigError",
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
    "product_for",
    "product_named",
    "wr_to_unix_ns",
]
