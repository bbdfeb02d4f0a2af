"""The loop-free UBX protocol layer: frames, decoding, Struct values, polls, identity, config."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyubx2 import POLL, SET, val2bytes

from panoseti_daq.ublox.protocol import (
    CONFIG_DATABASE,
    MAX_CONFIG_ITEMS,
    POLLABLE_NAMES,
    SET_LAYER_BITS,
    ChipVersion,
    UbxDecodeError,
    UbxFrameSplitter,
    ack_of,
    build_frame,
    byte_reversed_uid,
    chip_uid,
    chip_version,
    class_and_id,
    compile_patterns,
    decode,
    message_name,
    parsed_data,
    poll_candidates,
    poll_frame,
    valget_batches,
    valget_frames,
    valget_values,
    valset_batches,
    valset_frames,
    value_matches,
)
from tests.ublox_helpers import recorded_frames, recorded_lines

RECORDED = recorded_lines()
RECORDED_FRAMES = [frame for _, frame in recorded_frames()]

# Frames of any class, id and payload (checksums right by construction).
frames = st.builds(
    build_frame,
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=80),
)
# Line noise and NMEA: anything but the first sync byte, so it can start no frame.
noise = st.binary(max_size=40).map(lambda data: data.replace(b"\xb5", b"\x00"))


def feed_in_chunks(splitter: UbxFrameSplitter, data: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    start = 0
    for cut in sorted({min(cut, len(data)) for cut in cuts}):
        out += splitter.feed(data[start:cut])
        start = cut
    out += splitter.feed(data[start:])
    return out


def test_recorded_file_is_the_one_the_spec_describes():
    """R-UBX-SIM-8: 81 frames, one ACK-ACK, 40 NAV-TIMEUTC, 40 TIM-TP, in the packaged data."""
    names = [line["identity"] for line in RECORDED]
    assert len(names) == 81
    assert names[0] == "ACK-ACK"
    assert names.count("NAV-TIMEUTC") == 40
    assert names.count("TIM-TP") == 40


def test_every_recorded_frame_decodes_and_reencodes_byte_for_byte():
    """R-UBX-SIM-8: pyubx2 decodes every recorded frame to its identity and re-encodes it."""
    for line, frame in zip(RECORDED, RECORDED_FRAMES, strict=True):
        msg = decode(frame)
        assert message_name(msg) == line["identity"]
        assert msg.serialize() == frame
        assert build_frame(frame[2], frame[3], frame[6:-2]) == frame


def test_recorded_stream_splits_into_its_frames():
    """R-UBX-STATE-2: the recording, fed in 7-byte chunks, gives its 81 frames, nothing else."""
    splitter = UbxFrameSplitter()
    data = b"".join(RECORDED_FRAMES)
    out = feed_in_chunks(splitter, data, list(range(7, len(data), 7)))
    assert out == RECORDED_FRAMES
    assert (splitter.skipped_bytes, splitter.bad_checksums, splitter.pending) == (0, 0, 0)
    assert splitter.frames == 81


@settings(max_examples=300)
@given(
    st.lists(st.tuples(noise, frames), max_size=8),
    noise,
    st.lists(st.integers(0, 2000), max_size=20),
)
def test_splitter_finds_every_frame_between_noise_under_any_chunking(parts, tail, cuts):
    """R-UBX-STATE-2: NMEA/garbage between frames is skipped and counted; frames come out whole."""
    data = b"".join(junk + frame for junk, frame in parts) + tail
    splitter = UbxFrameSplitter()
    assert feed_in_chunks(splitter, data, cuts) == [frame for _, frame in parts]
    assert splitter.skipped_bytes == sum(len(junk) for junk, _ in parts) + len(tail)
    assert splitter.bad_checksums == 0
    assert splitter.pending == 0


@settings(max_examples=300)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=30))
def test_splitter_result_does_not_depend_on_chunking(data, cuts):
    """R-UBX-STATE-2: any bytes, any chunking: the same frames and counts as in one piece, and
    every byte is in a frame, skipped, or pending."""
    data = data.replace(b"\xb5\xb5", b"\xb5\x62")  # make sync bytes common in the noise
    whole = UbxFrameSplitter(max_payload=300)
    expected = whole.feed(data)
    chunked = UbxFrameSplitter(max_payload=300)
    assert feed_in_chunks(chunked, data, cuts) == expected
    assert (chunked.skipped_bytes, chunked.bad_checksums, chunked.pending) == (
        whole.skipped_bytes,
        whole.bad_checksums,
        whole.pending,
    )
    assert sum(map(len, expected)) + whole.skipped_bytes + whole.pending == len(data)


@settings(max_examples=200)
@given(st.lists(frames, min_size=1, max_size=6), st.data())
def test_bad_checksums_are_dropped_and_counted_and_the_rest_survive(good, data):
    """R-UBX-STATE-2: a frame with a wrong checksum is dropped and counted; its neighbours are
    delivered (the search resumes after the false frame's sync bytes)."""
    bad_index = data.draw(st.integers(0, len(good) - 1))
    bad = bytearray(good[bad_index])
    bad[-1] ^= data.draw(st.integers(1, 255))
    stream = b"".join(good[:bad_index]) + bytes(bad) + b"".join(good[bad_index + 1 :])
    splitter = UbxFrameSplitter()
    out = splitter.feed(stream + b"\x00" * 8)
    assert splitter.bad_checksums >= 1
    for frame in good[:bad_index] + good[bad_index + 1 :]:
        assert frame in out
    assert bytes(bad) not in out


@settings(max_examples=200)
@given(st.lists(frames, min_size=1, max_size=5), st.integers(1, 40))
def test_a_truncated_frame_does_not_swallow_the_frames_after_it(good, cut):
    """R-UBX-STATE-2: a frame cut short (a cable glitch) claims bytes of the next frames; its
    checksum fails and the splitter finds the next frames in the bytes it had claimed."""
    truncated = RECORDED_FRAMES[1][: max(6, len(RECORDED_FRAMES[1]) - cut)]
    splitter = UbxFrameSplitter()
    out = splitter.feed(truncated + b"".join(good) + b"\x00" * 200)
    assert out[-len(good) :] == good
    assert splitter.bad_checksums + splitter.frames >= len(good)


def test_oversized_length_is_not_waited_for():
    """R-UBX-STATE-2: a false sync announcing more than max_payload bytes is dropped at once, so a
    real frame right behind it is not held back."""
    splitter = UbxFrameSplitter(max_payload=1000)
    out = splitter.feed(b"\xb5\x62\x01\x02\xff\xff" + RECORDED_FRAMES[2])
    assert out == [RECORDED_FRAMES[2]]
    assert splitter.skipped_bytes == 6


def test_sync_split_across_chunks_is_kept():
    """R-UBX-STATE-2: a chunk ending in B5 keeps it as the possible start of a frame."""
    splitter = UbxFrameSplitter()
    frame = RECORDED_FRAMES[2]
    assert splitter.feed(b"$GPGGA,,*00\r\n" + frame[:1]) == []
    assert splitter.pending == 1
    assert splitter.feed(frame[1:]) == [frame]
    assert splitter.skipped_bytes == 13


def test_build_frame_rejects_what_cannot_be_a_frame():
    """R-UBX-STATE-2: class and id are bytes; a payload fits a 16-bit length."""
    with pytest.raises(ValueError, match="single bytes"):
        build_frame(256, 1, b"")
    with pytest.raises(ValueError, match="longer than 65535"):
        build_frame(1, 1, bytes(65536))


@settings(max_examples=400)
@given(frames)
def test_decode_gives_a_message_or_a_decode_error(frame):
    """R-UBX-STATE-2: any checksum-valid frame decodes with pyubx2 or raises UbxDecodeError, and
    whatever decodes gives Struct-able parsed data (R-UBX-CAP-5)."""
    try:
        msg = decode(frame)
    except UbxDecodeError as err:
        assert "undecodable UBX frame" in str(err)
        return
    assert_struct_able(parsed_data(msg))


def test_decode_refuses_a_bad_checksum():
    """R-UBX-STATE-2: decode checks the checksum."""
    frame = bytearray(RECORDED_FRAMES[2])
    frame[-1] ^= 1
    with pytest.raises(UbxDecodeError, match="checksum"):
        decode(bytes(frame))


def assert_struct_able(value: object) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            assert_struct_able(item)
    elif isinstance(value, list):
        for item in value:
            assert_struct_able(item)
    else:
        assert isinstance(value, (str, int, float, bool)), value
    json.dumps(value, allow_nan=False)


def test_parsed_data_of_recorded_tim_tp_has_the_spec_fields_and_types():
    """R-UBX-CAP-5: TIM-TP's fields under pyubx2's names with their types, plus metadata; bytes
    as lowercase hex (TIM's class is "0d", not a carriage return)."""
    frame = RECORDED_FRAMES[2]
    data = parsed_data(decode(frame))
    assert data == {
        "towMS": 273244000,
        "towSubMS": 0.0,
        "qErr": 2558,
        "week": 2379,
        "timeBase": 1,
        "utc": 1,
        "raim": 2,
        "qErrInvalid": 0,
        "TpNotLocked": 0,
        "timeRefGnss": 15,
        "utcStandard": 3,
        "identity": "TIM-TP",
        "length": 16,
        "msgmode": 0,
        "msg_cls": "0d",
        "msg_id": "01",
        "payload": frame[6:-2].hex(),
    }
    assert type(data["towSubMS"]) is float
    assert all(type(data[k]) is int for k in ("towMS", "qErr", "week", "utc", "qErrInvalid"))
    assert_struct_able(data)


def test_parsed_data_of_recorded_nav_timeutc_has_the_spec_fields_and_types():
    """R-UBX-CAP-5: NAV-TIMEUTC's fields, all integers, plus metadata."""
    frame = RECORDED_FRAMES[1]
    data = parsed_data(decode(frame))
    fields = "iTOW tAcc nano year month day hour min sec validTOW validWKN validUTC authStatus"
    for name in [*fields.split(), "utcStandard"]:
        assert type(data[name]) is int, name
    assert (data["year"], data["month"], data["day"], data["hour"], data["min"]) == (
        2025,
        8,
        13,
        3,
        54,
    )
    assert (data["tAcc"], data["validUTC"]) == (62, 1)
    assert (data["identity"], data["length"], data["msg_cls"], data["msg_id"]) == (
        "NAV-TIMEUTC",
        20,
        "01",
        "21",
    )
    for frame in RECORDED_FRAMES:
        assert_struct_able(parsed_data(decode(frame)))


def test_parsed_data_turns_character_fields_into_text_and_other_bytes_into_hex():
    """R-UBX-CAP-5: MON-VER's swVersion, hwVersion and extensions are text without NULs; other
    bytes fields are lowercase hex."""
    payload = (
        b"EXT CORE 1.00 (61ce84)".ljust(30, b"\x00")
        + b"00190000".ljust(10, b"\x00")
        + b"FWVER=TIM 2.20".ljust(30, b"\x00")
        + b"MOD=ZED-F9T".ljust(30, b"\x00")
    )
    data = parsed_data(decode(build_frame(0x0A, 0x04, payload)))
    assert data["swVersion"] == "EXT CORE 1.00 (61ce84)"
    assert data["hwVersion"] == "00190000"
    assert data["extension_01"] == "FWVER=TIM 2.20"
    assert data["extension_02"] == "MOD=ZED-F9T"
    assert data["identity"] == "MON-VER"
    assert data["msg_cls"] == "0a"
    assert data["payload"] == payload.hex()
    # MON-HW's pinSel is an X004 field: hex of its four bytes.
    hardware = parsed_data(decode(build_frame(0x0A, 0x09, bytes(range(60)))))
    assert hardware["pinSel"] == "00010203"


def test_unknown_messages_get_pyubx2_names():
    """R-UBX-CAP-2: unknown types decode under pyubx2's names such as UNKNOWN-7701-NOMINAL."""
    msg = decode(build_frame(0x77, 0x01, b"\x01\x02"))
    assert message_name(msg) == "UNKNOWN-7701-NOMINAL"
    assert parsed_data(msg)["payload"] == "0102"


def test_poll_candidates_are_the_empty_payload_poll_names_sorted():
    """R-UBX-POLL-3: pyubx2's empty-payload poll names less NAV-RESETODO, matched as captures."""
    assert poll_candidates(compile_patterns(["TIM-TP$", "NAV-TIMEUTC"])) == [
        "NAV-TIMEUTC",
        "TIM-TP",
    ]
    assert poll_candidates(compile_patterns(["MON-V", "SEC-U"])) == ["MON-VER", "SEC-UNIQID"]
    assert poll_candidates(compile_patterns(["NAV-RESET"])) == []
    assert poll_candidates(compile_patterns(["CFG-VALGET"])) == []  # needs a payload
    everything = poll_candidates(compile_patterns([]))
    assert everything == sorted(everything) == list(POLLABLE_NAMES)
    assert "NAV-RESETODO" not in everything
    assert "CFG-INF" not in everything


def test_poll_frames_are_class_and_id_without_payload():
    """R-UBX-POLL-3, R-UBX-INIT-5/6: MON-VER and SEC-UNIQID polls as the chip expects them."""
    assert poll_frame("MON-VER") == bytes.fromhex("b5620a0400000e34")
    assert poll_frame("SEC-UNIQID") == build_frame(0x27, 0x03)
    assert poll_frame("TIM-TP") == build_frame(0x0D, 0x01)
    for name in POLLABLE_NAMES:
        frame = poll_frame(name)
        assert (frame[2], frame[3]) == class_and_id(name)
        assert len(frame) == 8
    with pytest.raises(ValueError, match="not a message that can be polled"):
        poll_frame("NAV-RESETODO")
    assert class_and_id("CFG-VALSET") == (0x06, 0x8A)
    with pytest.raises(ValueError, match="pyubx2 knows"):
        class_and_id("NOT-AMESSAGE")


def mon_ver_frame(*extensions: bytes, sw: bytes = b"EXT CORE 1.00 (61ce84)") -> bytes:
    payload = sw.ljust(30, b"\x00") + b"00190000".ljust(10, b"\x00")
    payload += b"".join(extension.ljust(30, b"\x00") for extension in extensions)
    return build_frame(0x0A, 0x04, payload)


def test_chip_version_reads_model_firmware_and_protocol():
    """R-UBX-INIT-5: the model after MOD= (NULs stripped), FWVER=, PROTVER=, versions."""
    msg = decode(
        mon_ver_frame(b"ROM BASE 0x118B2060", b"FWVER=TIM 2.20", b"PROTVER=29.20", b"MOD=ZED-F9T")
    )
    assert chip_version(msg) == ChipVersion(
        model="ZED-F9T",
        sw_version="EXT CORE 1.00 (61ce84)",
        hw_version="00190000",
        fwver="TIM 2.20",
        protver="29.20",
    )
    # The first extension starting with MOD= counts; one containing it elsewhere does not.
    other = decode(mon_ver_frame(b"XMOD=ZED-F9P", b"MOD=NEO-M8T", b"MOD=ZED-F9T"))
    assert chip_version(other).model == "NEO-M8T"
    assert chip_version(decode(mon_ver_frame(b"FWVER=SPG 1.00"))).model == "UNKNOWN"
    assert chip_version(decode(mon_ver_frame())).fwver == ""
    with pytest.raises(ValueError, match="needs a MON-VER"):
        chip_version(decode(RECORDED_FRAMES[2]))


def test_chip_uid_is_the_five_bytes_little_endian_in_uppercase_hex():
    """R-UBX-INIT-6: uniqueId bytes BC 41 A2 03 DF on the wire print as DF03A241BC."""
    msg = decode(build_frame(0x27, 0x03, bytes([1, 0, 0, 0, 0xBC, 0x41, 0xA2, 0x03, 0xDF])))
    assert chip_uid(msg) == "DF03A241BC"
    assert byte_reversed_uid("DF03A241BC") == "BC41A203DF"
    small = decode(build_frame(0x27, 0x03, bytes([1, 0, 0, 0, 0x0A, 0, 0, 0, 0])))
    assert chip_uid(small) == "000000000A"
    with pytest.raises(ValueError, match="needs a SEC-UNIQID"):
        chip_uid(decode(RECORDED_FRAMES[2]))


def test_ack_of_names_the_acknowledged_message():
    """R-UBX-INIT-7: the recording's first ACK-ACK acknowledges CFG-VALGET (06 8B), not VALSET."""
    assert ack_of(decode(RECORDED_FRAMES[0])) == (True, 0x06, 0x8B)
    assert ack_of(decode(build_frame(0x05, 0x00, b"\x06\x8a"))) == (False, 0x06, 0x8A)
    assert ack_of(decode(RECORDED_FRAMES[2])) is None


MIXED_ITEMS = [
    ("CFG_TP_DUTY_TP1", 0.01),  # R8
    ("CFG_NAVSPG_USRDAT_DX", 1.1),  # R4
    ("CFG_INFMSG_UBX_USB", b"\x07"),  # X1
    ("CFG_TMODE_LAT", -1220840575),  # I4
    ("CFG_SIGNAL_GPS_ENA", 1),  # L
    ("CFG_TP_FREQ_TP2", 10_000_000),  # U4
]


def test_valset_carries_every_item_to_the_layers():
    """R-UBX-INIT-7: one CFG-VALSET (no transaction) for up to 64 items, RAM+BBR bits set."""
    (batch,) = valset_batches(MIXED_ITEMS, SET_LAYER_BITS["RAM"] | SET_LAYER_BITS["BBR"])
    assert batch.keys == tuple(key for key, _ in MIXED_ITEMS)
    msg = decode(batch.frame, msgmode=SET)
    assert (msg.version, msg.ram, msg.bbr, msg.flash, msg.action) == (0, 1, 1, 0, 0)
    assert msg.CFG_INFMSG_UBX_USB == b"\x07"
    assert msg.CFG_TMODE_LAT == -1220840575
    assert valset_frames(MIXED_ITEMS, 3) == [batch.frame]
    assert valset_frames(MIXED_ITEMS, ["ram", "BBR"]) == [batch.frame]
    flash = decode(valset_frames(MIXED_ITEMS, ("FLASH",))[0], msgmode=SET)
    assert (flash.ram, flash.bbr, flash.flash) == (0, 0, 1)
    with pytest.raises(ValueError, match="names no RAM"):
        valset_batches(MIXED_ITEMS, 0)
    with pytest.raises(ValueError, match="'DEFAULT' is not a layer CFG-VALSET writes"):
        valset_batches(MIXED_ITEMS, ["DEFAULT"])


@pytest.mark.parametrize(("count", "actions"), [(64, [0]), (65, [1, 3]), (130, [1, 2, 3])])
def test_more_than_64_items_are_one_transaction(count, actions):
    """R-UBX-INIT-7: at most 64 pairs a message; a larger group is start, ongoing..., apply."""
    keys = [name for name, (_, kind) in CONFIG_DATABASE.items() if kind == "U001"][:count]
    batches = valset_batches([(key, 0) for key in keys], 1)
    assert [decode(b.frame, msgmode=SET).action for b in batches] == actions
    assert [key for b in batches for key in b.keys] == keys
    assert all(len(b.keys) <= MAX_CONFIG_ITEMS for b in batches)


def valget_answer(items: list[tuple[str, object]], layer: int = 0) -> bytes:
    payload = bytes([1, layer, 0, 0])
    for key, value in items:
        key_id, kind = CONFIG_DATABASE[key]
        payload += key_id.to_bytes(4, "little") + val2bytes(value, kind)
    return build_frame(0x06, 0x8B, payload)


def test_valget_polls_and_answers():
    """R-UBX-INIT-8: polls of at most 64 keys from the named layer; an answer's values by key."""
    keys = [key for key, _ in MIXED_ITEMS]
    (poll,) = valget_batches(keys, "bbr")
    msg = decode(poll.frame, msgmode=POLL)
    assert (msg.layer, poll.keys) == (1, tuple(keys))
    assert len(valget_frames([f"{key}" for key, _ in MIXED_ITEMS] * 11, "RAM")) == 2
    answer = decode(valget_answer(MIXED_ITEMS))
    values = valget_values(answer)
    assert list(values) == keys
    assert all(value_matches(key, wanted, values[key]) for key, wanted in MIXED_ITEMS)
    unknown = decode(build_frame(0x06, 0x8B, bytes([1, 0, 0, 0]) + bytes.fromhex("ffffff40") * 2))
    assert valget_values(unknown) == {"CFG_0x40ffffff": b"\xff\xff\xff\x40"}
    assert parsed_data(unknown)["CFG_0x40ffffff"] == "ffffff40"


@pytest.mark.parametrize(
    ("key", "wanted", "got", "expected"),
    [
        ("CFG_NAVSPG_USRDAT_DX", 1.1, 1.100000023841858, True),  # R4: wanted rounded to float32
        ("CFG_NAVSPG_USRDAT_DX", 1.1, 1.1, False),
        ("CFG_NAVSPG_USRDAT_DX", 1e39, float("inf"), False),  # beyond float32
        ("CFG_TP_DUTY_TP1", 0.01, 0.01, True),  # R8: exactly
        ("CFG_TP_DUTY_TP1", 0.01, 0.010000000000000002, False),
        ("CFG_TP_DUTY_TP1", 50, 50.0, True),
        ("CFG_INFMSG_UBX_USB", b"\x07", b"\x07", True),  # X: as bytes
        ("CFG_INFMSG_UBX_USB", 7, b"\x07", True),
        ("CFG_INFMSG_UBX_USB", 7, 7, False),
        ("CFG_INFMSG_UBX_USB", b"\x07", b"\x06", False),
        ("CFG_INFMSG_UBX_USB", 300, b"\x2c", False),
        ("CFG_SIGNAL_GPS_ENA", True, 1, True),  # L: as 0/1
        ("CFG_SIGNAL_GPS_ENA", 0, 0, True),
        ("CFG_SIGNAL_GPS_ENA", 1, 0, False),
        ("CFG_TP_FREQ_TP2", 10_000_000.0, 10_000_000, True),  # U: as integers
        ("CFG_TP_FREQ_TP2", 10_000_000, 9_999_999, False),
        ("CFG_TMODE_LAT", -5, -5, True),
        ("CFG_TP_FREQ_TP2", 1, None, False),  # missing
        ("CFG_TP_FREQ_TP2", 1, b"\x01", False),
    ],
)
def test_value_matches_by_type(key, wanted, got, expected):
    """R-UBX-INIT-8: L as 0/1, U/I/E integers, R8 exactly, R4 after float32 rounding, X bytes."""
    assert value_matches(key, wanted, got) is expected
