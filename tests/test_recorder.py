"""PFFRecorder: received frames written as PFF files in Hashpipe's layout (R-PFF-1, R-PFF-2,
R-NAME-1, R-NAME-2), readable by panoseti_daq.pff and the observatory's way of reading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from panoseti_daq import PanoFrame, pff, product_named
from panoseti_daq.products import PRODUCTS
from panoseti_daq.viewer.recorder import PFFRecorder, hashpipe_header
from tests.helpers import REAL_PH, movie_frame, ph_frame


def read_like_the_observatory(path: Path, bytes_per_image: int) -> list[tuple[dict, bytes]]:
    """Frames read as panoseti's util/pff.py does: the frame size comes from the first frame's
    header (up to its blank line) and every frame has that size (R-PFF-1, R-PFF-2)."""
    data = path.read_bytes()
    end = data.index(b"\n\n") + 2
    frame_size = end + 1 + bytes_per_image
    assert len(data) % frame_size == 0, f"{path.name}: frames of unequal size"
    frames = []
    for start in range(0, len(data), frame_size):
        chunk = data[start : start + frame_size]
        assert chunk[:1] == b"{"
        assert chunk.index(b"\n\n") + 2 == end and chunk[end : end + 1] == b"*"
        frames.append((json.loads(chunk[: end - 2]), chunk[end + 1 :]))
    return frames


def recorded(directory: Path) -> dict[str, list]:
    """{file name: [(header, pixels), ...]} of every recorded data file, via panoseti_daq.pff."""
    files = {}
    for path in sorted(directory.rglob("*.pff")):
        product = pff.DataFileName.parse(path.name).product
        files[path.name] = list(pff.iter_frames(path, product))
        assert len(read_like_the_observatory(path, product.pixel_bytes)) == len(files[path.name])
    return files


def test_layout_and_names_follow_hashpipe(tmp_path):
    """R-NAME-1/2: DIR/module_<id>/obs_<name>.start_<iso>Z.runtype_<type>.pffd/<data file>."""
    with PFFRecorder(tmp_path, observatory="Lick", runtype="sci-data") as recorder:
        path = recorder.write(movie_frame(3, 0))
        recorder.write(ph_frame(3, 0))
        recorder.write(movie_frame(4, 0, "img8"))
    run = pff.RunDirName.parse(path.parent.name)
    assert (run.observatory, run.runtype) == ("Lick", "sci-data")
    assert run.start.endswith("Z") and "T" in run.start
    assert path.parent.parent == tmp_path / "module_3"
    name = pff.DataFileName.parse(path.name)
    assert (name.dp, name.bpp, name.module, name.seqno) == ("img16", 2, 3, 0)
    assert name.start == recorder.start
    names = sorted(p.relative_to(tmp_path).parts[0] + "/" + p.name for p in tmp_path.rglob("*.pff"))
    assert [n.split(".dp_")[1] for n in names] == [
        "img16.bpp_2.module_3.seqno_0.pff",
        "ph256.bpp_2.module_3.seqno_0.pff",
        "img8.bpp_1.module_4.seqno_0.pff",
    ]


def test_frames_read_back_exactly(tmp_path):
    """Headers and pixels survive; parsed dicts (R-PARSE-1) are written like frames; signed
    pulse heights keep their sign (R-PARSE-3)."""
    frames = REAL_PH[:20]
    with PFFRecorder(tmp_path) as recorder:
        for i, frame in enumerate(frames):
            recorder.write(frame if i % 2 else frame.to_dict())
    [(name, back)] = recorded(tmp_path).items()
    assert len(back) == 20 and pff.DataFileName.parse(name).module == 254
    for frame, (header, pixels) in zip(frames, back, strict=True):
        assert header == dict(frame.header)
        assert pixels.dtype == np.int16
        np.testing.assert_array_equal(pixels, frame.pixels)
    assert any((p < 0).any() for _, p in back)


def test_rollover_every_n_frames(tmp_path):
    """R-NAME-2: the next seqno every `frames_per_file` frames, per (module, product)."""
    with PFFRecorder(tmp_path, frames_per_file=10) as recorder:
        for number in range(25):
            recorder.write(movie_frame(1, number))
            if number < 4:
                recorder.write(ph_frame(1, number))
    files = recorded(tmp_path)
    counts = {pff.DataFileName.parse(n).seqno: len(f) for n, f in files.items() if "img16" in n}
    assert counts == {0: 10, 1: 10, 2: 5}
    assert [len(f) for n, f in files.items() if "ph256" in n] == [4]
    numbers = [h["quabo_0"]["pkt_num"] for n in sorted(files) if "img16" in n for h, _ in files[n]]
    assert sorted(numbers) == list(range(25))


def test_a_longer_header_starts_a_new_file_so_frames_keep_one_size(tmp_path):
    """R-PFF-2: a header that outgrows the file's padded width goes to the next seqno."""
    product = product_named("ph256")
    pixels = np.zeros(product.shape, dtype=product.dtype)
    with PFFRecorder(tmp_path) as recorder:
        first = recorder.write(PanoFrame.create(product, {"pkt_num": 1}, pixels, 5))
        same = recorder.write(PanoFrame.create(product, {"pkt_num": 10**12}, pixels, 5))
        long = PanoFrame.create(product, {"pkt_num": 2, "note": "x" * 200}, pixels, 5)
        second = recorder.write(long)
    assert first == same and second != first
    assert pff.DataFileName.parse(second.name).seqno == 1
    files = recorded(tmp_path)
    assert [len(f) for f in files.values()] == [2, 1]
    assert files[second.name][0][0]["note"] == "x" * 200


def test_headers_from_the_wire_are_written_with_integers(tmp_path):
    """Headers that crossed the wire hold doubles (R-WIRE-2 Struct); files hold integers as
    Hashpipe writes them (R-PFF-4), fractions stay as they are."""
    frame = ph_frame(2, 0)
    wire = PanoFrame.from_message(frame.to_message())
    assert isinstance(wire.header["pkt_num"], float)
    with PFFRecorder(tmp_path) as recorder:
        path = recorder.write(wire)
    text = path.read_bytes().split(b"\n\n")[0].decode()
    assert f'"pkt_num":{int(frame.header["pkt_num"])}' in text
    assert hashpipe_header({"a": 1.5, "b": [2.0, {"c": 3.0}], "d": "x"}) == {
        "a": 1.5,
        "b": [2, {"c": 3}],
        "d": "x",
    }


def test_flush_makes_frames_readable_while_recording(tmp_path):
    """A reader (the scanner, R-PFF-3) sees the newest complete frame after flush()."""
    recorder = PFFRecorder(tmp_path)
    path = recorder.write(ph_frame(9, 0))
    recorder.write(ph_frame(9, 1))
    recorder.flush()
    index, header, pixels = pff.newest_complete_frame(path, product_named("ph256"))
    assert index == 1 and header == dict(ph_frame(9, 1).header)
    np.testing.assert_array_equal(pixels, ph_frame(9, 1).pixels)
    recorder.close()
    recorder.close()  # closing twice is harmless
    assert recorder.written == 2


def test_existing_files_are_never_appended_to(tmp_path):
    """Two recordings of the same second into one directory: the second takes new seqnos."""
    first, second = PFFRecorder(tmp_path), PFFRecorder(tmp_path)
    second.start, second.run_name = first.start, first.run_name
    with first, second:
        a = first.write(movie_frame(1, 0))
        b = second.write(movie_frame(1, 1))
    assert a != b and pff.DataFileName.parse(b.name).seqno == 1
    assert [len(f) for f in recorded(tmp_path).values()] == [1, 1]


headers = st.dictionaries(
    st.sampled_from(["pkt_num", "pkt_tai", "pkt_nsec", "tv_sec", "tv_usec", "extra"]),
    st.one_of(st.integers(0, 2**40), st.floats(0, 1e9).map(lambda x: round(x, 3)), st.text()),
    max_size=6,
)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["img16", "img8", "ph1024", "ph256"]), headers, st.integers()),
        min_size=1,
        max_size=25,
    ),
    st.integers(1, 7),
)
def test_any_frames_round_trip_in_uniform_files(tmp_path_factory, items, per_file):
    """Any product, any header lengths: every file has frames of one size, each frame reads
    back as written (R-PFF-1, R-PFF-2)."""
    directory = tmp_path_factory.mktemp("rec")
    rng = np.random.default_rng(0)
    written = []
    with PFFRecorder(directory, frames_per_file=per_file) as recorder:
        for name, header, seed in items:
            product = product_named(name)
            info = np.iinfo(product.dtype)
            pixels = rng.integers(info.min, info.max, product.shape, endpoint=True)
            frame = PanoFrame.create(product, header, pixels.astype(product.dtype), seed % 3)
            written.append((recorder.write(frame), frame))
    files = recorded(directory)
    assert sum(len(f) for f in files.values()) == len(items)
    position: dict[str, int] = {}
    for path, frame in written:
        index = position[path.name] = position.get(path.name, -1) + 1
        header, pixels = files[path.name][index]
        assert header == hashpipe_header(frame.header)
        np.testing.assert_array_equal(pixels, frame.pixels)


def test_the_servers_scanner_reads_a_recording(tmp_path):
    """A recording is a run directory tree the scanner follows like Hashpipe's (R-SCAN-1,
    R-SCAN-2): it finds the newest complete frame of each module and product in the newest
    file (highest seqno)."""
    from panoseti_daq.server.scanner import RunScanner

    with PFFRecorder(tmp_path, frames_per_file=4) as recorder:
        for number in range(10):
            recorder.write(movie_frame(1, number))
        for number in range(3):
            recorder.write(ph_frame(2, number))
    found = {(f.module_id, f.product.name): f for f in RunScanner(tmp_path, (), PRODUCTS).scan()}
    assert set(found) == {(1, "img16"), (2, "ph256")}
    newest = found[(1, "img16")]
    assert pff.DataFileName.parse(newest.file).seqno == 2 and newest.frame_number == 1
    np.testing.assert_array_equal(newest.pixels, movie_frame(1, 9).pixels)
    np.testing.assert_array_equal(found[(2, "ph256")].pixels, ph_frame(2, 2).pixels)
