"""UbloxMessage: one CaptureUbloxResponse as a client uses it (loop-free).

The server sends each UBX message three ways at once: the whole frame (`payload`), its fields as
a google.protobuf.Struct (`parsed_data`, where every number is a double) and the host UTC time at
which it read the frame. A `UbloxMessage` keeps the frame and decodes it again with pyubx2
(`protocol.parsed_data`), so that its `parsed` dict has the same keys as the server's and
pyubx2's own types (integers stay integers whatever their value); a frame that does not decode
falls back to the Struct's values. On top of that it offers what a timing client reads:
`qerr_ps` (TIM-TP's quantisation error in picoseconds), `utc` (an aware datetime: the pulse's
time for TIM-TP, the navigation epoch for NAV-TIMEUTC), `utc_ns`, `t_acc_ns` and `utc_valid`.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from . import protocol

log = logging.getLogger(__name__)

__all__ = [
    "GPS_EPOCH_UNIX_S",
    "MessageKind",
    "UbloxMessage",
    "dropped_before",
    "read_recording",
    "recording_line",
    "utc_datetime",
]

# 1980-01-06T00:00:00Z: week 0 of GPS time, also the origin of TIM-TP's week on the UTC time base.
GPS_EPOCH_UNIX_S = 315_964_800
_WEEK_S = 7 * 86_400
_NS = 1_000_000_000
_DROPPED = re.compile(r"dropped (\d+) messages?")

# "data": a UBX message from the chip (its `notice` may say the server dropped some before it);
# "notice": a notice of the server (type ERROR: a silent chip, an unanswered poll);
# "status": said by this client about a node's stream (it failed, or is being retried).
MessageKind = Literal["data", "notice", "status"]


def dropped_before(notice: str) -> int:
    """The messages the server dropped for this stream just before this one (R-UBX-CAP-6)."""
    found = _DROPPED.search(notice)
    return int(found.group(1)) if found else 0


def _number(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


@dataclass(frozen=True)
class UbloxMessage:
    """One message of a CaptureUblox stream or a PollMessage reply, from DAQ node `host`.

    `name` is pyubx2's identity ("TIM-TP", "NAV-TIMEUTC"; empty for a notice about the whole
    stream); `parsed` every field pyubx2 decodes plus the original's metadata keys; `frame` the
    whole UBX frame (sync bytes to checksum); `host_time_ns` the server's UTC clock when it read
    the frame, in ns since the Unix epoch (to the µs, as betterproto2 hands over the Timestamp;
    0 when there is none); `notice` the server's text
    (an overrun, a silence, an unanswered poll) or this client's (`kind` "status").
    """

    host: str
    name: str
    parsed: Mapping[str, Any] = field(default_factory=dict)
    frame: bytes = b""
    host_time_ns: int = 0
    notice: str = ""
    kind: MessageKind = "data"

    @classmethod
    def from_frame(cls, frame: bytes, host: str = "", host_time_ns: int = 0) -> UbloxMessage:
        """The message of a whole UBX frame (UbxDecodeError if pyubx2 cannot decode it)."""
        parsed = protocol.parsed_data(protocol.decode(frame))
        return cls(host, str(parsed["identity"]), parsed, frame, host_time_ns)

    @classmethod
    def from_response(cls, response: Any, host: str) -> UbloxMessage:
        """The message of a betterproto2 CaptureUbloxResponse received from `host`."""
        stamp = response.pkt_unix_timestamp
        host_time_ns = 0
        if isinstance(stamp, datetime):
            delta = stamp - datetime(1970, 1, 1, tzinfo=timezone.utc)
            host_time_ns = (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1000
        kind: MessageKind = "data" if int(response.type) == 1 else "notice"
        frame = bytes(response.payload)
        parsed = _parsed(frame) if kind == "data" and frame else None
        if parsed is None:
            struct = response.parsed_data
            parsed = struct.to_dict() if struct is not None else {}
        return cls(host, response.name, parsed, frame, host_time_ns, response.message, kind)

    # -- what the server says about the stream --------------------------------------------
    @property
    def is_data(self) -> bool:
        """Whether this is a UBX message of the chip (not a notice)."""
        return self.kind == "data"

    @property
    def dropped_before(self) -> int:
        """Messages the server dropped for this stream just before this one (R-UBX-CAP-6)."""
        return dropped_before(self.notice) if self.kind == "data" else 0

    @property
    def host_time(self) -> datetime | None:
        """When the server read the frame, as an aware UTC datetime (µs); None if unknown."""
        if not self.host_time_ns:
            return None
        return utc_datetime(self.host_time_ns)

    # -- timing ----------------------------------------------------------------------------
    @property
    def qerr_ps(self) -> int | None:
        """TIM-TP: the next pulse's quantisation error in ps; None for other messages and when
        the chip flags it invalid (qErrInvalid)."""
        if self.name != "TIM-TP" or _number(self.parsed.get("qErrInvalid")):
            return None
        return _number(self.parsed.get("qErr"))

    @property
    def utc_ns(self) -> int | None:
        """UTC in ns since the Unix epoch: for TIM-TP the time of the pulse it announces (when
        its time base is UTC; None on a GNSS time base), for NAV-TIMEUTC the navigation epoch
        (None if the date fields are not a date). Other messages: None."""
        if self.name == "TIM-TP":
            return _pulse_utc_ns(self.parsed)
        if self.name == "NAV-TIMEUTC":
            return _epoch_utc_ns(self.parsed)
        return None

    @property
    def utc(self) -> datetime | None:
        """`utc_ns` as an aware UTC datetime (rounded down to the microsecond)."""
        ns = self.utc_ns
        return None if ns is None else utc_datetime(ns)

    @property
    def utc_valid(self) -> bool | None:
        """NAV-TIMEUTC: the chip's validUTC flag; TIM-TP: its `utc` flag (UTC available);
        None for other messages."""
        key = {"NAV-TIMEUTC": "validUTC", "TIM-TP": "utc"}.get(self.name)
        if key is None:
            return None
        return bool(_number(self.parsed.get(key)))

    @property
    def t_acc_ns(self) -> int | None:
        """NAV-TIMEUTC: the time accuracy estimate in ns; None for other messages."""
        if self.name != "NAV-TIMEUTC":
            return None
        return _number(self.parsed.get("tAcc"))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict: host, name, kind, notice, dropped_before, host_time (aware datetime),
        qerr_ps, utc (aware datetime), utc_valid, t_acc_ns, parsed_data and frame."""
        return {
            "host": self.host,
            "name": self.name,
            "kind": self.kind,
            "notice": self.notice,
            "dropped_before": self.dropped_before,
            "host_time": self.host_time,
            "qerr_ps": self.qerr_ps,
            "utc": self.utc,
            "utc_valid": self.utc_valid,
            "t_acc_ns": self.t_acc_ns,
            "parsed_data": dict(self.parsed),
            "frame": self.frame,
        }


def recording_line(message: UbloxMessage) -> str:
    """One JSON line of a recording: the original's `identity` and `payload_b64` (the whole
    frame, as its save_raw_ubx.py wrote them), plus `host` and `host_time_ns`."""
    return json.dumps(
        {
            "identity": message.name,
            "payload_b64": base64.b64encode(message.frame).decode("ascii"),
            "host": message.host,
            "host_time_ns": message.host_time_ns,
        }
    )


def read_recording(path: str | os.PathLike[str]) -> Iterator[UbloxMessage]:
    """The messages of a JSON Lines recording (ours, or the original's ubx_packets.jsonl);
    ValueError naming the file and line for one that is not a recorded UBX frame."""
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                frame = base64.b64decode(entry["payload_b64"], validate=True)
                host, stamp = str(entry.get("host", "")), int(entry.get("host_time_ns", 0))
                yield UbloxMessage.from_frame(frame, host, stamp)
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                raise ValueError(
                    f"{os.fspath(path)} line {number}: not a recorded UBX frame "
                    f'({{"identity": ..., "payload_b64": ...}}): {exc}'
                ) from None


def _parsed(frame: bytes) -> dict[str, Any] | None:
    """pyubx2's fields of a whole frame, as the server makes them; None if it does not decode."""
    try:
        return dict(protocol.parsed_data(protocol.decode(frame)))
    except protocol.UbxDecodeError as exc:
        log.debug("using the server's parsed_data: %s", exc)
        return None


def utc_datetime(ns: int) -> datetime:
    """An aware UTC datetime of Unix nanoseconds (to the microsecond)."""
    seconds, rest = divmod(ns, _NS)
    stamp = datetime.fromtimestamp(seconds, timezone.utc)
    return stamp.replace(microsecond=rest // 1000)


def _pulse_utc_ns(parsed: Mapping[str, Any]) -> int | None:
    """TIM-TP on the UTC time base: week and time of week count from 1980-01-06 in UTC."""
    week, tow_ms = _number(parsed.get("week")), _number(parsed.get("towMS"))
    sub_ms = parsed.get("towSubMS", 0)
    if _number(parsed.get("timeBase")) != 1 or week is None or tow_ms is None:
        return None
    if isinstance(sub_ms, bool) or not isinstance(sub_ms, (int, float)):
        return None
    return (GPS_EPOCH_UNIX_S + week * _WEEK_S) * _NS + tow_ms * 1_000_000 + round(sub_ms * 1e6)


def _epoch_utc_ns(parsed: Mapping[str, Any]) -> int | None:
    """NAV-TIMEUTC: the calendar fields plus `nano` (signed, may be negative)."""
    keys = ("year", "month", "day", "hour", "min", "sec", "nano")
    values = [_number(parsed.get(key)) for key in keys]
    if any(value is None for value in values):
        return None
    year, month, day, hour, minute, sec, nano = (int(v or 0) for v in values)
    if not (1 <= month <= 12 and 1 <= day <= 31 and year >= 1980):
        return None
    # timegm carries a leap second (sec 60) into the next minute.
    seconds = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0))
    return seconds * _NS + nano
