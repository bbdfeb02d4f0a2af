"""A grpcio client built from schema/ against our server (R-WIRE-1 .. R-WIRE-5).

The server runs as `python -m panoseti_daq.serve` (trio backend) in a subprocess; the client
is the protobuf/grpcio reference implementation generated from schema/daq_data.proto.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import empty_pb2, struct_pb2

from panoseti_daq._bundled import NGC7331_PH256
from tests.helpers import REAL_PH, server_process
from tests.reference import modules

# A server process for the module, grpcio clients in subprocesses.
pytestmark = pytest.mark.timeout(30)

pb2, pb2_grpc = modules()


@pytest.fixture(scope="module")
def stub():
    with tempfile.TemporaryDirectory(prefix="pdaqio", dir="/tmp") as name:
        tmp = Path(name)
        run = tmp / "data" / "module_1" / "obs_IO"
        run.mkdir(parents=True)
        (run / "module_1.daq-active").touch()
        with server_process(tmp) as (_, port, _uds):
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            client = pb2_grpc.DaqDataStub(channel)
            client.target = f"127.0.0.1:{port}"
            yield client, tmp
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


# -- every rule a client can observe, through the reference client (issue 17 item 2) --------
# Pixels and messages are built and checked here with protobuf and numpy alone, not with our
# codec, so that a bug our encoder and decoder share cannot pass.

PRODUCTS = {  # name: (type, rows, cols, bytes per pixel, numpy dtype)
    "img16": (pb2.PanoImage.MOVIE, 32, 32, 2, np.uint16),
    "img8": (pb2.PanoImage.MOVIE, 32, 32, 1, np.uint8),
    "ph256": (pb2.PanoImage.PULSE_HEIGHT, 16, 16, 2, np.int16),
    "ph1024": (pb2.PanoImage.PULSE_HEIGHT, 32, 32, 2, np.int16),
}


def pixels_of(name: str, number: int) -> np.ndarray:
    _type, rows, cols, _bpp, dtype = PRODUCTS[name]
    info = np.iinfo(dtype)
    values = np.random.default_rng(number).integers(info.min, info.max + 1, rows * cols)
    return values.astype(dtype).reshape(rows, cols)


def image(name: str, module_id: int, number: int) -> pb2.PanoImage:
    """A reference PanoImage: R-WIRE-3 bit patterns (65535 for -1), row-major."""
    kind, rows, cols, bpp, _dtype = PRODUCTS[name]
    header = struct_pb2.Struct()
    header.update({"pkt_num": number, "tv_sec": 1721882092, "quabo_num": 0})
    patterns = pixels_of(name, number).astype(np.int64).ravel() & (0xFF if bpp == 1 else 0xFFFF)
    return pb2.PanoImage(
        type=kind,
        header=header,
        image_array=patterns.tolist(),
        shape=[rows, cols],
        bytes_per_pixel=bpp,
        file=f"{name}.pff",
        frame_number=number,
        module_id=module_id,
    )


def upload_images(client, images) -> None:
    requests = (pb2.UploadImageRequest(pano_image=i) for i in images)
    assert client.UploadImages(requests, timeout=15) == empty_pb2.Empty()


def subscribe(client, movie=True, ph=True, interval=0.0, module_ids=()):
    stream = client.StreamImages(
        pb2.StreamImagesRequest(
            stream_movie_data=movie,
            stream_pulse_height_data=ph,
            update_interval_seconds=interval,
            module_ids=list(module_ids),
        ),
        timeout=30,
    )
    stream.initial_metadata()  # the headers: the server has subscribed us
    return stream


def valid(client, tmp) -> None:
    reply = client.InitHpIo(
        pb2.InitHpIoRequest(data_dir=str(tmp / "data"), update_interval_seconds=0.1, force=True),
        timeout=15,
    )
    assert reply.success and reply.error_message == ""


def test_every_product_round_trip(stub):
    """R-DP-1, R-WIRE-3, R-PARSE-3, R-STREAM-10, R-UP-1: img16, img8, ph256 and ph1024 uploaded
    by grpcio come back to a grpcio stream with their type, shape, bytes per pixel and every
    pixel's bit pattern (65535 for -1 in pulse heights)."""
    client, tmp = stub
    valid(client, tmp)
    stream = subscribe(client, module_ids=[40])
    sent = [image(name, 40, number) for number, name in enumerate(PRODUCTS)]
    upload_images(client, sent)
    got = [r.pano_image for r in itertools.islice(stream, len(sent))]
    stream.cancel()
    for number, (received, name) in enumerate(zip(got, PRODUCTS, strict=True)):
        kind, rows, cols, bpp, dtype = PRODUCTS[name]
        assert (received.type, list(received.shape), received.bytes_per_pixel) == (
            kind,
            [rows, cols],
            bpp,
        )
        width = np.uint8 if bpp == 1 else np.uint16
        pixels = np.array(received.image_array, dtype=np.uint32).astype(width).view(dtype)
        np.testing.assert_array_equal(pixels.reshape(rows, cols), pixels_of(name, number))
        assert received.header["pkt_num"] == received.frame_number
    assert [r.frame_number for r in got] == [0, 1, 2, 3]


def test_module_filters_and_image_type_flags(stub):
    """R-STREAM-6, R-STREAM-7, R-STREAM-8, R-STREAM-10: each grpcio stream gets exactly the
    modules and image types it asked for, every frame once, in order."""
    client, tmp = stub
    valid(client, tmp)
    movie_of_51 = subscribe(client, ph=False, module_ids=[51])
    ph_of_any = subscribe(client, movie=False)
    both_of_50_51 = subscribe(client, module_ids=[50, 51])
    images = [image(name, m, n) for n in range(5) for m in (50, 51) for name in ("img16", "ph256")]
    upload_images(client, images)
    wanted = {
        "movie_of_51": [(51, pb2.PanoImage.MOVIE, n) for n in range(5)],
        "ph_of_any": [(m, pb2.PanoImage.PULSE_HEIGHT, n) for n in range(5) for m in (50, 51)],
        "both": [(i.module_id, i.type, i.frame_number) for i in images],
    }
    for name, stream in (
        ("movie_of_51", movie_of_51),
        ("ph_of_any", ph_of_any),
        ("both", both_of_50_51),
    ):
        got = [r.pano_image for r in itertools.islice(stream, len(wanted[name]))]
        stream.cancel()
        assert [(i.module_id, i.type, i.frame_number) for i in got] == wanted[name], name


def test_pacing_sends_the_newest_at_most_once_per_interval(stub):
    """R-STREAM-8, R-STREAM-9: with interval 0.4 s, frames uploaded meanwhile are skipped but
    the newest one, which comes no earlier than the interval after the previous send."""
    client, tmp = stub
    valid(client, tmp)
    stream = subscribe(client, ph=False, interval=0.4, module_ids=[60])
    upload_images(client, [image("img16", 60, 0)])
    first = next(stream).pano_image
    sent_at = time.monotonic()
    upload_images(client, [image("img16", 60, n) for n in range(1, 30)])
    second = next(stream).pano_image
    elapsed = time.monotonic() - sent_at
    stream.cancel()
    assert (first.frame_number, second.frame_number) == (0, 29)
    assert elapsed >= 0.35


def test_init_hp_io_answers(stub):
    """R-INIT-4, R-INIT-5, R-INIT-6, R-STREAM-13 through grpcio: an inactive DAQ is
    FAILED_PRECONDITION; force=false with a reader is FAILED_PRECONDITION naming the count;
    force=true ends that reader with CANCELLED and answers success."""
    client, tmp = stub
    inactive = tmp / "inactive" / "module_1" / "obs_X"
    inactive.mkdir(parents=True, exist_ok=True)
    with pytest.raises(grpc.RpcError) as info:
        client.InitHpIo(
            pb2.InitHpIoRequest(data_dir=str(inactive.parent.parent), update_interval_seconds=0.1),
            timeout=5,
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no active DAQ" in info.value.details()
    valid(client, tmp)
    reader = subscribe(client)
    request = pb2.InitHpIoRequest(data_dir=str(tmp / "data"), update_interval_seconds=0.2)
    with pytest.raises(grpc.RpcError) as info:
        client.InitHpIo(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "1 StreamImages client(s) active" in info.value.details()
    request.force = True
    reply = client.InitHpIo(request, timeout=15)
    assert reply.success
    with pytest.raises(grpc.RpcError) as info:
        next(reader)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert "reconfigured" in info.value.details()


def test_upload_statuses(stub):
    """R-UP-2, R-UP-5: a request without pano_image is skipped and the answer is Empty;
    R-UP-3: an image of no data product is INVALID_ARGUMENT naming its index."""
    client, _ = stub
    good = image("img8", 70, 1)
    assert (
        client.UploadImages(
            iter([pb2.UploadImageRequest(), pb2.UploadImageRequest(pano_image=good)]), timeout=15
        )
        == empty_pb2.Empty()
    )
    odd = image("img16", 70, 2)
    odd.shape[:] = [16, 64]
    with pytest.raises(grpc.RpcError) as info:
        upload_images(client, [good, odd])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 1 of the upload" in info.value.details()


def test_health_serving(stub):
    """R-NET-4 by grpcio-health-checking (in its own process: see tests/grpcio_probe.py);
    NOT_SERVING during shutdown: tests/test_shutdown.py."""
    import subprocess
    import sys

    client, _ = stub
    target = client.target
    probe = str(Path(__file__).with_name("grpcio_probe.py"))
    for service in ("", "daqdata.DaqData"):
        check = subprocess.run(
            [sys.executable, probe, "check", target, service],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.stdout.strip() == "SERVING", check.stderr


def test_every_product_from_files_through_our_encoder(stub):
    """R-WIRE-3, R-PARSE-3, R-SCAN-1, R-STREAM-10: frames the server reads from PFF files of
    every product (so our encoder writes their pixels, unlike uploads, whose bytes it keeps)
    reach a grpcio stream with every pixel's bit pattern."""
    from panoseti_daq import pff, product_named

    client, tmp = stub
    valid(client, tmp)
    stream = subscribe(client, module_ids=[80])
    run = tmp / "data" / "module_80" / "obs_FILES"
    run.mkdir(parents=True)
    for number, name in enumerate(PRODUCTS):
        product = product_named(name)
        file = pff.DataFileName(name, 80, 0, product.bytes_per_pixel, "2024-07-25T04_34_46Z")
        data = pff.encode_frame({"pkt_num": number}, pixels_of(name, number), product)
        (run / file.format()).write_bytes(data)
    got = {r.pano_image.header["pkt_num"]: r.pano_image for r in itertools.islice(stream, 4)}
    stream.cancel()
    for number, name in enumerate(PRODUCTS):
        _kind, rows, cols, bpp, dtype = PRODUCTS[name]
        received = got[number]
        width = np.uint8 if bpp == 1 else np.uint16
        assert max(received.image_array) <= np.iinfo(width).max
        pixels = np.array(received.image_array, dtype=np.uint32).astype(width).view(dtype)
        np.testing.assert_array_equal(pixels.reshape(rows, cols), pixels_of(name, number))
