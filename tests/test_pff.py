"""The PFF format and Hashpipe's names (R-PFF-1 .. R-PFF-5, R-NAME-1 .. R-NAME-3)."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from panoseti_daq import PFFError, pff, product_named
from panoseti_daq._bundled import NGC7331_PH256
from panoseti_daq.products import PRODUCTS

PH256 = product_named("ph256")

json_scalars = st.one_of(
    st.integers(-(2**53), 2**53),
    st.booleans(),
    st.text(max_size=12),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)
headers = st.dictionaries(
    st.text(min_size=1, max_size=10),
    st.one_of(
        json_scalars, st.dictionaries(st.text(min_size=1, max_size=8), json_scalars, max_size=5)
    ),
    max_size=8,
)


@st.composite
def frames(draw):
    product = draw(st.sampled_from(list(PRODUCTS.values())))
    pixels = draw(hnp.arrays(product.dtype, product.shape))
    return product, draw(headers), pixels


@given(frames(), st.integers(1, 4))
@settings(max_examples=150, deadline=None)
def test_round_trip_every_product(tmp_path_factory, frame, count):
    """R-PFF-1, R-PFF-2, R-PFF-5: write then read back frames of every product, pixels exact."""
    product, header, pixels = frame
    path = tmp_path_factory.mktemp("pff") / f"dp_{product.name}.pff"
    data = pff.encode_frame(header, pixels, product)
    path.write_bytes(data * count)
    assert pff.frame_size_of(path, product) == len(data)
    read = list(pff.iter_frames(path, product))
    assert len(read) == count
    for got_header, got_pixels in read:
        assert got_header == json.loads(json.dumps(header))
        assert got_pixels.dtype == product.dtype
        np.testing.assert_array_equal(got_pixels, pixels)
    index, _, newest = pff.newest_complete_frame(path, product)
    assert index == count - 1
    np.testing.assert_array_equal(newest, pixels)


def test_pixels_are_little_endian_row_major():
    """R-PFF-1: pixel bytes little-endian, row-major, right after `*`."""
    pixels = np.arange(256, dtype=np.int16).reshape(16, 16) - 100
    data = pff.encode_frame({"a": 1}, pixels, PH256)
    assert data.startswith(b'{"a":1}\n\n*')
    start = data.index(b"*") + 1
    assert data[start : start + 4] == (-100).to_bytes(2, "little", signed=True) + (-99).to_bytes(
        2, "little", signed=True
    )


def test_real_ngc7331_data_frame_by_frame():
    """R-PFF-*, R-PFF-4: the real on-sky file reads back with the figures of its README."""
    size = pff.frame_size_of(NGC7331_PH256, PH256)
    assert size == 655
    assert os.path.getsize(NGC7331_PH256) == 503 * size
    frames_read = list(pff.iter_frames(NGC7331_PH256, PH256))
    assert len(frames_read) == 503
    quabos = Counter(int(h["quabo_num"]) for h, _ in frames_read)
    assert quabos == {0: 161, 1: 139, 2: 61, 3: 142}
    for header, pixels in frames_read:
        assert set(header) == {"quabo_num", "pkt_num", "pkt_tai", "pkt_nsec", "tv_sec", "tv_usec"}
        assert 0 <= header["pkt_tai"] < 1024
        assert pixels.shape == (16, 16) and pixels.dtype == np.int16
    stack = np.stack([p for _, p in frames_read])
    assert int(stack.min()) == -43
    assert np.median(stack.view(np.uint16)) == 44
    # The README's figure reads the pixels as uint16 bit patterns.
    assert np.median(stack.view(np.uint16).reshape(503, -1).max(axis=1)) == 469
    negative = np.count_nonzero(stack < 0) / stack.size
    assert 0.013 < negative < 0.015
    times = [h["tv_sec"] + h["tv_usec"] / 1e6 for h, _ in frames_read]
    assert 597 < times[-1] - times[0] < 599


def test_newest_frame_reads_only_that_frame(tmp_path):
    """R-PFF-3, R-SCAN-3: the newest frame is at S // frame_size - 1, read with one seek."""
    data = NGC7331_PH256.read_bytes()
    path = tmp_path / "grow.pff"
    path.write_bytes(data[: 655 * 10 + 300])  # ten frames and part of the eleventh
    index, header, _ = pff.newest_complete_frame(path, PH256)
    assert index == 9
    assert header == next(
        h for i, (h, _) in enumerate(pff.iter_frames(NGC7331_PH256, PH256)) if i == 9
    )
    assert len(list(pff.iter_frames(path, PH256))) == 10


def test_newest_frame_while_a_writer_appends_odd_chunks(tmp_path):
    """R-PFF-3: a concurrent writer appending odd-sized chunks never yields a torn frame."""
    data = NGC7331_PH256.read_bytes()
    path = tmp_path / "live.pff"
    path.write_bytes(b"")
    done = threading.Event()

    def writer() -> None:
        with open(path, "ab", buffering=0) as f:
            for offset in range(0, len(data), 97):
                f.write(data[offset : offset + 97])
        done.set()

    expected = [p for _, p in pff.iter_frames(NGC7331_PH256, PH256)]
    thread = threading.Thread(target=writer)
    thread.start()
    seen = set()
    try:
        while True:
            finished = done.is_set()
            newest = pff.newest_complete_frame(path, PH256)
            if newest is not None:
                index, _, pixels = newest
                np.testing.assert_array_equal(pixels, expected[index])
                seen.add(index)
            if finished:
                break
    finally:
        thread.join(timeout=30)
    assert max(seen) == 502


def test_partial_header_is_not_an_error(tmp_path):
    """R-PFF-3: a file whose first header is still being written has no frames yet."""
    path = tmp_path / "new.pff"
    path.write_bytes(b'{"quabo_num": 0, "pkt')
    assert pff.frame_size_of(path, PH256) is None
    assert pff.newest_complete_frame(path, PH256) is None
    assert list(pff.iter_frames(path, PH256)) == []


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: b"[1, 2]\n\n*" + d[d.index(b"*") + 1 :], "not start with a JSON object"),
        (lambda d: d.replace(b"\n\n*", b"\n\n#", 1), "expected '\\*'"),
        (lambda d: b"{not json}\n\n*" + d[d.index(b"*") + 1 :], "not valid JSON"),
        (lambda d: b"garbage" + d, "does not start with a JSON object"),
    ],
)
def test_corrupt_first_frame_raises_pff_error_with_offset(tmp_path, damage, reason):
    """R-PFF-5: a bad header or missing `*` raises PFFError naming file and offset."""
    frame = NGC7331_PH256.read_bytes()[:655]
    path = tmp_path / "bad.pff"
    path.write_bytes(damage(frame) + frame)
    with pytest.raises(PFFError, match=reason) as info:
        list(pff.iter_frames(path, PH256))
    assert info.value.file == str(path)
    assert info.value.offset >= 0
    assert str(path) in str(info.value)


def test_short_pixel_block_in_a_middle_frame(tmp_path):
    """R-PFF-5: a middle frame with missing pixel bytes is an error, not a partial frame."""
    data = NGC7331_PH256.read_bytes()
    path = tmp_path / "short.pff"
    path.write_bytes(data[:655] + data[655 : 655 * 2 - 10] + data[655 * 2 : 655 * 4])
    with pytest.raises(PFFError) as info:
        list(pff.iter_frames(path, PH256))
    assert info.value.offset == 655


def test_read_frame_rejects_frame_of_another_size(tmp_path):
    """R-PFF-2: every frame has the first frame's size."""
    data = NGC7331_PH256.read_bytes()
    path = tmp_path / "mixed.pff"
    path.write_bytes(data[:655] + b'{"x":1}\n\n*' + data[655 + 140 : 655 * 3])
    with pytest.raises(PFFError):
        pff.read_frame(path, PH256, 1, 655)


# --- names ---------------------------------------------------------------------------------


def test_parse_data_file_name():
    """R-NAME-2: dot-separated key_value fields ending in .pff."""
    name = pff.DataFileName.parse("start_2024-07-25T04_34_46Z.dp_img16.bpp_2.module_1.seqno_3.pff")
    assert name == pff.DataFileName("img16", 1, 3, 2, "2024-07-25T04_34_46Z")
    assert name.product is PRODUCTS["img16"]
    assert name.format() == "start_2024-07-25T04_34_46Z.dp_img16.bpp_2.module_1.seqno_3.pff"


def test_missing_seqno_is_zero_and_extra_fields_are_kept():
    """R-NAME-2: seqno missing = 0; unknown fields survive a round trip."""
    name = pff.DataFileName.parse(
        "start_2024-07-25T04_34_46Z.dp_ph256.bpp_2.module_224.debug_TRUNCATED.pff"
    )
    assert (name.dp, name.module, name.seqno) == ("ph256", 224, 0)
    assert ("debug", "TRUNCATED") in name.extra
    assert pff.DataFileName.parse(name.format()) == name


@pytest.mark.parametrize("name", ["hk.pff", "start_x.module_1.pff", "dp_img16.module_1.pff.tmp"])
def test_names_without_dp_are_not_data_files(name):
    """R-NAME-3: a file name without dp_ is not a data file."""
    assert pff.DataFileName.parse(name) is None


@given(
    dp=st.sampled_from(sorted(PRODUCTS)),
    module=st.integers(0, 1023),
    seqno=st.integers(0, 10**6),
    bpp=st.sampled_from([1, 2]),
)
def test_data_file_name_round_trip(dp, module, seqno, bpp):
    """R-NAME-2: build and parse agree."""
    name = pff.DataFileName(dp, module, seqno, bpp, "2024-07-25T04_34_46Z")
    assert pff.DataFileName.parse(name.format()) == name


def test_run_dir_name():
    """R-NAME-1: obs_<observatory>.start_<ISO time>Z.runtype_<type>.pffd."""
    text = "obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd"
    run = pff.RunDirName.parse(text)
    assert run == pff.RunDirName("Lick", "2024-07-25T04:34:06Z", "sci-data")
    assert run.format() == text
    assert pff.RunDirName.parse("obs_SIMULATE") == pff.RunDirName("SIMULATE")
    assert pff.RunDirName.parse("module_1") is None


def test_module_dir_id():
    """R-SCAN-1: module_<id> directories."""
    assert pff.module_dir_id("module_224") == 224
    assert pff.module_dir_id("module_x") is None
    assert pff.module_dir_id("modules_1") is None


def test_encode_rejects_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        pff.encode_frame({}, np.zeros((32, 32), np.int16), PH256)


def test_written_file_matches_bundled_layout(tmp_path: Path):
    """R-PFF-1: re-encoding the real frames gives frames of the same structure."""
    header, pixels = next(pff.iter_frames(NGC7331_PH256, PH256))
    data = pff.encode_frame(header, pixels, PH256)
    assert data.endswith(NGC7331_PH256.read_bytes()[655 - 512 : 655])
