"""UploadImages (spec §7: R-UP-1 .. R-UP-5) and Ping (R-PING-1)."""

from __future__ import annotations

import anyio
import pytest
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError

from panoseti_daq.messages import (
    SOURCE_METADATA_KEY,
    Empty,
    PanoImage,
    PanoImageType,
    UploadImageRequest,
)
from tests.helpers import (
    call,
    init_hp_io,
    movie_frame,
    next_reply,
    open_stream,
    upload,
    wait_until,
)

pytestmark = pytest.mark.anyio


async def raw_upload(server, requests):
    """Upload betterproto2 messages as they are, through grpclib's plain protobuf codec."""
    return await call(server, "UploadImages", requests, UploadImageRequest, Empty, ProtoCodec())


async def test_ping_answers_while_idle(make_server):
    """R-PING-1: Ping returns Empty also when hp_io is idle."""
    async with make_server() as server:
        assert await call(server, "Ping", [Empty()], Empty, Empty) == Empty()


async def test_upload_accepted_without_hp_io(make_server):
    """R-UP-1, R-UP-5: accepted whether or not hp_io is valid; the answer is Empty."""
    async with make_server() as server:
        await upload(server, [movie_frame(3, i) for i in range(10)])
        await wait_until(lambda: server.hub.published == 10)
        assert server.hub.latest[(3, "img16")].frame.frame_number == 9


async def test_reply_means_every_image_is_in_the_hub(make_server):
    """R-UP-5: the Empty reply comes once every image of the upload has entered the hub, also
    for uploads longer than one burst (UPLOAD_BURST) and than one batch of reads."""
    async with make_server() as server:
        for count in (1, 7, 300):
            before = server.hub.published
            await upload(server, [movie_frame(4, i) for i in range(count)])
            assert server.hub.published == before + count
            assert server.hub.latest[(4, "img16")].frame.frame_number == count - 1


async def test_request_without_image_is_skipped(make_server):
    """R-UP-2: an UploadImageRequest without pano_image is skipped."""
    async with make_server() as server:
        good = movie_frame(1, 1).to_message()
        reply = await raw_upload(
            server, [UploadImageRequest(), UploadImageRequest(pano_image=good)]
        )
        assert reply == Empty()
        await wait_until(lambda: server.hub.published == 1)


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (
            PanoImage(
                type=PanoImageType.MOVIE, shape=[32, 32], bytes_per_pixel=2, image_array=[0] * 1000
            ),
            "needs 1024 pixels",
        ),
        (
            PanoImage(
                type=PanoImageType.PULSE_HEIGHT,
                shape=[32, 32],
                bytes_per_pixel=1,
                image_array=[0] * 1024,
            ),
            "no data product",
        ),
        (
            PanoImage(
                type=PanoImageType.MOVIE,
                shape=[32, 32],
                bytes_per_pixel=1,
                image_array=[300] * 1024,
            ),
            "fit 1 byte",
        ),
    ],
)
async def test_invalid_image_names_its_index(make_server, image, problem):
    """R-UP-3, R-PARSE-4: INVALID_ARGUMENT naming the index; the images before it count."""
    async with make_server() as server:
        good = [UploadImageRequest(pano_image=movie_frame(1, i).to_message()) for i in range(3)]
        with pytest.raises(GRPCError) as info:
            await raw_upload(server, [*good, UploadImageRequest(pano_image=image)])
        assert info.value.status == Status.INVALID_ARGUMENT
        assert "image 3 of the upload" in info.value.message and problem in info.value.message
        await wait_until(lambda: server.hub.published == 3)
        await upload(server, [movie_frame(1, 9)])  # the server keeps serving
        await wait_until(lambda: server.hub.published == 4)


async def test_product_outside_valid_data_products(make_server):
    """R-DP-1: valid_data_products may restrict further."""
    async with make_server(valid_data_products=("ph256",)) as server:
        with pytest.raises(GRPCError) as info:
            await upload(server, [movie_frame(1, 0)])
        assert info.value.status == Status.INVALID_ARGUMENT
        assert "img16" in info.value.message


@pytest.mark.timeout(30)  # 4,500 frames, 3 uploaders
async def test_backpressure_slows_never_drops(make_server, run_dir):
    """R-UP-4, R-STATE-4: several uploaders at full speed, a lossless reader gets every frame."""
    async with make_server(max_read_queue_size=5000) as server:
        assert (await init_hp_io(server, run_dir)).success
        per_uploader = 1500
        async with open_stream(server) as reader:
            received = []

            async def read_all():
                while len(received) < 3 * per_uploader:
                    received.append((await reader.recv_message()).frame)

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_all)
                for module in (1, 2, 3):
                    tg.start_soon(
                        upload, server, [movie_frame(module, i) for i in range(per_uploader)]
                    )
        for module in (1, 2, 3):
            numbers = [f.frame_number for f in received if f.module_id == module]
            assert numbers == list(range(per_uploader))
        assert server.hub.published == 3 * per_uploader


class _BytesCodec:
    """Sends raw bytes as they are: to put malformed messages on the wire."""

    __content_subtype__ = "proto"

    def encode(self, message, message_type):
        return message

    def decode(self, data, message_type):
        return data


@pytest.mark.parametrize("method", ["InitHpIo", "StreamImages", "Ping"])
async def test_malformed_request_is_invalid_argument(make_server, method):
    """R-WIRE-5: bytes that are no valid request get INVALID_ARGUMENT naming the problem."""
    async with make_server() as server:
        with pytest.raises(GRPCError) as info:
            # a field longer than the message
            await call(server, method, [b"\x0a\x09ab"], bytes, bytes, _BytesCodec(), trailers=True)
        assert info.value.status == Status.INVALID_ARGUMENT
        assert "malformed request" in info.value.message


async def test_upload_ending_inside_a_message_is_invalid_argument(make_server):
    """R-UP-3, R-WIRE-5: an upload whose request stream ends after part of a message gets
    INVALID_ARGUMENT naming that, after the whole images before it entered the hub; the server
    keeps serving."""
    from panoseti_daq.wire.codec import UploadItem, encode_upload_item
    from tests.helpers import h2_unary_call

    whole = encode_upload_item(UploadItem(movie_frame(1, 0)))
    data = b"\x00" + len(whole).to_bytes(4, "big") + whole + b"\x00\x00\x00\x01\x00" + b"ab"
    async with make_server() as server:
        status, message = await anyio.to_thread.run_sync(
            lambda: h2_unary_call(server.port, "/daqdata.DaqData/UploadImages", b"", raw_data=data)
        )
        assert status == Status.INVALID_ARGUMENT.value
        assert message == (
            "image 1 of the upload is invalid: the request stream ended in the middle of a "
            "message (7 bytes of it arrived); the 1 image(s) before it were accepted"
        )
        await wait_until(lambda: server.hub.published == 1, what="the whole image in the hub")
        assert await call(server, "Ping", [Empty()], Empty, Empty) == Empty()


async def test_uploaders_at_once_lose_nothing(make_server, run_dir):
    """R-UP-4, R-STATE-4: several uploaders at once, each longer than two bursts (5 x 128
    frames): a lossless reader gets every frame of each, in order."""
    from panoseti_daq.server.core import UPLOAD_BURST

    uploaders, per_uploader = 5, 2 * UPLOAD_BURST
    async with make_server(max_read_queue_size=5000) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server) as reader:
            received = []

            async def read_all():
                while len(received) < uploaders * per_uploader:
                    received.append((await reader.recv_message()).frame)

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_all)
                for module in range(1, uploaders + 1):
                    frames = [movie_frame(module, i) for i in range(per_uploader)]
                    tg.start_soon(upload, server, frames)
        for module in range(1, uploaders + 1):
            numbers = [f.frame_number for f in received if f.module_id == module]
            assert numbers == list(range(per_uploader))


async def test_uploads_are_counted_by_source(make_server):
    """R-UP-1: uploads enter the hub as the source "upload"; the rpc simulation's, marked with
    the metadata x-panoseti-frame-source: simulation, as "simulation" (operators' frames-in
    counts); any other mark is an ordinary upload."""
    async with make_server() as server:
        await upload(server, [movie_frame(1, 0), movie_frame(1, 1)])
        await upload(server, [movie_frame(1, 2)], metadata={SOURCE_METADATA_KEY: "simulation"})
        await upload(server, [movie_frame(1, 3)], metadata={SOURCE_METADATA_KEY: "camera"})
        assert server.hub.frames_in == {(1, "img16", "upload"): 3, (1, "img16", "simulation"): 1}


async def test_reader_that_keeps_up_with_a_one_frame_queue_loses_nothing(make_server, run_dir):
    """R-STREAM-10, R-UP-4: an upload hands the hub at most half a reader queue (at least one
    frame) before it waits for the readers: with `max_read_queue_size` 1, a reader that keeps up
    gets every frame of one upload, none dropped."""
    async with make_server(max_read_queue_size=1) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server, ph=False) as stream:
            await upload(server, [movie_frame(1, i) for i in range(20)])
            with anyio.fail_after(5):
                replies = [await next_reply(stream) for _ in range(20)]
            assert server.hub.frames_dropped == 0
    assert [(r.frame.frame_number, r.message) for r in replies] == [(i, "") for i in range(20)]
