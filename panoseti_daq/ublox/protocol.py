"""The UBX protocol, loop-free: frames out of a byte stream, pyubx2 messages, patterns, commands.

Bytes and values in, values out: no event loop, no port, no clock. pyubx2 1.4 decodes and builds
every message; what it lacks is here: splitting a non-blocking byte stream into frames
(`UbxFrameSplitter`, R-UBX-STATE-2; pyubx2's `UBXReader` reads only blocking streams), values
that travel in a google.protobuf.Struct (`parsed_data`, R-UBX-CAP-5), the capture patterns
(R-UBX-CAP-1/2), the pollable names (R-UBX-POLL-3), the chip's identity (R-UBX-INIT-5/6) and the
configuration messages with their answers and read-back comparison (R-UBX-INIT-7/8).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import pyubx2
from pyubx2 import (
    GET,
    UBX_MSGIDS,
    UBX_PAYLOADS_GET,
    UBXMessage,
    UBXReader,
    calc_checksum,
)

__all__ = [
    "MAX_PATTERNS",
    "MAX_PATTERN_LENGTH",
    "SYNC",
    "PatternError",
    "PatternSet",
    "UbxDecodeError",
    "UbxFrameSplitter",
    "build_frame",
    "compile_patterns",
    "decode",
    "message_name",
    "parsed_data",
]

SYNC = b"\xb5\x62"
_HEADER_LENGTH = 6  # sync (2), class, id, little-endian payload length (2)
_CHECKSUM_LENGTH = 2

# The largest payload taken for a frame. A stray B5 62 in NMEA, RTCM or line noise announces a
# random length up to 65535, and the splitter waits for that many bytes before its checksum can
# say it was not a frame; a cap bounds that wait. The largest ZED-F9T messages (RXM-RAWX, NAV-SIG,
# NAV-SAT with every signal tracked) stay well under 8 KiB.
DEFAULT_MAX_PAYLOAD = 8192

# R-UBX-CAP-1
MAX_PATTERNS = 64
MAX_PATTERN_LENGTH = 256


class UbxDecodeError(ValueError):
    """A checksum-valid frame that pyubx2 cannot decode (a payload too short for its type...)."""


class PatternError(ValueError):
    """A capture or poll pattern list that breaks R-UBX-CAP-1: the message names the pattern."""


class UbxFrameSplitter:
    """Whole, checksum-valid UBX frames out of arbitrarily chunked bytes (R-UBX-STATE-2).

    A frame is sync B5 62, class, id, little-endian payload length, payload and the 8-bit
    Fletcher checksum of class..payload. Bytes before a sync (NMEA, RTCM, garbage) are dropped
    and counted in `skipped_bytes`. A candidate whose checksum fails counts in `bad_checksums`;
    only its two sync bytes are dropped and the search resumes right after them, so real frames
    a false sync swallowed are still found. The result does not depend on how the input is
    chunked: every byte fed is either in a returned frame, counted in `skipped_bytes`, or
    `pending` (a possible frame's start, waiting for the rest).
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.bad_checksums = 0
        self.skipped_bytes = 0
        self.frames = 0
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back: the start of a frame whose end has not arrived yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data`; return every frame completed by it, in stream order."""
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        start = 0
        while True:
            sync_at = buffer.find(SYNC, start)
            if sync_at < 0:
                # Keep a trailing B5: it may be the first half of a sync split across chunks.
                keep_from = len(buffer) - 1 if buffer.endswith(SYNC[:1]) else len(buffer)
                keep_from = max(keep_from, start)
                self.skipped_bytes += keep_from - start
                start = keep_from
                break
            self.skipped_bytes += sync_at - start
            start = sync_at
            if len(buffer) - start < _HEADER_LENGTH:
                break
            length = buffer[start + 4] | buffer[start + 5] << 8
            if length > self.max_payload:
                self.skipped_bytes += len(SYNC)
                start += len(SYNC)
                continue
            end = start + _HEADER_LENGTH + length + _CHECKSUM_LENGTH
            if len(buffer) < end:
                break
            if calc_checksum(bytes(buffer[start + 2 : end - 2])) == buffer[end - 2 : end]:
                frames.append(bytes(buffer[start:end]))
                start = end
            else:
                self.bad_checksums += 1
                self.skipped_bytes += len(SYNC)
                start += len(SYNC)
        del buffer[:start]
        self.frames += len(frames)
        return frames


def build_frame(msg_class: int, msg_id: int, payload: bytes = b"") -> bytes:
    """One whole UBX frame: sync, class, id, length, `payload`, checksum."""
    if not (0 <= msg_class <= 0xFF and 0 <= msg_id <= 0xFF):
        raise ValueError(f"UBX class and id are single bytes, got {msg_class:#x}, {msg_id:#x}")
    if len(payload) > 0xFFFF:
        raise ValueError(f"UBX payload of {len(payload)} bytes is longer than 65535")
    body = bytes((msg_class, msg_id)) + len(payload).to_bytes(2, "little") + payload
    return SYNC + body + bytes(calc_checksum(body))


# What pyubx2 raises on a payload that does not fit its message definition: its own errors and
# the Python errors its field decoders let through (a short array field: IndexError).
_PYUBX2_DECODE_ERRORS = (
    pyubx2.UBXParseError,
    pyubx2.UBXMessageError,
    pyubx2.UBXTypeError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
    ZeroDivisionError,
)


def decode(frame: bytes, msgmode: int = GET) -> UBXMessage:
    """The pyubx2 message of one whole frame (checksum checked); `UbxDecodeError` if it has none.

    `msgmode` is pyubx2's: GET for the receiver's output, SET or POLL for commands to it.
    """
    try:
        return UBXReader.parse(frame, msgmode=msgmode)
    except _PYUBX2_DECODE_ERRORS as err:
        head = frame[:6].hex(" ")
        raise UbxDecodeError(f"undecodable UBX frame ({head} ...): {err}") from err


def message_name(msg: UBXMessage) -> str:
    """pyubx2's identity of a message: "TIM-TP", "ACK-ACK", "UNKNOWN-7701-NOMINAL" (R-UBX-CAP-2)."""
    return str(msg.identity)


def _char_fields(definition: Mapping[str, Any], into: set[str]) -> None:
    for name, field_type in definition.items():
        if isinstance(field_type, tuple) and isinstance(field_type[1], dict):
            _char_fields(field_type[1], into)  # a repeating group or a bitfield
        elif isinstance(field_type, str) and field_type.startswith("C"):
            into.add(name)


def _character_field_names() -> dict[str, frozenset[str]]:
    """Per message name, the fields pyubx2 defines as characters (C030...), variants included."""
    by_name: dict[str, set[str]] = {}
    for name, definition in UBX_PAYLOADS_GET.items():
        fields: set[str] = set()
        _char_fields(definition, fields)
        if fields:
            by_name.setdefault(name, set()).update(fields)
    known = set(UBX_MSGIDS.values())
    merged: dict[str, set[str]] = {}
    for name, fields in by_name.items():
        # A variant ("NAV-AOPSTATUS-L") decodes under its base identity ("NAV-AOPSTATUS").
        base = name if name in known else name.rsplit("-", 1)[0]
        merged.setdefault(base, set()).update(fields)
    return {name: frozenset(fields) for name, fields in merged.items()}


_CHARACTER_FIELDS = _character_field_names()
_GROUP_SUFFIX = re.compile(r"(_\d{2})+$")


def _struct_value(name: str, value: object, char_fields: frozenset[str]) -> object:
    if isinstance(value, (bytes, bytearray)):
        if _GROUP_SUFFIX.sub("", name) in char_fields:
            return bytes(value).replace(b"\x00", b"").decode("utf-8", "backslashreplace")
        return bytes(value).hex()
    if isinstance(value, list):
        return [_struct_value(name, item, char_fields) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def parsed_data(msg: UBXMessage) -> dict[str, object]:
    """Every field pyubx2 decoded, as values a google.protobuf.Struct holds (R-UBX-CAP-5).

    Field names are pyubx2's (bitfields split into named bits, scaled fields scaled, group
    members suffixed _01, _02...), plus `identity`, `length` (payload bytes), `msgmode`,
    `msg_cls`, `msg_id` and `payload`. Character fields become text without NULs; other bytes
    (`msg_cls`, `msg_id`, `payload`, X fields) lowercase hex; non-finite floats their text.
    """
    identity = message_name(msg)
    char_fields = _CHARACTER_FIELDS.get(identity, frozenset())
    data: dict[str, object] = {
        name: _struct_value(name, value, char_fields)
        for name, value in vars(msg).items()
        if not name.startswith("_")
    }
    data["identity"] = identity
    data["length"] = len(msg.payload)
    data["msgmode"] = int(msg.msgmode)
    data["msg_cls"] = bytes(msg.msg_cls).hex()
    data["msg_id"] = bytes(msg.msg_id).hex()
    data["payload"] = bytes(msg.payload).hex()
    return data


class PatternSet:
    """Compiled capture or poll patterns: a name matches when any pattern matches at its start.

    No patterns matches every name (R-UBX-CAP-2). Results are remembered per name, so a costly
    pattern costs once per message name, not once per message.
    """

    def __init__(self, patterns: tuple[str, ...], compiled: tuple[re.Pattern[str], ...]) -> None:
        self.patterns = patterns
        self._compiled = compiled
        self._seen: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"PatternSet({list(self.patterns)!r})"

    def matches(self, name: str) -> bool:
        """True when `name` ("TIM-TP") is selected by these patterns."""
        known = self._seen.get(name)
        if known is None:
            known = not self._compiled or any(p.match(name) for p in self._compiled)
            if len(self._seen) < 4096:
                self._seen[name] = known
        return known


def compile_patterns(patterns: Iterable[str]) -> PatternSet:
    """Python regexes, each matched at the start of a name (`re.match`); `PatternError` names the
    pattern and the problem when one is invalid, too long, or there are too many (R-UBX-CAP-1).
    """
    given = list(patterns)
    if len(given) > MAX_PATTERNS:
        raise PatternError(f"{len(given)} patterns given; at most {MAX_PATTERNS} are allowed")
    compiled: list[re.Pattern[str]] = []
    for pattern in given:
        if not isinstance(pattern, str):
            raise PatternError(f"pattern {pattern!r} is not a string")
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise PatternError(
                f"pattern {pattern[:40]!r}... is {len(pattern)} characters long; "
                f"at most {MAX_PATTERN_LENGTH} are allowed"
            )
        try:
            compiled.append(re.compile(pattern))
        except (re.error, RecursionError, OverflowError) as err:
            raise PatternError(
                f"pattern {pattern!r} is not a valid regular expression: {err}"
            ) from err
    return PatternSet(tuple(given), tuple(compiled))
