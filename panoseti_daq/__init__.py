"""panoseti_daq: the live window into PANOSETI DAQ data over gRPC.

The data model (frames, products, timestamps, PFF files, errors) is imported with the package;
the clients (which load grpclib, anyio and, for UbloxControl, pyubx2) on first use, so that
`import panoseti_daq.pff` or a viewer tool loads no network code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import pff
from .errors import CodecError, ConfigError, ImageError, PanosetiDaqError, PFFError, RpcError
from .frames import PanoFrame
from .products import PRODUCTS, DataProduct, ImageType, product_for, product_named
from .timestamps import FrameTime, frame_time, wr_to_unix_ns

if TYPE_CHECKING:
    from .client import AioDaqDataClient, AsyncDaqClient, DaqClient, DaqDataClient
    from .ublox.client import BlockingUbloxClient, InitResult, UbloxClient
    from .ublox.records import UbloxMessage

__version__ = "0.1.0"

# Imported on first use, not with the package: the DaqData clients load grpclib and anyio, the
# UbloxControl ones pyubx2 too (~0.2 s).
_LAZY = {
    "AioDaqDataClient": "client",
    "AsyncDaqClient": "client",
    "DaqClient": "client",
    "DaqDataClient": "client",
    "BlockingUbloxClient": "ublox.client",
    "InitResult": "ublox.client",
    "UbloxClient": "ublox.client",
    "UbloxMessage": "ublox.records",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'panoseti_daq' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # once found, a plain attribute
    return value


def __dir__() -> list[str]:
    """The lazy names too, for tab completion (Jupyter, IPython)."""
    return sorted(set(globals()) | set(_LAZY))


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
