"""A grpcio client built from schema/ against our server (R-WIRE-1 .. R-WIRE-5).

The server runs as `python -m panoseti_daq.serve` (trio backend) in a subprocess; the client
is the protobuf/grpcio reference implementation generated from schema/daq_data.proto.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import empty_pb2, struct_pb2

from panoseti_daq._bundled import NGC7331_PH256
from tests.helpers import REAL_PH, server_process
from tests.reference import modules

pb2, pb2_grpc = modules()


@pytest.fixture(scope="module")
def stub():
    tmp = Path(tempfile.mkdtemp(prefix="pdaqio", dir="/tmp"))
    run = tmp / "data" / "module_1" / "obs_IO"
    run.mkdir(parents=True)
    (run / "module_1.daq-active").touch()
    with server_process(tmp) as (_, port, _uds):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield pb2_grpc.DaqDataStub(channel), tmp
        channel.close()


def reference_image(frame, module_id):
    header = struct_pb2.Struct()
    header.update(dict(frame.header))
    return pb2.PanoImage(
        type=pb2.PanoImage.PULSE_HEIGHT,
        header=header,
        image_array=frame.wire_pixels().tolist(),
        shape=[16, 16],
        bytes_per_pixel=2,
        file=NGC7331_PH256.name,
        frame_number=frame.frame_number,
        module_id=module_id,
    )


def test_ping(stub):
    """R-PING-1 through grpcio."""
    assert stub[0].Ping(empty_pb2.Empty(), timeout=5) == empty_pb2.Empty()


def test_statuses_before_init(stub):
    """R-STREAM-1, R-STREAM-2, R-INIT-1, R-INIT-2, R-INIT-3 as a grpcio client sees them."""
    client, tmp = stub
    cases = [
        (
            lambda: next(client.StreamImages(pb2.StreamImagesRequest(), timeout=5)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: client.InitHpIo(
                pb2.InitHpIoRequest(data_dir=str(tmp / "data"), update_interval_seconds=0.0001),
                timeout=5,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: client.InitHpIo(
                pb2.InitHpIoRequest(data_dir=str(tmp / "nope"), update_interval_seconds=0.1),
                timeout=5,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: client.InitHpIo(
                pb2.InitHpIoRequest(data_dir="/usr", update_interval_seconds=0.1), timeout=5
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    ]
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == code
        assert info.value.details()


def test_stream_and_upload_round_trip(stub):
    """R-UP-1, R-STREAM-10, R-WIRE-3, R-WIRE-4: grpcio uploads, grpcio streams, same pixels."""
    client, tmp = stub
    reply = client.InitHpIo(
        pb2.InitHpIoRequest(data_dir=str(tmp / "data"), update_interval_seconds=0.1, force=True),
        timeout=15,
    )
    assert reply.success, reply.error_message
    stream = client.StreamImages(
        pb2.StreamImagesRequest(stream_pulse_height_data=True, update_interval_seconds=0.0),
        timeout=30,
    )
    stream.initial_metadata()  # headers arrive once the server has subscribed us
    frames = REAL_PH[:20]
    requests = (pb2.UploadImageRequest(pano_image=reference_image(f, 7)) for f in frames)
    assert client.UploadImages(requests, timeout=15) == empty_pb2.Empty()
    got = list(itertools.islice(stream, len(frames)))
    stream.cancel()
    assert [r.pano_image.frame_number for r in got] == [f.frame_number for f in frames]
    for response, frame in zip(got, frames, strict=True):
        assert response.name == "subprocess-node"
        assert response.timestamp.seconds > 1_700_000_000
        image = response.pano_image
        assert image.module_id == 7 and image.type == pb2.PanoImage.PULSE_HEIGHT
        pixels = np.array(image.image_array, dtype=np.uint32).astype(np.uint16).view(np.int16)
        np.testing.assert_array_equal(pixels.reshape(16, 16), frame.pixels)
        assert image.header["pkt_nsec"] == frame.header["pkt_nsec"]


def test_invalid_upload_names_the_index(stub):
    """R-UP-3 through grpcio: the bad image's index is in the details."""
    client, _ = stub
    good = reference_image(REAL_PH[0], 3)
    bad = pb2.PanoImage(
        type=pb2.PanoImage.MOVIE, shape=[32, 32], bytes_per_pixel=2, image_array=[1] * 10
    )
    requests = [pb2.UploadImageRequest(pano_image=good)] * 2 + [
        pb2.UploadImageRequest(pano_image=bad)
    ]
    with pytest.raises(grpc.RpcError) as info:
        client.UploadImages(iter(requests), timeout=15)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 2" in info.value.details()
