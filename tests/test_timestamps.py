"""White Rabbit to Unix time (R-TIME-1 .. R-TIME-4)."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from panoseti_daq import frame_time, wr_to_unix_ns

SEED_QUABO_0 = {
    "tv_usec": 779336.0,
    "tv_sec": 1721882092.0,
    "pkt_nsec": 779007488.0,
    "pkt_num": 37993.0,
    "pkt_tai": 529.0,
}


def test_seed_example_is_exact_to_the_nanosecond():
    """R-PARSE-1, R-TIME-2, R-TIME-3: the seed README's example, quabo_0 of a 32x32 image."""
    header = {f"quabo_{i}": dict(SEED_QUABO_0) for i in range(4)}
    header["quabo_1"]["pkt_nsec"] = 779007484.0
    time = frame_time(header)
    assert time.wr_unix_timestamp == Decimal("1721882092.779007488")
    assert time.pandas_timestamp == pd.Timestamp("2024-07-25 04:34:52.779007488")
    assert time.wr_valid


def tai_for(tv_sec: int, d: int) -> int:
    """pkt_tai that gives (tv_sec - pkt_tai + 37) mod 1024 == d."""
    return (tv_sec + 37 - d) % 1024


@given(tv_sec=st.integers(1_000_000_000, 2_000_000_000), nsec=st.integers(0, 999_999_999))
def test_wrap_cases(tv_sec, nsec):
    """R-TIME-1: d == 0 -> tv_sec, d == 1 -> tv_sec - 1, d == 1023 -> tv_sec + 1."""
    ns = 1_000_000_000
    assert wr_to_unix_ns(tai_for(tv_sec, 0), nsec, tv_sec) == tv_sec * ns + nsec
    assert wr_to_unix_ns(tai_for(tv_sec, 1), nsec, tv_sec) == (tv_sec - 1) * ns + nsec
    assert wr_to_unix_ns(tai_for(tv_sec, 1023), nsec, tv_sec) == (tv_sec + 1) * ns + nsec


@given(tv_sec=st.integers(1_000_000_000, 2_000_000_000), d=st.integers(2, 1022))
def test_clock_disagreement_means_no_wr_time(tv_sec, d):
    """R-TIME-1: any other d means the clocks disagree by more than a second."""
    assert wr_to_unix_ns(tai_for(tv_sec, d), 5, tv_sec) is None


def test_tai_wraps_across_1024_boundary():
    """R-TIME-1: pkt_tai holds only 10 bits; the host second just after a wrap still matches."""
    tv_sec = 1024 * 1_700_000 - 37  # tv_sec + 37 is a multiple of 1024: pkt_tai wrapped to 0
    assert wr_to_unix_ns(0, 1, tv_sec) == tv_sec * 1_000_000_000 + 1
    # WR still in the previous second (pkt_tai 1023, before the wrap): host clock is 1 s ahead.
    assert wr_to_unix_ns(1023, 1, tv_sec) == (tv_sec - 1) * 1_000_000_000 + 1
    # WR already in the next second (pkt_tai 1, after the wrap): host clock is 1 s behind.
    assert wr_to_unix_ns(1, 1, tv_sec) == (tv_sec + 1) * 1_000_000_000 + 1


def test_desync_falls_back_to_host_clock_and_flags_it():
    """R-TIME-4: parsing succeeds, pandas time from tv_sec + tv_usec, WR flagged unavailable."""
    header = {
        "quabo_num": 0,
        "pkt_tai": 319,
        "pkt_nsec": 1070705171,
        "tv_sec": 1754043734,
        "tv_usec": 746674,
    }
    time = frame_time(header)
    assert not time.wr_valid
    assert time.wr_unix_timestamp is None
    assert time.pandas_timestamp == pd.Timestamp("2025-08-01 10:22:14.746674")


def test_missing_fields_give_nat_not_an_error():
    """R-TIME-4: an uploaded image may carry no timing fields at all."""
    assert frame_time({}).pandas_timestamp is pd.NaT
    assert frame_time({"quabo_0": {"pkt_num": 3}}).unix_ns is None
