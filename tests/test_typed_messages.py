"""Typed messages from the clients are complete betterproto2 messages (R-CLI-9)."""

from __future__ import annotations

import datetime
import json

import pytest

from panoseti_daq import AsyncDaqClient
from panoseti_daq.codec import StreamReply, decode_stream_reply, encode_stream_reply
from panoseti_daq.messages import StreamImagesResponse
from tests.conftest import daq_config
from tests.helpers import movie_frame, ph_frame, wait_until

pytestmark = pytest.mark.anyio


def _round_trip(msg: StreamImagesResponse) -> None:
    data = bytes(msg)
    assert StreamImagesResponse.FromString(data) == msg
    as_dict = msg.to_dict()
    assert json.loads(msg.to_json()) == as_dict
    assert StreamImagesResponse.from_dict(as_dict) == msg


async def test_stream_messages_round_trip(make_server, run_dir):
    """R-CLI-9: every StreamImagesResponse the client yields with parse_pano_images=False
    serialises, converts to dict and JSON, and parses back equal; `timestamp` is an aware
    datetime, as betterproto2 declares it."""
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
    for msg in seen:
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
    msg = decode_stream_reply(encode_stream_reply(reply))
    from panoseti_daq.codec import stream_response_message

    typed = stream_response_message(msg)
    assert typed.timestamp == datetime.datetime(2024, 7, 25, 4, 34, 52, 779007, tzinfo=datetime.UTC)
    assert typed.message == "dropped 3 frames"
    _round_trip(typed)
