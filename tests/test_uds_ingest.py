"""Hashpipe's Unix-socket ingest and the replay tool (spec §12: R-UDS-1 .. R-UDS-3, R-SIM-6)."""

from __future__ import annotations

import logging

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from panoseti_daq import AsyncDaqClient, PFFError, pff, product_named
from panoseti_daq.config import UdsIngestConfig
from panoseti_daq.replay import replay, replay_frames
from panoseti_daq.synthetic import synthetic_movie_frames
from panoseti_daq.wire.hashpipe import UdsFrameDecoder
from tests.conftest import daq_config
from tests.helpers import REAL_PH, wait_until

PH256 = product_named("ph256")


def encoded(frames, product):
    """PFF frames of one size, as Hashpipe writes them (fixed-width headers)."""
    width = max(len(pff.header_text(f.header)) for f in frames)
    return [pff.encode_frame(f.header, f.pixels, product, width) for f in frames]


STREAM = b"".join((254).to_bytes(2, "big") + frame for frame in encoded(REAL_PH[:12], PH256))


@given(st.lists(st.integers(1, 700), min_size=1, max_size=60))
@settings(max_examples=200, deadline=None)
def test_any_chunking_gives_exactly_the_frames(cuts):
    """R-UDS-2: the framing is found whatever chunks the bytes arrive in."""
    decoder = UdsFrameDecoder(PH256, "uds:ph256")
    frames, pos = [], 0
    for size in cuts:
        frames += decoder.feed(STREAM[pos : pos + size])
        pos += size
    frames += decoder.feed(STREAM[pos:])
    assert [f.frame_number for f in frames] == list(range(12))
    for got, source in zip(frames, REAL_PH[:12], strict=True):
        assert got.module_id == 254 and got.header == source.header
        np.testing.assert_array_equal(got.pixels, source.pixels)
    assert decoder.pending == 0


@given(st.binary(min_size=1, max_size=300))
def test_garbage_is_pff_error_or_incomplete(data):
    """R-UDS-3: malformed framing raises PFFError; it never hangs or yields a wrong frame."""
    decoder = UdsFrameDecoder(PH256)
    try:
        frames = decoder.feed(b"\x00\x01" + data)
    except PFFError:
        return
    for frame in frames:
        assert frame.pixels.shape == (16, 16)


def test_a_frame_of_another_size_is_an_error():
    """R-UDS-2: later frames must have the first frame's size."""
    decoder = UdsFrameDecoder(PH256)
    first = STREAM[: len(STREAM) // 12]
    longer = b"\x00\x01" + pff.encode_frame({"x": "a longer header"}, REAL_PH[0].pixels, PH256)
    decoder.feed(first)
    with pytest.raises(PFFError):
        decoder.feed(longer + first)


def write_pff(path, frames, product):
    path.write_bytes(b"".join(encoded(frames, product)))
    return path


@pytest.fixture
def ingest_config(short_tmp):
    return UdsIngestConfig(
        enabled=True,
        data_products=("ph256", "img16"),
        socket_path_template=str(short_tmp / "hp.{dp_name}.sock"),
        read_timeout_s=0.5,
    )


@pytest.mark.anyio
async def test_replay_to_server_to_client(make_server, run_dir, short_tmp, ingest_config):
    """R-UDS-1, R-SIM-6: two products replayed at once reach a StreamImages client exactly."""
    ph_file = write_pff(
        short_tmp / "start_x.dp_ph256.bpp_2.module_254.seqno_0.pff", REAL_PH[:20], PH256
    )
    movie = synthetic_movie_frames("img16", count=10, module_id=3)
    img16 = product_named("img16")
    movie_file = write_pff(short_tmp / "start_x.dp_img16.bpp_2.module_3.seqno_0.pff", movie, img16)
    async with make_server(uds_ingest=ingest_config) as server:
        async with AsyncDaqClient(daq_config(server)) as client:
            hp_io = {"data_dir": str(run_dir), "update_interval_seconds": 0.05, "force": True}
            assert await client.init_hp_io(None, hp_io)
            stream = client.stream_images(None, True, True, 0.0)
            await wait_until(lambda: server.hub.subscriber_count == 1)
            sent = await replay([ph_file, movie_file], ingest_config.socket_path_template)
            got = []
            with anyio.fail_after(10):
                while len(got) < 30:
                    got.append(await stream.__anext__())
            await stream.aclose()
    assert sent == 30
    ph = [g for g in got if g["type"] == "PULSE_HEIGHT"]
    mv = [g for g in got if g["type"] == "MOVIE"]
    assert [g["frame_number"] for g in ph] == list(range(20))
    assert [g["frame_number"] for g in mv] == list(range(10))
    for image, source in zip(ph, REAL_PH[:20], strict=True):
        assert image["module_id"] == 254 and image["file"] == "uds:ph256"
        np.testing.assert_array_equal(image["image_array"], source.pixels)
    for image, source in zip(mv, movie, strict=True):
        assert image["module_id"] == 3
        np.testing.assert_array_equal(image["image_array"], source.pixels)


@pytest.mark.anyio
async def test_bad_senders_are_dropped_the_listener_goes_on(
    make_server, short_tmp, ingest_config, caplog
):
    """R-UDS-3: early close, malformed framing and silence each end one connection with one
    log line; the server keeps accepting and serving."""
    caplog.set_level(logging.WARNING, "panoseti_daq.server.uds_ingest")
    path = ingest_config.socket_path_template.format(dp_name="ph256")
    async with make_server(uds_ingest=ingest_config) as server:
        async with await anyio.connect_unix(path) as early:
            await early.send(STREAM[:900])  # one frame and part of the next
        async with await anyio.connect_unix(path) as garbage:
            await garbage.send(b"\x00\x01[not a header]\n\n*" + b"\x00" * 600)
        async with await anyio.connect_unix(path):
            await anyio.sleep(0.8)  # longer than read_timeout_s
        ph_file = write_pff(
            short_tmp / "start_x.dp_ph256.bpp_2.module_254.seqno_0.pff", REAL_PH[:5], PH256
        )
        assert await replay([ph_file], ingest_config.socket_path_template) == 5
        await wait_until(lambda: server.hub.published == 6)  # 1 from `early`, 5 replayed
        assert server.hub.latest[(254, "ph256")].frame.frame_number == 4
    messages = [r.getMessage() for r in caplog.records]
    assert sum("in the middle of frame 1" in m for m in messages) == 1
    assert sum("malformed framing" in m for m in messages) == 1
    assert sum("no data for 0.5 s" in m for m in messages) == 1
    assert not (short_tmp / "hp.ph256.sock").exists()  # removed at stop


def test_replay_frames_names_and_errors(tmp_path):
    path = write_pff(tmp_path / "start_x.dp_ph256.bpp_2.module_7.seqno_0.pff", REAL_PH[:3], PH256)
    product, frames = replay_frames(path)
    assert product is PH256 and len(frames) == 3 and frames[0][:2] == (7).to_bytes(2, "big")
    bare = write_pff(tmp_path / "capture.pff", REAL_PH[:1], PH256)
    with pytest.raises(ValueError, match="--product"):
        replay_frames(bare)
    assert replay_frames(bare, PH256, 254)[1][0][:2] == (254).to_bytes(2, "big")
