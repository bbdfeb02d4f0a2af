"""Typed messages from the clients are complete betterproto2 messages (R-CLI-9)."""

from __future__ import annotations

import datetime
import json

import pytest

from panoseti_daq import AsyncDaqClient
from panoseti_daq.frames import plain_header
from panoseti_daq.messages import StreamImagesResponse
from panoseti_daq.wire.codec import StreamReply, decode_stream_reply, encode_stream_reply
from tests.conftest import daq_config
from tests.helpers import movie_frame, ph_frame, wait_until
from tests.reference import modules

pb2, _ = modules()

pytestmark = pytest.mark.anyio


def _round_trip(msg: StreamImagesResponse) -> None:
    data = bytes(msg)
    assert StreamImagesResponse.FromString(data) == msg
    as_dict = msg.to_dict()
    assert json.loads(msg.to_json()) == as_dict
    assert StreamImagesResponse.from_dict(as_dict) == msg


async def test_stream_messages_round_trip(make_server, run_dir):
    """R-CLI-9: every StreamImagesResponse the client yields with parse_pano_images=False
    carries the server's name and the image uploaded, serialises, converts to dict and JSON,
    and parses back equal; `timestamp` is an aware datetime, as betterproto2 declares it."""
    frames = [movie_frame(7, 0, "img16"), movie_frame(7, 1, "img8"), ph_frame(7, 2)]
    async with make_server() as server:
        async with AsyncDaqClient(daq_config(server)) as client:
            hp_io = {"data_dir": str(run_dir), "update_interval_seconds": 0.05, "force": True}
            assert await client.init_hp_io(None, hp_io)
            async with client.stream_images(None, True, True, 0.0, (), False, False) as stream:
                await wait_until(lambda: server.hub.subscriber_count == 1)
                await client.upload_images(None, frames)
                seen = []
                async for msg in stream:
                    seen.append(msg)
                    if len(seen) == len(frames):
                        break
    assert {m.pano_image.shape[0] for m in seen} == {32, 16}
    assert sorted(m.pano_image.frame_number for m in seen) == [0, 1, 2]
    for msg in seen:
        assert msg.name == "test-node"
        sent = frames[msg.pano_image.frame_number]
        assert msg.pano_image.module_id == 7 and msg.pano_image.file == sent.file
        assert msg.pano_image.image_array == sent.wire_pixels().tolist()
        assert msg.pano_image.header.to_dict() == plain_header(sent.header)
        assert isinstance(msg, StreamImagesResponse)
        assert isinstance(msg.timestamp, datetime.datetime)
        assert msg.timestamp.tzinfo is not None
        assert abs(msg.timestamp - datetime.datetime.now(datetime.UTC)).total_seconds() < 60
        _round_trip(msg)


@pytest.mark.parametrize("with_frame", [True, False])
def test_codec_reply_message_round_trip(with_frame):
    """R-CLI-9: the codec's StreamReply <-> StreamImagesResponse keeps name, message, image
    and the timestamp (to the microsecond a datetime holds), also for ph1024 and replies without
    an image."""
    from panoseti_daq import product_named
    from panoseti_daq.synthetic import ph1024_from_ph256

    frame = ph1024_from_ph256([ph_frame(3, i) for i in range(16)])[0] if with_frame else None
    if frame is not None:
        assert frame.product == product_named("ph1024")
    reply = StreamReply(frame, "node", 1_721_882_092_779_007_488, "dropped 3 frames")
    wire = encode_stream_reply(reply)
    msg = decode_stream_reply(wire)
    from panoseti_daq.wire.codec import stream_response_message

    typed = stream_response_message(msg)
    assert typed.name == "node"
    assert typed.timestamp == datetime.datetime(2024, 7, 25, 4, 34, 52, 779007, tzinfo=datetime.UTC)
    assert typed.message == "dropped 3 frames"
    _round_trip(typed)
    # The image as protobuf reads the server's bytes, and as the frame holds it.
    reference = pb2.StreamImagesResponse.FromString(wire)
    ours = pb2.StreamImagesResponse.FromString(bytes(typed))
    assert ours.name == reference.name == "node"
    assert ours.HasField("pano_image") == reference.HasField("pano_image") == with_frame
    if frame is None:
        assert typed.pano_image is None
        return
    assert ours.pano_image == reference.pano_image
    image = typed.pano_image
    assert (image.frame_number, image.module_id, image.file) == (
        frame.frame_number,
        frame.module_id,
        frame.file,
    )
    assert list(image.shape) == [32, 32] and image.bytes_per_pixel == frame.bytes_per_pixel
    assert image.image_array == frame.wire_pixels().tolist()
    assert image.header.to_dict() == plain_header(frame.header)
