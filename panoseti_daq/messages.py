"""The typed DaqData messages: betterproto2 dataclasses generated from schema/daq_data.proto.

Import messages from here, never from the generated package directly.
"""

from __future__ import annotations

from ._generated.daqdata import (
    InitHpIoRequest,
    InitHpIoResponse,
    PanoImage,
    PanoImageType,
    SetConfigurationRequest,
    SetConfigurationResponse,
    StreamHashpipeStatusRequest,
    StreamHashpipeStatusResponse,
    StreamImagesRequest,
    StreamImagesResponse,
    UploadImageRequest,
)
from ._generated.google.protobuf import Empty, ListValue, NullValue, Struct, Timestamp, Value
from ._generated.google_proto_descriptor_pool import default_google_proto_descriptor_pool

SERVICE_NAME = "daqdata.DaqData"
# gRPC metadata with which an uploader in the server's own process (the rpc simulation) names
# its frames' source; any other upload is counted as an upload.
SOURCE_METADATA_KEY = "x-panoseti-frame-source"
DESCRIPTOR_POOL = default_google_proto_descriptor_pool

__all__ = [
    "DESCRIPTOR_POOL",
    "SERVICE_NAME",
    "SOURCE_METADATA_KEY",
    "Empty",
    "InitHpIoRequest",
    "InitHpIoResponse",
    "ListValue",
    "NullValue",
    "PanoImage",
    "PanoImageType",
    "SetConfigurationRequest",
    "SetConfigurationResponse",
    "StreamHashpipeStatusRequest",
    "StreamHashpipeStatusResponse",
    "StreamImagesRequest",
    "StreamImagesResponse",
    "Struct",
    "Timestamp",
    "UploadImageRequest",
    "Value",
]
