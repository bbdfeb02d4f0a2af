"""PanoFrame: building, validating and parsing images (R-PARSE-1 .. R-PARSE-4, R-WIRE-3)."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from panoseti_daq import ImageError, PanoFrame, pff, product_named
from panoseti_daq._bundled import NGC7331_PH256
from panoseti_daq.messages import PanoImage, PanoImageType, Struct
from panoseti_daq.products import PRODUCTS
from tests.conftest import examples

QUABO = {
    "pkt_tai": 529,
    "tv_sec": 1721882092,
    "pkt_nsec": 779007488,
    "tv_usec": 779336,
    "pkt_num": 1,
}
MOVIE_HEADER = {f"quabo_{i}": dict(QUABO) for i in range(4)}


def test_parsed_dict_has_the_seed_format():
    """R-PARSE-1, R-PARSE-2: the seed README's keys, types and timestamps."""
    pixels = np.arange(1024, dtype=np.uint16).reshape(32, 32)
    frame = PanoFrame.create("img16", MOVIE_HEADER, pixels, 224, "f.pff", 88)
    parsed = frame.to_dict()
    assert set(parsed) == {
        "type",
        "header",
        "shape",
        "bytes_per_pixel",
        "image_array",
        "file",
        "frame_number",
        "module_id",
    }
    assert parsed["type"] == "MOVIE"
    assert parsed["shape"] == [32, 32] and parsed["bytes_per_pixel"] == 2
    assert parsed["image_array"].dtype == np.uint16
    np.testing.assert_array_equal(parsed["image_array"], pixels)
    assert (parsed["file"], parsed["frame_number"], parsed["module_id"]) == ("f.pff", 88, 224)
    header = parsed["header"]
    assert header["quabo_0"] == {k: float(v) for k, v in QUABO.items()}
    assert header["wr_unix_timestamp"] == Decimal("1721882092.779007488")
    assert header["pandas_unix_timestamp"] == pd.Timestamp("2024-07-25 04:34:52.779007488")
    assert header["wr_timestamp_valid"] is True


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("img8", np.uint8), ("img16", np.uint16), ("ph1024", np.int16), ("ph256", np.int16)],
)
def test_dtype_per_product(name, dtype):
    """R-PARSE-2: 1 byte -> uint8; 2 bytes movie -> uint16; 2 bytes pulse height -> int16."""
    product = product_named(name)
    frame = PanoFrame.create(product, {}, np.zeros(product.pixel_count, np.int64), 1)
    assert frame.pixels.dtype == np.dtype(dtype)
    assert frame.pixels.shape == product.shape


def test_pulse_height_bit_patterns_are_reinterpreted():
    """R-PARSE-3, R-WIRE-3: 65535 on the wire is -1; the wire carries the 16-bit pattern."""
    values = np.full(256, 65535, dtype=np.uint32)
    values[1] = 32768
    frame = PanoFrame.create("ph256", {}, values, 1)
    assert frame.pixels[0, 0] == -1 and frame.pixels[0, 1] == -32768
    wire = frame.wire_pixels()
    assert wire.dtype == np.uint32 and wire[0] == 65535 and wire[1] == 32768


@pytest.mark.parametrize(
    ("product", "values", "message"),
    [
        ("img16", np.zeros(1023), "needs 1024 pixels"),
        ("img8", np.full(1024, 256), "fit 1 byte"),
        ("img16", np.full(1024, 70000), "fit 2 byte"),
        ("img16", np.full(1024, -1), "fit 2 byte"),
        ("ph256", np.full(256, 1.5), "integers"),
    ],
)
def test_invalid_pixels_are_rejected_with_a_reason(product, values, message):
    """R-PARSE-4: wrong length or values that do not fit bytes_per_pixel."""
    with pytest.raises(ImageError, match=message):
        PanoFrame.create(product, {}, values, 1)


def test_invalid_message_combination_is_rejected():
    """R-PARSE-4, R-DP-2: PULSE_HEIGHT with 1 byte per pixel is no product."""
    message = PanoImage(
        type=PanoImageType.PULSE_HEIGHT, shape=[32, 32], bytes_per_pixel=1, image_array=[0] * 1024
    )
    with pytest.raises(ImageError, match="no data product"):
        PanoFrame.from_message(message)


@st.composite
def frames(draw):
    product = draw(st.sampled_from(list(PRODUCTS.values())))
    pixels = draw(hnp.arrays(product.dtype, product.shape))
    header = draw(
        st.dictionaries(st.text(min_size=1, max_size=8), st.integers(0, 2**40), max_size=6)
    )
    return PanoFrame.create(
        product,
        header,
        pixels,
        draw(st.integers(0, 2**32 - 1)),
        draw(st.text(max_size=20)),
        draw(st.integers(0, 2**32 - 1)),
    )


@given(frames())
@settings(max_examples=examples(100), deadline=None)
def test_message_round_trip(frame):
    """R-WIRE-2, R-WIRE-3: PanoFrame -> betterproto2 PanoImage -> bytes -> PanoFrame."""
    wire = bytes(frame.to_message())
    back = PanoFrame.from_message(PanoImage.parse(wire))
    assert back.product is frame.product
    np.testing.assert_array_equal(back.pixels, frame.pixels)
    assert back.header == {k: float(v) for k, v in frame.header.items()}
    assert (back.module_id, back.file, back.frame_number) == (
        frame.module_id,
        frame.file,
        frame.frame_number,
    )


def test_protobuf_reference_reads_our_message():
    """R-WIRE-2: protobuf (the grpcio service's library) parses our PanoImage the same."""
    from tests.reference import modules

    pb2, _ = modules()
    header, pixels = next(pff.iter_frames(NGC7331_PH256, product_named("ph256")))
    frame = PanoFrame.create("ph256", header, pixels, 254, NGC7331_PH256.name, 0)
    reference = pb2.PanoImage.FromString(bytes(frame.to_message()))
    assert reference.type == pb2.PanoImage.PULSE_HEIGHT
    assert list(reference.shape) == [16, 16] and reference.bytes_per_pixel == 2
    assert list(reference.image_array) == frame.wire_pixels().tolist()
    assert reference.header["pkt_tai"] == header["pkt_tai"]
    assert (reference.module_id, reference.file) == (254, NGC7331_PH256.name)


def test_struct_header_survives_nesting():
    """R-PFF-4: readers keep unknown header keys, nested objects included."""
    header = {"quabo_0": {"pkt_num": 3, "extra": "x"}, "flag": True, "list": [1, 2]}
    frame = PanoFrame.create("img8", header, np.zeros((32, 32), np.uint8), 2)
    message = frame.to_message()
    assert isinstance(message.header, Struct)
    back = PanoFrame.from_message(PanoImage.parse(bytes(message)))
    assert back.header == {
        "quabo_0": {"pkt_num": 3.0, "extra": "x"},
        "flag": True,
        "list": [1.0, 2.0],
    }


def test_module_remap_keeps_everything_else():
    """R-SIM-4: a simulated frame keeps its source header and pixels."""
    frame = PanoFrame.create("ph256", {"a": 1}, np.ones((16, 16), np.int16), 254, "f", 9)
    moved = frame.with_module(224)
    assert moved.module_id == 224 and moved.header is frame.header and moved.pixels is frame.pixels
