"""White Rabbit time to Unix time, exactly (R-TIME-1 .. R-TIME-4).

Hashpipe records, per packet, the White Rabbit clock (`pkt_tai`: low 10 bits of TAI seconds,
`pkt_nsec`: nanoseconds) and the DAQ host clock when the packet arrived (`tv_sec`, `tv_usec`).
The host clock supplies the high bits of the seconds; WR supplies the precision.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas (~35 MB) is imported where a Timestamp is made: not by the server
    import pandas as pd
    from pandas.api.typing import NaTType

__all__ = [
    "TAI_UTC_OFFSET_S",
    "FrameTime",
    "TimestampWarnings",
    "frame_time",
    "timing_fields",
    "to_millisecond",
    "wr_to_unix_ns",
]

TAI_UTC_OFFSET_S = 37
_NS = 1_000_000_000
# d = (tv_sec - pkt_tai + 37) mod 1024 -> seconds to add to tv_sec (R-TIME-1).
_SECOND_CORRECTION = {0: 0, 1: -1, 1023: 1}


def wr_to_unix_ns(pkt_tai: int, pkt_nsec: int, tv_sec: int) -> int | None:
    """Unix time in integer nanoseconds, or None when WR and host clocks disagree by > 1 s."""
    d = (int(tv_sec) - int(pkt_tai) + TAI_UTC_OFFSET_S) % 1024
    correction = _SECOND_CORRECTION.get(d)
    if correction is None:
        return None
    return (int(tv_sec) + correction) * _NS + int(pkt_nsec)


# The times a pandas Timestamp (int64 nanoseconds) can hold: 1677-09-21 .. 2262-04-11.
MIN_UNIX_NS = -(2**63) + 1
MAX_UNIX_NS = 2**63 - 1


@dataclass(frozen=True)
class FrameTime:
    """When a frame was taken: WR time when available, else the host clock (R-TIME-4).

    `problem` says why a header's time fields give no time (a value that is not finite, or a
    time no timestamp can hold, R-CLI-11); None when they are fine or simply absent.
    """

    wr_unix_ns: int | None
    host_unix_ns: int | None
    problem: str | None = None

    @property
    def wr_valid(self) -> bool:
        return self.wr_unix_ns is not None

    @property
    def unix_ns(self) -> int | None:
        """The best time available: WR, else the host clock, else None."""
        return self.wr_unix_ns if self.wr_unix_ns is not None else self.host_unix_ns

    @property
    def wr_unix_timestamp(self) -> Decimal | None:
        """WR time in seconds as an exact Decimal (R-TIME-2)."""
        if self.wr_unix_ns is None:
            return None
        return Decimal(self.wr_unix_ns).scaleb(-9)

    @property
    def pandas_timestamp(self) -> pd.Timestamp | NaTType:
        """WR time to the nanosecond, else the host clock, else NaT."""
        ns = self.unix_ns
        import pandas as pd

        return pd.NaT if ns is None else pd.Timestamp(ns, unit="ns")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value)


def timing_fields(header: Mapping[str, Any]) -> Mapping[str, Any]:
    """The quabo header whose fields time the image (R-TIME-3).

    A 32x32 image carries `quabo_0` .. `quabo_3`; use quabo_0, or the lowest quabo present.
    A ph256 image carries flat fields.
    """
    if "pkt_tai" in header or "tv_sec" in header:
        return header
    quabos = sorted(
        (k for k, v in header.items() if k.startswith("quabo_") and isinstance(v, Mapping)),
        key=lambda k: (len(k), k),
    )
    return header[quabos[0]] if quabos else {}


def _representable(ns: int | None) -> int | None:
    return ns if ns is not None and MIN_UNIX_NS <= ns <= MAX_UNIX_NS else None


def frame_time(header: Mapping[str, Any]) -> FrameTime:
    """The time of an image from its PFF header; never raises for missing or odd fields.

    R-CLI-11: a time that cannot be represented (out of range, NaN, infinite) is no time, and
    `problem` names the field.
    """
    fields = timing_fields(header)
    names = ("pkt_tai", "pkt_nsec", "tv_sec", "tv_usec")
    tai, nsec, tv_sec, tv_usec = (_as_int(fields.get(k)) for k in names)
    wr_ns = None
    if tai is not None and nsec is not None and tv_sec is not None:
        wr_ns = wr_to_unix_ns(tai, nsec, tv_sec)
    host_ns = None
    if tv_sec is not None:
        host_ns = tv_sec * _NS + (tv_usec or 0) * 1000
    problem = None
    for name in names:
        value = fields.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            problem = f"{name} is {value}"
            break
    if problem is None and (_representable(wr_ns) != wr_ns or _representable(host_ns) != host_ns):
        problem = f"tv_sec {fields.get('tv_sec')} is out of range"
    return FrameTime(_representable(wr_ns), _representable(host_ns), problem)


class TimestampWarnings:
    """One warning per (host, product) for headers whose time cannot be represented
    (R-CLI-11): the frame is still used, with no timestamp."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._warned: set[tuple[str, str]] = set()

    def check(self, host: str, product: str, time: FrameTime) -> None:
        if time.problem is None or (host, product) in self._warned:
            return
        self._warned.add((host, product))
        self._log.warning(
            "%s: a %s header's time cannot be represented (%s): such frames have no timestamp",
            host or "server",
            product,
            time.problem,
        )


def to_millisecond(stamp: Any) -> pd.Timestamp:
    """`stamp` (a pandas Timestamp, datetime or ns count) rounded to the millisecond, for
    display: a host-clock time held as a float (`...52.7999999`) shows as `.800`, not `.799`.
    TypeError or ValueError when it is not a time."""
    import pandas as pd

    return pd.Timestamp(stamp).round("ms")
