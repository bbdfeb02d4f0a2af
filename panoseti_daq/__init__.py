"""panoseti_daq: the live window into PANOSETI DAQ data over gRPC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import pff
from .client import AioDaqDataClient, AsyncDaqClient, DaqClient, DaqDataClient
from .errors import CodecError, ConfigError, ImageError, PanosetiDaqError, PFFError, RpcError
from .frames import PanoFrame
from .products import PRODUCTS, DataProduct, ImageType, product_for, product_named
from .timestamps import FrameTime, frame_time, wr_to_unix_ns

if TYPE_CHECKING:
    from .ublox.client import BlockingUbloxClient, InitResult, UbloxClient
    from .ublox.records import UbloxMessage

__version__ = "0.1.0"

# The UbloxControl clients load pyubx2 (~0.2 s): imported on first use, not with the package.
_UBLOX = {
    "BlockingUbloxClient": "client",
    "InitResult": "client",
    "UbloxClient": "client",
    "UbloxMessage": "records",
}


def __getattr__(name: str) -> Any:
    module = _UBLOX.get(name)
    if module is None:
        raise AttributeError(f"module 'panoseti_daq' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".ublox.{module}", __name__), name)


__all__ = [
    "PRODUCTS",
    "AioDaqDataClient",
    "AsyncDaqClient",
    "BlockingUbloxClient",
    "CodecError",
    "ConfigError",
    "DaqClient",
    "DaqDataClient",
    "DataProduct",
    "FrameTime",
    "ImageError",
    "ImageType",
    "InitResult",
    "PFFError",
    "PanoFrame",
    "PanosetiDaqError",
    "RpcError",
    "UbloxClient",
    "UbloxMessage",
    "__version__",
    "frame_time",
    "pff",
    "product_for",
    "product_named",
    "wr_to_unix_ns",
]
