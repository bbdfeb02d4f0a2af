"""The UBX protocol, loop-free: frames out of a byte stream, pyubx2 messages, patterns, commands.

Bytes and values in, values out: no event loop, no port, no clock. pyubx2 1.4 decodes and builds
every message; what it lacks is here: splitting a non-blocking byte stream into frames
(`UbxFrameSplitter`, R-UBX-STATE-2; pyubx2's `UBXReader` reads only blocking streams), values
that travel in a google.protobuf.Struct (`parsed_data`, R-UBX-CAP-5), the capture patterns
(R-UBX-CAP-1/2; beyond the spec, a pattern whose backtracking could stall the event loop is
refused, since the loop is shared with every client), the pollable names (R-UBX-POLL-3), the
chip's identity (R-UBX-INIT-5/6) and the configuration messages with their answers and read-back
comparison (R-UBX-INIT-7/8).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyubx2
from pyubx2 import (
    GET,
    POLL,
    UBX_CONFIG_DATABASE,
    UBX_MSGIDS,
    UBX_PAYLOADS_GET,
    UBX_PAYLOADS_POLL,
    UBXMessage,
    UBXReader,
    calc_checksum,
)

# The patterns live in their own module; the protocol layer's callers import them from here too.
from .patterns import (
    MAX_PATTERN_LENGTH,
    MAX_PATTERNS,
    PatternError,
    PatternSet,
    compile_patterns,
)

__all__ = [
    "CONFIG_DATABASE",
    "MAX_CONFIG_ITEMS",
    "MAX_PATTERNS",
    "MAX_PATTERN_LENGTH",
    "MESSAGE_NAMES",
    "POLLABLE_NAMES",
    "POLL_LAYER_NUMBERS",
    "SET_LAYER_BITS",
    "SYNC",
    "ChipVersion",
    "ConfigBatch",
    "PatternError",
    "PatternSet",
    "Received",
    "UbxDecodeError",
    "UbxFrameSplitter",
    "ack_of",
    "build_frame",
    "byte_reversed_uid",
    "chip_uid",
    "chip_version",
    "class_and_id",
    "compile_patterns",
    "config_key_type",
    "decode",
    "layer_mask",
    "message_name",
    "parsed_data",
    "poll_candidates",
    "poll_frame",
    "valget_batches",
    "valget_frames",
    "valget_values",
    "valset_batches",
    "valset_frames",
    "value_matches",
]

SYNC = b"\xb5\x62"
_HEADER_LENGTH = 6  # sync (2), class, id, little-endian payload length (2)
_CHECKSUM_LENGTH = 2

# The largest payload taken for a frame. A stray B5 62 in NMEA, RTCM or line noise announces a
# random length up to 65535, and the splitter waits for that many bytes before its checksum can
# say it was not a frame; a cap bounds that wait. The largest ZED-F9T messages (RXM-RAWX, NAV-SIG,
# NAV-SAT with every signal tracked) stay well under 8 KiB.
DEFAULT_MAX_PAYLOAD = 8192


class UbxDecodeError(ValueError):
    """A checksum-valid frame that pyubx2 cannot decode (a payload too short for its type...)."""


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


# Every message name pyubx2 knows ("TIM-TP").
MESSAGE_NAMES: frozenset[str] = frozenset(UBX_MSGIDS.values())


def _character_field_names() -> dict[str, frozenset[str]]:
    """Per message name, the fields pyubx2 defines as characters (C030...), variants included."""
    by_name: dict[str, set[str]] = {}
    for name, definition in UBX_PAYLOADS_GET.items():
        fields: set[str] = set()
        _char_fields(definition, fields)
        if fields:
            by_name.setdefault(name, set()).update(fields)
    merged: dict[str, set[str]] = {}
    for name, fields in by_name.items():
        # A variant ("NAV-AOPSTATUS-L") decodes under its base identity ("NAV-AOPSTATUS").
        base = name if name in MESSAGE_NAMES else name.rsplit("-", 1)[0]
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


# R-UBX-POLL-3: the names pyubx2 can poll without a payload, less NAV-RESETODO (a command).
_NOT_POLLED = frozenset({"NAV-RESETODO"})
POLLABLE_NAMES: tuple[str, ...] = tuple(
    sorted(
        name
        for name, definition in UBX_PAYLOADS_POLL.items()
        if not definition and name not in _NOT_POLLED and name in MESSAGE_NAMES
    )
)


def poll_candidates(patterns: PatternSet) -> list[str]:
    """The pollable names `patterns` select, sorted (R-UBX-POLL-3)."""
    return [name for name in POLLABLE_NAMES if patterns.matches(name)]


def poll_frame(name: str) -> bytes:
    """The frame polling message `name` ("MON-VER"): its class and id, no payload."""
    if name not in POLLABLE_NAMES:
        raise ValueError(f"{name} is not a message that can be polled without a payload")
    return bytes(UBXMessage(name.split("-", 1)[0], name, POLL).serialize())


def class_and_id(name: str) -> tuple[int, int]:
    """The UBX class and id of a pyubx2 message name ("CFG-VALSET" -> (0x06, 0x8A))."""
    for key, known in UBX_MSGIDS.items():
        if known == name and len(key) == 2:
            return key[0], key[1]
    raise ValueError(f"{name} is not a UBX message name pyubx2 knows")


@dataclass(frozen=True)
class ChipVersion:
    """What MON-VER says about the receiver (R-UBX-INIT-5); empty strings for absent fields."""

    model: str
    sw_version: str
    hw_version: str
    fwver: str
    protver: str


def _text(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).replace(b"\x00", b"").decode("utf-8", "backslashreplace").strip()
    return str(value).replace("\x00", "").strip()


def _extensions(msg: UBXMessage) -> list[str]:
    found = [
        (int(name.rsplit("_", 1)[1]), _text(value))
        for name, value in vars(msg).items()
        if re.fullmatch(r"extension_\d+", name)
    ]
    return [text for _, text in sorted(found)]


def chip_version(msg: UBXMessage) -> ChipVersion:
    """Model, software, hardware, FWVER and PROTVER of a MON-VER answer (R-UBX-INIT-5).

    The model is the text after MOD= in the first extension starting with it, "UNKNOWN" if none.
    """
    if message_name(msg) != "MON-VER":
        raise ValueError(f"chip_version needs a MON-VER message, not {message_name(msg)}")
    extensions = _extensions(msg)

    def after(prefix: str, missing: str) -> str:
        return next((e[len(prefix) :] for e in extensions if e.startswith(prefix)), missing)

    return ChipVersion(
        model=after("MOD=", "UNKNOWN"),
        sw_version=_text(getattr(msg, "swVersion", b"")),
        hw_version=_text(getattr(msg, "hwVersion", b"")),
        fwver=after("FWVER=", ""),
        protver=after("PROTVER=", ""),
    )


def chip_uid(msg: UBXMessage) -> str:
    """The chip id of a SEC-UNIQID answer: its 5 `uniqueId` bytes read as one little-endian
    integer, as 10 uppercase hex digits (R-UBX-INIT-6; what pyubx2's U5 and PANOSETI's tools
    print: the wire order reversed)."""
    if message_name(msg) != "SEC-UNIQID":
        raise ValueError(f"chip_uid needs a SEC-UNIQID message, not {message_name(msg)}")
    return f"{int(msg.uniqueId):010X}"


def byte_reversed_uid(uid: str) -> str:
    """`uid` ("DF03A241BC") with its bytes in the other order ("BC41A203DF")."""
    return bytes.fromhex(uid)[::-1].hex().upper()


# pyubx2's configuration database: key name -> (key id, type such as "U004").
CONFIG_DATABASE: Mapping[str, tuple[int, str]] = UBX_CONFIG_DATABASE

# R-UBX-INIT-7: CFG-VALSET layer bits; R-UBX-INIT-8: CFG-VALGET layer numbers.
SET_LAYER_BITS: Mapping[str, int] = {"RAM": 1, "BBR": 2, "FLASH": 4}
POLL_LAYER_NUMBERS: Mapping[str, int] = {"RAM": 0, "BBR": 1, "FLASH": 2, "DEFAULT": 7}
MAX_CONFIG_ITEMS = 64  # key-value pairs in one CFG-VALSET, keys in one CFG-VALGET
_TXN_NONE, _TXN_START, _TXN_ONGOING, _TXN_APPLY = 0, 1, 2, 3


@dataclass(frozen=True)
class ConfigBatch:
    """One CFG-VALSET or CFG-VALGET frame and the key names it carries."""

    frame: bytes
    keys: tuple[str, ...]


def config_key_type(name: str) -> str:
    """pyubx2's type of a configuration key ("U004", "L001", "R008", "X008")."""
    return CONFIG_DATABASE[name][1]


def layer_mask(layers: int | Iterable[str]) -> int:
    """The CFG-VALSET layer bits of layer names (RAM, BBR, FLASH, any case), or a mask as given."""
    if isinstance(layers, int):
        return layers
    mask = 0
    for layer in layers:
        if layer.upper() not in SET_LAYER_BITS:
            raise ValueError(f"{layer!r} is not a layer CFG-VALSET writes (RAM, BBR, FLASH)")
        mask |= SET_LAYER_BITS[layer.upper()]
    return mask


def valset_batches(
    items: Sequence[tuple[str, object]], layers: int | Iterable[str]
) -> list[ConfigBatch]:
    """CFG-VALSET messages writing `items` ((pyubx2 key name, value) pairs, values as pyubx2 takes
    them: int, float, bytes for X) to `layers` (names or a mask of SET_LAYER_BITS, R-UBX-INIT-7).

    At most 64 pairs a message; more than 64 items go out as one transaction (start, ongoing...,
    apply) so the receiver takes all of them or none.
    """
    mask = layer_mask(layers)
    if not 0 < mask <= 7:
        raise ValueError(f"layer mask {mask} names no RAM, BBR or FLASH layer")
    chunks = [items[i : i + MAX_CONFIG_ITEMS] for i in range(0, len(items), MAX_CONFIG_ITEMS)]
    batches = []
    for index, chunk in enumerate(chunks):
        if len(chunks) == 1:
            transaction = _TXN_NONE
        elif index == 0:
            transaction = _TXN_START
        elif index == len(chunks) - 1:
            transaction = _TXN_APPLY
        else:
            transaction = _TXN_ONGOING
        msg = UBXMessage.config_set(mask, transaction, list(chunk))
        batches.append(ConfigBatch(bytes(msg.serialize()), tuple(key for key, _ in chunk)))
    return batches


def valset_frames(items: Sequence[tuple[str, object]], layers: int | Iterable[str]) -> list[bytes]:
    """The frames of `valset_batches`."""
    return [batch.frame for batch in valset_batches(items, layers)]


def valget_batches(keys: Sequence[str], layer: str) -> list[ConfigBatch]:
    """CFG-VALGET polls reading `keys` from `layer` (RAM, BBR, FLASH, DEFAULT), 64 keys a poll."""
    layer_number = POLL_LAYER_NUMBERS[layer.upper()]
    return [
        ConfigBatch(
            bytes(UBXMessage.config_poll(layer_number, 0, list(chunk)).serialize()),
            tuple(chunk),
        )
        for chunk in (keys[i : i + MAX_CONFIG_ITEMS] for i in range(0, len(keys), MAX_CONFIG_ITEMS))
    ]


def valget_frames(keys: Sequence[str], layer: str) -> list[bytes]:
    """The frames of `valget_batches`."""
    return [batch.frame for batch in valget_batches(keys, layer)]


def valget_values(msg: UBXMessage) -> dict[str, object]:
    """The key values of a CFG-VALGET answer, by pyubx2 key name (unknown keys as CFG_0x...)."""
    if message_name(msg) != "CFG-VALGET":
        raise ValueError(f"valget_values needs a CFG-VALGET answer, not {message_name(msg)}")
    return {name: value for name, value in vars(msg).items() if name.startswith("CFG_")}


def _float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _number(value: object) -> int | float | None:
    if isinstance(value, (int, float)):
        return int(value) if isinstance(value, bool) else value
    return None


def value_matches(key: str, wanted: object, got: object) -> bool:
    """Whether the value read back equals the value written, by the key's type (R-UBX-INIT-8):
    L as 0/1, U/I/E as integers, R8 exactly, R4 after rounding the wanted value to float32, X as
    bytes (an int wanted value as the key's little-endian bytes)."""
    key_type = config_key_type(key)
    kind, size = key_type[0], int(key_type[1:])
    if kind == "X":
        if isinstance(wanted, int) and not isinstance(wanted, bool):
            try:
                wanted = wanted.to_bytes(size, "little")
            except OverflowError:
                return False
        return (
            isinstance(got, (bytes, bytearray))
            and isinstance(wanted, (bytes, bytearray))
            and bytes(got) == bytes(wanted)
        )
    wanted_number, got_number = _number(wanted), _number(got)
    if wanted_number is None or got_number is None:
        return False
    if kind == "R":
        wanted_float = float(wanted_number)
        if size == 4:
            try:
                wanted_float = _float32(wanted_float)
            except (OverflowError, struct.error):
                return False
        return wanted_float == float(got_number)
    return isinstance(got_number, int) and wanted_number == got_number


def ack_of(msg: UBXMessage) -> tuple[bool, int, int] | None:
    """(acknowledged?, class, id) of an ACK-ACK or ACK-NAK; None for any other message."""
    name = message_name(msg)
    if name not in ("ACK-ACK", "ACK-NAK"):
        return None
    return name == "ACK-ACK", int(msg.clsID), int(msg.msgID)


@dataclass(frozen=True, slots=True)
class Received:
    """One UBX frame read from the port: pyubx2's name, the whole frame, the host UTC time
    (ns) at which it was read, and pyubx2's decoded message."""

    name: str
    frame: bytes
    t_ns: int
    message: Any
