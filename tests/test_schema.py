"""The wire contract (R-WIRE-1, R-WIRE-2) and the generated code's drift check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from panoseti_daq.messages import DESCRIPTOR_POOL, SERVICE_NAME

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_FIELDS = {
    "PanoImage": {
        "type": (1, "TYPE_ENUM"),
        "header": (2, "TYPE_MESSAGE"),
        "image_array": (3, "TYPE_UINT32"),
        "shape": (4, "TYPE_UINT32"),
        "bytes_per_pixel": (5, "TYPE_INT32"),
        "file": (6, "TYPE_STRING"),
        "frame_number": (7, "TYPE_UINT32"),
        "module_id": (8, "TYPE_UINT32"),
    },
    "StreamImagesResponse": {
        "name": (1, "TYPE_STRING"),
        "timestamp": (2, "TYPE_MESSAGE"),
        "message": (3, "TYPE_STRING"),
        "pano_image": (4, "TYPE_MESSAGE"),
    },
    "StreamImagesRequest": {
        "stream_movie_data": (1, "TYPE_BOOL"),
        "stream_pulse_height_data": (2, "TYPE_BOOL"),
        "update_interval_seconds": (3, "TYPE_DOUBLE"),
        "module_ids": (4, "TYPE_UINT32"),
    },
    "InitHpIoRequest": {
        "data_dir": (1, "TYPE_STRING"),
        "update_interval_seconds": (2, "TYPE_DOUBLE"),
        "force": (3, "TYPE_BOOL"),
        "simulate_daq": (4, "TYPE_BOOL"),
        "module_ids": (6, "TYPE_UINT32"),
    },
    "InitHpIoResponse": {"success": (1, "TYPE_BOOL"), "error_message": (2, "TYPE_STRING")},
    "UploadImageRequest": {"pano_image": (1, "TYPE_MESSAGE")},
    "StreamHashpipeStatusRequest": {},
    "StreamHashpipeStatusResponse": {},
    "SetConfigurationRequest": {},
    "SetConfigurationResponse": {},
}


def test_messages_and_field_numbers():
    """R-WIRE-2: every message and field number of the original, in package daqdata."""
    from google.protobuf.descriptor import FieldDescriptor

    type_names = {v: k for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}
    for message, fields in EXPECTED_FIELDS.items():
        descriptor = DESCRIPTOR_POOL.FindMessageTypeByName(f"daqdata.{message}")
        got = {f.name: (f.number, type_names[f.type]) for f in descriptor.fields}
        assert got == fields, message
    enum = DESCRIPTOR_POOL.FindEnumTypeByName("daqdata.PanoImage.Type")
    assert {v.name: v.number for v in enum.values} == {
        "UNDEFINED": 0,
        "PULSE_HEIGHT": 1,
        "MOVIE": 2,
    }
    init = DESCRIPTOR_POOL.FindMessageTypeByName("daqdata.InitHpIoRequest")
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.DescriptorProto()
    init.CopyToProto(proto)
    assert [(r.start, r.end) for r in proto.reserved_range] == [(5, 6)]


def test_repeated_scalars_are_packed():
    """R-WIRE-2: image_array, shape and module_ids are packed (proto3 default)."""
    for message, field in [
        ("PanoImage", "image_array"),
        ("PanoImage", "shape"),
        ("StreamImagesRequest", "module_ids"),
    ]:
        descriptor = DESCRIPTOR_POOL.FindMessageTypeByName(f"daqdata.{message}")
        assert descriptor.fields_by_name[field].is_packed


def test_service_methods():
    """R-WIRE-1: the four methods with their streaming kinds and types."""
    service = DESCRIPTOR_POOL.FindServiceByName(SERVICE_NAME)
    got = {
        m.name: (
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming if hasattr(m, "client_streaming") else None,
        )
        for m in service.methods
    }
    assert got == {
        "StreamImages": ("daqdata.StreamImagesRequest", "daqdata.StreamImagesResponse", False),
        "InitHpIo": ("daqdata.InitHpIoRequest", "daqdata.InitHpIoResponse", False),
        "Ping": ("google.protobuf.Empty", "google.protobuf.Empty", False),
        "UploadImages": ("daqdata.UploadImageRequest", "google.protobuf.Empty", True),
    }


def test_generated_code_matches_schema():
    """The committed generated code is what `make schema` produces from schema/ (CI drift check)."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "generate.py"),
            "--check",
            str(ROOT / "schema" / "daq_data.proto"),
            str(ROOT / "schema" / "ublox_control.proto"),
            str(ROOT / "panoseti_daq" / "_generated"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
