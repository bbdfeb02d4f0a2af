"""The simulated ZED-F9T's behaviour, loop-free: host frames in, the chip's frames out.

`ChipModel` is what the simulator (simulator.py) runs behind its pseudo-terminal: identity
(MON-VER, SEC-UNIQID), the configuration layers with CFG-VALSET transactions and CFG-VALGET
answers, polls, and the periodic TIM-TP / NAV-TIMEUTC / NMEA output. It takes whole UBX frames
and the time as arguments and returns whole frames; the pty, the timing and the faults of the
wire (bad checksums, garbage, split writes, noise) belong to the simulator. Chip-level faults
(NAK the next VALSET or VALGET, a wrong read-back, another model or UID) are attributes here.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import logging
import math
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from pyubx2 import (
    GET,
    POLL,
    SET,
    SETPOLL,
    UBX_CONFIG_DATABASE,
    UBX_CONFIG_STORSIZE,
    UBXMessage,
    UBXReader,
    attsiz,
    atttyp,
    val2bytes,
)

_log = logging.getLogger(__name__)

Port = Literal["USB", "UART1"]
Source = Literal["synthetic", "recorded"]
ConfigValue = int | float | bytes

LAYERS = ("RAM", "BBR", "FLASH")
# CFG-VALSET's layer bits and CFG-VALGET's layer numbers (u-blox interface description).
_SET_LAYER_BITS = {"RAM": 0x01, "BBR": 0x02, "FLASH": 0x04}
_GET_LAYER_NUMBERS = {0: "RAM", 1: "BBR", 2: "FLASH", 7: "DEFAULT"}
_MAX_VALGET_KEYS = 64

_CLS_ACK = 0x05
_CLS_CFG = 0x06
_ID_VALSET = 0x8A
_ID_VALGET = 0x8B
_TXN_NONE, _TXN_START, _TXN_ONGOING, _TXN_APPLY = 0, 1, 2, 3

# The GPS epoch and the GPS-UTC offset in force since 2017 (NAV-TIMEUTC's iTOW is GPS time).
_GPS_EPOCH = dt.datetime(1980, 1, 6, tzinfo=dt.timezone.utc)
GPS_UTC_LEAP_S = 18
_WEEK_S = 7 * 86400

_ID_BY_NAME: dict[str, tuple[int, str]] = dict(UBX_CONFIG_DATABASE)
# One key ID has two names in pyubx2's database (CFG_BDS_USE_GEO_PRN, CFG_BDS_USE_PRN_1_TO_5):
# the first is the one pyubx2 decodes to, and the one the model stores under.
_NAME_BY_ID: dict[int, tuple[str, str]] = {}
for _name, (_key_id, _typ) in UBX_CONFIG_DATABASE.items():
    _NAME_BY_ID.setdefault(_key_id, (_name, _typ))

# Factory values for the keys that change what the simulated chip does (protocols and NMEA output
# per port, the UART speed, the configuration lock) and a few of the time-pulse keys the shipped
# config sets; every other key reads as 0 of its type. A ZED-F9T out of the box talks NMEA and UBX
# in, and NMEA (GGA, GLL, GSA, GSV, RMC, VTG) out, on USB and UART1; no UBX message flows.
_NMEA_SENTENCES = ("GGA", "GLL", "GSA", "GSV", "RMC", "VTG")
_FACTORY_VALUES: dict[str, ConfigValue] = {
    "CFG_UART1_BAUDRATE": 38400,
    "CFG_RATE_MEAS": 1000,
    "CFG_RATE_NAV": 1,
    "CFG_TP_TP1_ENA": 1,
    "CFG_TP_PERIOD_TP1": 1_000_000,
    "CFG_TP_FREQ_TP1": 1,
    "CFG_TP_FREQ_LOCK_TP1": 1,
    "CFG_TP_PERIOD_LOCK_TP1": 1_000_000,
    "CFG_TP_LEN_LOCK_TP1": 100_000,
    "CFG_TP_SYNC_GNSS_TP1": 1,
    "CFG_TP_USE_LOCKED_TP1": 1,
    "CFG_TP_ALIGN_TO_TOW_TP1": 1,
    "CFG_TP_POL_TP1": 1,
    "CFG_TP_TIMEGRID_TP1": 1,
    "CFG_TP_ANT_CABLEDELAY": 50,
    **{
        f"CFG_{port}{direction}PROT_{protocol}": 1
        for port in ("USB", "UART1")
        for direction, protocols in (("IN", ("UBX", "NMEA", "RTCM3X")), ("OUT", ("UBX", "NMEA")))
        for protocol in protocols
    },
    **{
        f"CFG_MSGOUT_NMEA_ID_{sentence}_{port}": 1
        for port in ("USB", "UART1")
        for sentence in _NMEA_SENTENCES
    },
}


def normalise_key(name: str) -> str:
    """A configuration key's name as pyubx2 decodes it: upper case, `_` for `-`, and of two
    names for one key the first."""
    spelt = name.upper().replace("-", "_")
    if spelt in _ID_BY_NAME:
        return _NAME_BY_ID[_ID_BY_NAME[spelt][0]][0]
    return spelt


def key_type(name: str) -> str:
    """pyubx2's type of a known key ("L001", "R004", ...); KeyError for an unknown one."""
    return _ID_BY_NAME[normalise_key(name)][1]


def zero_value(typ: str) -> ConfigValue:
    """The value 0 in a key type's Python form (pyubx2's: int, float or bytes)."""
    kind = atttyp(typ)
    if kind == "R":
        return 0.0
    if kind == "X":
        return bytes(attsiz(typ))
    return 0


def other_value(value: ConfigValue, typ: str) -> ConfigValue:
    """A different valid value of the same type: what a wrong read-back reports."""
    kind = atttyp(typ)
    if kind == "R":
        return float(value) + 1.0
    if kind == "X":
        assert isinstance(value, bytes)
        return bytes(b ^ 0xFF for b in value)
    assert isinstance(value, int)
    if kind == "L":
        return 1 - value
    size_bits = 8 * attsiz(typ)
    low = -(1 << (size_bits - 1)) if kind == "I" else 0
    high = (1 << (size_bits - 1)) - 1 if kind == "I" else (1 << size_bits) - 1
    return value + 1 if value < high else low


@dataclass
class Identity:
    """What MON-VER and SEC-UNIQID report (R-UBX-SIM-2)."""

    model: str = "ZED-F9T"
    uid: str = "DF03A241BC"
    sw_version: str = "EXT CORE 1.00 (e3b3a6)"
    hw_version: str = "00190000"
    fwver: str = "TIM 2.20"
    protver: str = "29.20"

    def mon_ver_frame(self) -> bytes:
        """The MON-VER answer; pyubx2 builds MON-VER only from a raw payload."""
        extensions = [
            "ROM BASE 0x118B2060",
            f"FWVER={self.fwver}",
            f"PROTVER={self.protver}",
            f"MOD={self.model}",
            "GPS;GLO;GAL;BDS",
            "SBAS;QZSS",
        ]
        payload = _char_field(self.sw_version, 30) + _char_field(self.hw_version, 10)
        payload += b"".join(_char_field(text, 30) for text in extensions)
        return bytes(UBXMessage(b"\x0a", b"\x04", GET, payload=payload).serialize())

    def sec_uniqid_frame(self) -> bytes:
        """The SEC-UNIQID answer: the UID string is the 5 bytes read as a little-endian integer."""
        unique_id = int(self.uid, 16)
        msg = UBXMessage("SEC", "SEC-UNIQID", GET, version=1, uniqueId=unique_id)
        return bytes(msg.serialize())


def _char_field(text: str, size: int) -> bytes:
    return text.encode("ascii")[:size].ljust(size, b"\x00")


@dataclass(frozen=True)
class Recording:
    """The recorded ZED-F9T frames shipped with the package (R-UBX-SIM-8), by message name,
    and the figures the synthetic source cycles through."""

    frames: tuple[tuple[str, bytes], ...]
    q_errs_ps: tuple[int, ...]
    time_utc: tuple[tuple[int, int], ...]  # (tAcc ns, nano ns) of each NAV-TIMEUTC

    @classmethod
    @functools.cache
    def load(cls) -> Recording:
        text = resources.files("panoseti_daq.ublox").joinpath("data/ubx_packets.jsonl").read_text()
        frames = []
        for line in text.splitlines():
            if line.strip():
                entry = json.loads(line)
                frames.append((str(entry["identity"]), base64.b64decode(entry["payload_b64"])))
        tim_tp = [UBXReader.parse(f) for name, f in frames if name == "TIM-TP"]
        time_utc = [UBXReader.parse(f) for name, f in frames if name == "NAV-TIMEUTC"]
        return cls(
            tuple(frames),
            tuple(int(msg.qErr) for msg in tim_tp),
            tuple((int(msg.tAcc), int(msg.nano)) for msg in time_utc),
        )

    def of(self, name: str) -> list[bytes]:
        return [frame for identity, frame in self.frames if identity == name]


class _Cycle:
    """Endless iteration over a non-empty list, in order."""

    def __init__(self, items: list[bytes]) -> None:
        self._items = items
        self._next = 0

    def take(self) -> bytes:
        item = self._items[self._next]
        self._next = (self._next + 1) % len(self._items)
        return item


class ChipModel:
    """A ZED-F9T as the host sees it through one port, without I/O.

    `handle(frame, now)` answers one host frame; `tick(now)` gives one output epoch. Both return
    whole frames (UBX) and NMEA sentences, in the order the chip sends them.
    """

    def __init__(
        self,
        *,
        identity: Identity | None = None,
        port: Port = "USB",
        source: Source = "synthetic",
        speed: int = 115200,
        unsupported_keys: Iterable[str] = (),
        answers: Mapping[str, bytes] | None = None,
    ) -> None:
        if port not in ("USB", "UART1"):
            raise ValueError(f"port must be USB or UART1, not {port!r}")
        if source not in ("synthetic", "recorded"):
            raise ValueError(f"source must be synthetic or recorded, not {source!r}")
        self.identity = identity or Identity()
        self.port: Port = port
        self.source: Source = source
        self.unsupported_keys = {normalise_key(key) for key in unsupported_keys}
        self.answers: dict[str, bytes] = dict(answers or {})
        # Chip-level faults (R-UBX-SIM-6).
        self.nak_valsets = 0
        self.nak_valgets = 0
        self.wrong_readback_keys: set[str] = set()
        self.stray_acks = False
        self.mute = False
        # When (host time.time()) each host frame arrived, by message name; the newest ones.
        self.arrivals: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=10_000))
        self._defaults: dict[str, ConfigValue] = dict(_FACTORY_VALUES)
        # The chip's UART1 was set to the simulator's speed before it was plugged in.
        self._defaults["CFG_UART1_BAUDRATE"] = speed
        self._speed = speed
        self._layers: dict[str, dict[str, ConfigValue]] = {layer: {} for layer in LAYERS}
        self._transaction: tuple[int, dict[str, ConfigValue]] | None = None
        recording = Recording.load()
        self._stray_ack = recording.of("ACK-ACK")[0]
        self._recorded = {name: _Cycle(recording.of(name)) for name in ("TIM-TP", "NAV-TIMEUTC")}
        self._q_errs = recording.q_errs_ps
        self._time_utc = recording.time_utc
        self._synthetic_count = {"TIM-TP": 0, "NAV-TIMEUTC": 0}
        self._epochs = 0

    # --- configuration ---------------------------------------------------------------------

    def value(self, key: str, layer: str = "RAM") -> ConfigValue:
        """A key's value on a layer (RAM, BBR, FLASH or DEFAULT)."""
        name = normalise_key(key)
        typ = key_type(name)
        default = self._defaults.get(name, zero_value(typ))
        if layer.upper() == "DEFAULT":
            return default
        return self._layers[layer.upper()].get(name, default)

    def link_speed(self) -> int:
        """The speed of the link to the host: on UART1 the RAM value of CFG_UART1_BAUDRATE, on
        USB the speed given (the UART's keys do not touch the USB link)."""
        if self.port == "UART1":
            return int(self.value("CFG_UART1_BAUDRATE"))
        return self._speed

    def _ubx_in(self) -> bool:
        return self.value(f"CFG_{self.port}INPROT_UBX") != 0

    def ubx_out(self) -> bool:
        """Whether UBX frames leave the chip on its port at all."""
        return self.value(f"CFG_{self.port}OUTPROT_UBX") != 0

    # --- host frames -----------------------------------------------------------------------

    def handle(self, frame: bytes, now: float) -> list[bytes]:
        """The chip's answer to one whole, checksum-valid UBX frame from the host: none while
        UBX input or output is off on its port (that VALSET's own ACK included)."""
        answers = self._answer(frame, now)
        return answers if self.ubx_out() else []

    def _answer(self, frame: bytes, now: float) -> list[bytes]:
        msg_class, msg_id = frame[2], frame[3]
        try:
            msg = UBXReader.parse(frame, msgmode=SETPOLL)
        except Exception as exc:  # pyubx2 raises several types for frames it cannot decode
            self.arrivals[f"{msg_class:02X}-{msg_id:02X}"].append(now)
            _log.debug("undecodable host frame %s: %s", frame.hex(), exc)
            if self.mute or not self._ubx_in():
                return []
            return self._refuse(msg_class, msg_id) if msg_class == _CLS_CFG else []
        self.arrivals[msg.identity].append(now)
        if self.mute or not self._ubx_in():
            return []
        if msg.msgmode == POLL and len(frame) == 8 and msg.identity in self.answers:
            return [self.answers[msg.identity]]
        if msg_class == _CLS_CFG and msg_id != _ID_VALSET:
            self._transaction = None  # any other CFG message cancels an open transaction
        if msg_class == _CLS_CFG and msg_id == _ID_VALSET and msg.msgmode == SET:
            return self._valset(msg)
        if (
            msg_class == _CLS_CFG
            and msg_id == _ID_VALGET
            and msg.msgmode == POLL
            and len(msg.payload) >= 4
            and len(msg.payload) % 4 == 0
        ):
            return self._valget(msg)
        if msg_class == _CLS_CFG:
            return self._refuse(msg_class, msg_id)
        if msg.msgmode == POLL and len(frame) == 8:
            return self._poll(msg.identity, now)
        return []

    def _refuse(self, msg_class: int, msg_id: int) -> list[bytes]:
        self._transaction = None
        return [_ack(False, msg_class, msg_id)]

    def _valset(self, msg: UBXMessage) -> list[bytes]:
        answer = "malformed" if not _whole_items(msg.payload) else self._apply_valset(msg)
        acked = answer is None
        if answer:
            _log.info("CFG-VALSET refused: %s", answer)
        prefix = [self._stray_ack] if self.stray_acks else []
        return [*prefix, _ack(acked, _CLS_CFG, _ID_VALSET)]

    def _apply_valset(self, msg: UBXMessage) -> str | None:
        """Apply one CFG-VALSET (R-UBX-SIM-3); the reason it is refused, or None."""
        items = {name: value for name, value in vars(msg).items() if name.startswith("CFG_")}
        action = msg.action if msg.version == 1 else _TXN_NONE
        layer_bits = msg.ram | msg.bbr << 1 | msg.flash << 2
        problem = self._valset_problem(items, action, layer_bits)
        if problem is None and msg.version not in (0, 1):
            problem = f"message version {msg.version}"
        if problem is not None:
            self._transaction = None
            return problem
        if action == _TXN_NONE:
            self._transaction = None
            self._store(layer_bits, items)
        elif action == _TXN_START:
            self._transaction = (layer_bits, dict(items))
        else:
            assert self._transaction is not None
            self._transaction[1].update(items)
            if action == _TXN_APPLY:
                self._store(*self._transaction)
                self._transaction = None
        return None

    def _valset_problem(
        self, items: Mapping[str, ConfigValue], action: int, layer_bits: int
    ) -> str | None:
        if self.nak_valsets > 0:
            self.nak_valsets -= 1
            return "NAK fault"
        if self.value("CFG_SEC_CFG_LOCK") != 0:
            return "configuration locked"
        unknown = [name for name in items if name not in _ID_BY_NAME]
        unsupported = [name for name in items if name in self.unsupported_keys]
        if unknown or unsupported:
            return f"unknown keys {unknown + unsupported}"
        if layer_bits == 0:
            return "no layer"
        if action not in (_TXN_NONE, _TXN_START, _TXN_ONGOING, _TXN_APPLY):
            return f"transaction action {action}"
        if action in (_TXN_ONGOING, _TXN_APPLY) and (
            self._transaction is None or self._transaction[0] != layer_bits
        ):
            return "no transaction open for these layers"
        return None

    def _store(self, layer_bits: int, items: Mapping[str, ConfigValue]) -> None:
        for layer, bit in _SET_LAYER_BITS.items():
            if layer_bits & bit:
                self._layers[layer].update(items)

    def _valget(self, msg: UBXMessage) -> list[bytes]:
        """Answer a CFG-VALGET poll (R-UBX-SIM-3): the values from the layer, then ACK; the first
        `position` keys are skipped, as the chip does."""
        keys = [value for name, value in vars(msg).items() if name.startswith("keys_")]
        layer = _GET_LAYER_NUMBERS.get(msg.layer)
        known = [_NAME_BY_ID.get(key_id) for key_id in keys]
        faulted = self.nak_valgets > 0
        if faulted:
            self.nak_valgets -= 1
        if (
            faulted
            or layer is None
            or msg.version != 0
            or len(keys) > _MAX_VALGET_KEYS
            or any(entry is None or entry[0] in self.unsupported_keys for entry in known)
        ):
            return [_ack(False, _CLS_CFG, _ID_VALGET)]
        data = b""
        for key_id, entry in list(zip(keys, known, strict=True))[msg.position :]:
            assert entry is not None
            name, typ = entry
            value = self.value(name, layer)
            if name in self.wrong_readback_keys:
                value = other_value(value, typ)
            data += val2bytes(key_id, "U004") + val2bytes(value, typ)
        payload = bytes([1, msg.layer]) + val2bytes(msg.position, "U002") + data
        answer = UBXMessage(b"\x06", b"\x8b", GET, payload=payload).serialize()
        return [answer, _ack(True, _CLS_CFG, _ID_VALGET)]

    def _poll(self, name: str, now: float) -> list[bytes]:
        """R-UBX-SIM-5: identity and fresh timing messages; else silence (the `answers` map,
        which also answers CFG-class polls, is looked up first, in `handle`)."""
        if name == "MON-VER":
            return [self.identity.mon_ver_frame()]
        if name == "SEC-UNIQID":
            return [self.identity.sec_uniqid_frame()]
        if name in ("TIM-TP", "NAV-TIMEUTC"):
            return [self._timing_frame(name, now)]
        return []

    # --- output ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[bytes]:
        """One output epoch (R-UBX-SIM-4): TIM-TP, NAV-TIMEUTC as enabled, then NMEA. A MSGOUT
        rate N sends the message every N-th epoch, as the chip does (1: every epoch)."""
        self._epochs += 1
        out = []
        if self.ubx_out():
            for name, key in (("TIM-TP", "TIM_TP"), ("NAV-TIMEUTC", "NAV_TIMEUTC")):
                if self._due(f"CFG_MSGOUT_UBX_{key}_{self.port}"):
                    out.append(self._timing_frame(name, now))
        if self.value(f"CFG_{self.port}OUTPROT_NMEA") != 0:
            for sentence in _NMEA_SENTENCES:
                if self._due(f"CFG_MSGOUT_NMEA_ID_{sentence}_{self.port}"):
                    out.append(_nmea(sentence, now))
        return out

    def _due(self, rate_key: str) -> bool:
        rate = int(self.value(rate_key))
        return rate != 0 and self._epochs % rate == 0

    def _timing_frame(self, name: str, now: float) -> bytes:
        if self.source == "recorded":
            return self._recorded[name].take()
        count = self._synthetic_count[name]
        self._synthetic_count[name] = count + 1
        second = math.floor(now)
        if name == "TIM-TP":
            return tim_tp_frame(second + 1, self._q_errs[count % len(self._q_errs)])
        t_acc, nano = self._time_utc[count % len(self._time_utc)]
        return nav_timeutc_frame(second, t_acc, nano)

    def recorded_ack(self) -> bytes:
        """The recording's ACK-ACK (for a CFG-VALGET): a stray ACK to inject."""
        return self._stray_ack


def _whole_items(payload: bytes) -> bool:
    """Whether a CFG-VALSET payload is its 4-byte header and whole key-value pairs (a value's
    size is in its key's ID)."""
    offset = 4
    while offset + 4 <= len(payload):
        key_id = int.from_bytes(payload[offset : offset + 4], "little")
        size = UBX_CONFIG_STORSIZE.get(key_id >> 28 & 0x7)
        if size is None:
            return False
        offset += 4 + size
    return offset == len(payload)


def tim_tp_frame(utc_second: int, q_err_ps: int) -> bytes:
    """A TIM-TP for the pulse at a whole UTC second (Unix time), on the UTC time base."""
    since_epoch = utc_second - int(_GPS_EPOCH.timestamp())
    week, tow_s = divmod(since_epoch, _WEEK_S)
    msg = UBXMessage(
        "TIM",
        "TIM-TP",
        GET,
        towMS=tow_s * 1000,
        towSubMS=0,
        qErr=q_err_ps,
        week=week,
        timeBase=1,
        utc=1,
        raim=2,
        qErrInvalid=0,
        TpNotLocked=0,
        timeRefGnss=15,
        utcStandard=3,
    )
    return bytes(msg.serialize())


def nav_timeutc_frame(utc_second: int, t_acc_ns: int, nano: int) -> bytes:
    """A NAV-TIMEUTC for a whole UTC second (Unix time); iTOW is GPS time of week."""
    gps_tow_s = (utc_second - int(_GPS_EPOCH.timestamp()) + GPS_UTC_LEAP_S) % _WEEK_S
    utc = dt.datetime.fromtimestamp(utc_second, tz=dt.timezone.utc)
    msg = UBXMessage(
        "NAV",
        "NAV-TIMEUTC",
        GET,
        iTOW=gps_tow_s * 1000,
        tAcc=t_acc_ns,
        nano=nano,
        year=utc.year,
        month=utc.month,
        day=utc.day,
        hour=utc.hour,
        min=utc.minute,
        sec=utc.second,
        validTOW=1,
        validWKN=1,
        validUTC=1,
        authStatus=0,
        utcStandard=3,
    )
    return bytes(msg.serialize())


def _ack(acked: bool, msg_class: int, msg_id: int) -> bytes:
    name = "ACK-ACK" if acked else "ACK-NAK"
    msg = UBXMessage(_CLS_ACK, 0x01 if acked else 0x00, GET, clsID=msg_class, msgID=msg_id)
    assert msg.identity == name
    return bytes(msg.serialize())


def _nmea(sentence: str, now: float) -> bytes:
    """A sentence of the given type as a chip without a fix sends it, at the host's UTC time."""
    utc = dt.datetime.fromtimestamp(now, tz=dt.timezone.utc)
    clock = f"{utc:%H%M%S}.{utc.microsecond // 10000:02d}"
    body = {
        "GGA": f"GNGGA,{clock},,,,,0,00,99.99,,,,,,",
        "GLL": f"GNGLL,,,,,{clock},V,N",
        "GSA": "GNGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99,1",
        "GSV": "GPGSV,1,1,00,0",
        "RMC": f"GNRMC,{clock},V,,,,,,,{utc:%d%m%y},,,N,V",
        "VTG": "GNVTG,,T,,M,,N,,K,N",
    }[sentence]
    checksum = 0
    for char in body.encode("ascii"):
        checksum ^= char
    return f"${body}*{checksum:02X}\r\n".encode("ascii")
