"""An InitF9t request checked and turned into a plan, without I/O (R-UBX-CFG-1..5, R-UBX-INIT-1).

`plan_init` reads the request's `f9t_config` (a dict from a google.protobuf.Struct, so every
number may arrive as a float) and returns an `F9tPlan`: the device, the expected chip id, the
configuration items in the order they are written (R-UBX-INIT-7), the messages whose arrival
proves the data flow (R-UBX-INIT-9) and the keys that may cut the server's own link (spec section
10). Every problem is collected and raised at once in `F9tSettingsError`, one line each,
"<key path>: <reason>", so a client fixes its request in one go. `load_chip_requests` reads the
clients' f9t_config.json5 (R-UBX-CFG-5): one request per chip.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import json5

from .protocol import CONFIG_DATABASE, MESSAGE_NAMES, SET_LAYER_BITS, layer_mask

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ChipRequest",
    "F9tPlan",
    "F9tSettingsError",
    "example_config_path",
    "load_chip_requests",
    "normalise_key",
    "plan_init",
    "position_items",
]

DEFAULT_BAUD = 115200
DEFAULT_LAYERS = ("RAM",)
DEFAULT_VERIFY_LAYER = "RAM"
DEFAULT_ACC_M = 0.05
# Where a chip of the clients' f9t_config.json5 is served when it names no host or port.
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 50051

# R-UBX-CFG-1: keys the server reads, and keys it accepts and ignores without a word.
_READ_KEYS = (
    "device",
    "f9t_uid",
    "baud",
    "apply_to_layers",
    "verify_layer",
    "cfg_key_settings",
    "position",
)
_QUIETLY_IGNORED_KEYS = ("register_csv", "host", "port", "comments")
_POSITION_KEYS = ("format", "lat_deg", "lon_deg", "height_m", "acc_m")
_FLOAT32_MAX = 3.4028234663852886e38


class F9tSettingsError(ValueError):
    """An f9t_config that cannot be applied: `problems` has one "<key path>: <reason>" each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class F9tPlan:
    """What InitF9t will do with a valid request: open `device` at `baud`, expect chip `uid`,
    write `signal_items` then `other_items` to `layers`, read them back from `verify_layer`, and
    wait for one message of each of `dataflow_names`."""

    device: str
    uid: str
    baud: int
    layers: tuple[str, ...]
    layer_mask: int
    verify_layer: str
    signal_items: tuple[tuple[str, object], ...]
    other_items: tuple[tuple[str, object], ...]
    dataflow_names: tuple[str, ...]
    ignored_keys: tuple[str, ...]
    link_cutting_keys: tuple[str, ...]
    accepted_config: Mapping[str, Any] = field(repr=False)

    @property
    def items(self) -> tuple[tuple[str, object], ...]:
        """Every item in the order written: the signal group, then the rest."""
        return self.signal_items + self.other_items


def normalise_key(name: str) -> str:
    """A configuration key as pyubx2 names it: upper case, `-` as `_` (R-UBX-CFG-2)."""
    return name.strip().upper().replace("-", "_")


# A hostile or broken request must not make its error (a gRPC trailer) huge: values shown are
# clipped, and at most _MAX_PROBLEMS problems are listed.
_MAX_SHOWN = 80
_MAX_PROBLEMS = 20


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _show(value: object) -> str:
    """A value as a problem line shows it: its repr, clipped."""
    return _clip(repr(value))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole_number(value: object) -> int | None:
    """An int, or a float without a fraction (a Struct number); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _type_label(pyubx2_type: str) -> str:
    """u-blox's spelling of a pyubx2 type: "U004" -> "U4", "L001" -> "L"."""
    kind, size = pyubx2_type[0], int(pyubx2_type[1:])
    return "L" if kind == "L" else f"{kind}{size}"


def _integer_value(value: object) -> tuple[int | None, str]:
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            return int(text, 16), ""
        return None, "a string other than a 0x... hex number"
    number = _whole_number(value)
    if number is None:
        return None, "not an integer"
    return number, ""


def _coerce_value(pyubx2_type: str, value: object) -> tuple[object, str]:
    """The value pyubx2 writes for a key of `pyubx2_type`, or (None, why not) (R-UBX-CFG-3)."""
    kind, size = pyubx2_type[0], int(pyubx2_type[1:])
    if kind == "L":
        if isinstance(value, bool):
            return int(value), ""
        number = _whole_number(value)
        if number in (0, 1):
            return number, ""
        return None, "not 0, 1, true or false"
    if kind == "R":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, "not a number"
        real = float(value)
        if not math.isfinite(real):
            return None, "not a finite number"
        if size == 4 and abs(real) > _FLOAT32_MAX:
            return None, "out of the range of a 32-bit float"
        return real, ""
    integer, why = _integer_value(value)
    if integer is None:
        return None, why
    bits = 8 * size
    if kind == "I":
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        low, high = 0, (1 << bits) - 1
    if not low <= integer <= high:
        return None, f"outside {low}..{high}"
    if kind == "X":
        return integer.to_bytes(size, "little"), ""
    return integer, ""


def _check_device(cfg: Mapping[str, Any], problems: list[str]) -> str:
    device = cfg.get("device")
    if not isinstance(device, str) or not device.strip():
        problems.append("Device path not specified")  # the original's words (R-UBX-INIT-1)
        return ""
    return device


def _check_uid(cfg: Mapping[str, Any], problems: list[str]) -> str:
    uid = cfg.get("f9t_uid")
    if uid is None:
        problems.append("f9t_uid: required (the chip's id, 10 hex digits)")
        return ""
    if not isinstance(uid, str) or not re.fullmatch(r"[0-9a-fA-F]{10}", uid.strip()):
        problems.append(f"f9t_uid: must be 10 hex digits, got {_show(uid)}")
        return ""
    return uid.strip().upper()


def _check_baud(cfg: Mapping[str, Any], problems: list[str]) -> int:
    baud = cfg.get("baud", DEFAULT_BAUD)
    number = _whole_number(baud)
    if number is None or number <= 0:
        problems.append(f"baud: must be a positive integer, got {_show(baud)}")
        return DEFAULT_BAUD
    return number


def _check_layers(cfg: Mapping[str, Any], problems: list[str]) -> tuple[tuple[str, ...], str]:
    given = cfg.get("apply_to_layers", list(DEFAULT_LAYERS))
    layers: list[str] = []
    if not isinstance(given, list) or not given:
        problems.append(
            f"apply_to_layers: must be a non-empty list of RAM, BBR, FLASH, got {_show(given)}"
        )
    else:
        for index, layer in enumerate(given):
            name = layer.strip().upper() if isinstance(layer, str) else ""
            if name not in SET_LAYER_BITS:
                problems.append(
                    f"apply_to_layers[{index}]: {_show(layer)} is not RAM, BBR or FLASH"
                )
            elif name not in layers:
                layers.append(name)
    verify = cfg.get("verify_layer", DEFAULT_VERIFY_LAYER)
    verify_name = verify.strip().upper() if isinstance(verify, str) else ""
    if not isinstance(verify, str) or verify_name not in SET_LAYER_BITS:
        problems.append(
            "verify_layer: must be one of the layers written (RAM, BBR, FLASH), "
            f"got {_show(verify)}"
        )
    elif layers and verify_name not in layers:
        default = "" if "verify_layer" in cfg else " (the default)"
        problems.append(
            f"verify_layer: {verify_name}{default} is not one of apply_to_layers "
            f"({', '.join(layers)}): it would not hold the new values"
        )
    return tuple(layers), verify_name


def _check_settings(
    cfg: Mapping[str, Any], has_position: bool, problems: list[str]
) -> list[tuple[str, object]]:
    given = cfg.get("cfg_key_settings", [])
    if not isinstance(given, list):
        problems.append(
            f"cfg_key_settings: must be a list of {{key, value}} objects, got {_show(given)}"
        )
        return []
    items: list[tuple[str, object]] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(given):
        where = f"cfg_key_settings[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: must be an object with key and value, got {_show(entry)}")
            continue
        missing = [name for name in ("key", "value") if name not in entry]
        if missing:
            problems.append(f"{where}: missing {' and '.join(missing)}")
            continue
        raw_key = entry["key"]
        if not isinstance(raw_key, str):
            problems.append(f"{where}.key: must be a string, got {_show(raw_key)}")
            continue
        key = normalise_key(raw_key)
        if key not in CONFIG_DATABASE:
            problems.append(f"{where} ({_clip(raw_key)}): not a configuration key of the ZED-F9T")
            continue
        if key in first_index:
            problems.append(f"{where} ({key}): given twice (first at index {first_index[key]})")
            continue
        first_index[key] = index
        if has_position and key.startswith("CFG_TMODE_"):
            problems.append(
                f"{where} ({key}): CFG_TMODE_* keys cannot be given together with position"
            )
            continue
        pyubx2_type = CONFIG_DATABASE[key][1]
        value, why = _coerce_value(pyubx2_type, entry["value"])
        if why:
            problems.append(
                f"{where} ({key}): value {_show(entry['value'])} is not valid for type "
                f"{_type_label(pyubx2_type)}: {why}"
            )
            continue
        items.append((key, value))
    return items


def position_items(
    lat_deg: float, lon_deg: float, height_m: float, acc_m: float
) -> list[tuple[str, object]]:
    """The TMODE items fixing the antenna at an LLH position, in time-only mode (R-UBX-CFG-4).

    Latitude and longitude in 1e-7 degrees plus a 1e-9 degree remainder (0..99); height in cm
    plus a 0.1 mm remainder; accuracy in 0.1 mm.
    """
    lat = round(lat_deg * 1e9)
    lon = round(lon_deg * 1e9)
    height = round(height_m * 1e4)
    return [
        ("CFG_TMODE_MODE", 2),  # fixed
        ("CFG_TMODE_POS_TYPE", 1),  # LLH
        ("CFG_TMODE_LAT", lat // 100),
        ("CFG_TMODE_LAT_HP", lat % 100),
        ("CFG_TMODE_LON", lon // 100),
        ("CFG_TMODE_LON_HP", lon % 100),
        ("CFG_TMODE_HEIGHT", height // 100),
        ("CFG_TMODE_HEIGHT_HP", height % 100),
        ("CFG_TMODE_FIXED_POS_ACC", round(acc_m * 1e4)),
    ]


def _check_position(
    cfg: Mapping[str, Any], problems: list[str], ignored: list[str]
) -> list[tuple[str, object]]:
    if "position" not in cfg:
        return []
    position = cfg["position"]
    if not isinstance(position, Mapping):
        problems.append(f"position: must be an object, got {_show(position)}")
        return []
    ignored += [f"position.{_clip(str(key))}" for key in position if key not in _POSITION_KEYS]
    position_format = position.get("format", "LLH")
    if isinstance(position_format, str) and position_format.strip().upper() == "ECEF":
        problems.append("position.format: ECEF position not supported (give LLH)")
        return []
    if not isinstance(position_format, str) or position_format.strip().upper() != "LLH":
        problems.append(f"position.format: must be LLH, got {_show(position_format)}")
        return []
    limits = {
        "lat_deg": (-90.0, 90.0),
        "lon_deg": (-180.0, 180.0),
        "height_m": (-1e5, 1e7),
    }
    values: dict[str, float] = {}
    for name, (low, high) in limits.items():
        value = position.get(name)
        if value is None:
            problems.append(f"position.{name}: required")
        elif not _is_number(value) or not math.isfinite(value):
            problems.append(f"position.{name}: must be a number, got {_show(value)}")
        elif not low <= value <= high:
            problems.append(f"position.{name}: {_show(value)} is outside [{low:g}, {high:g}]")
        else:
            values[name] = float(value)
    acc_m = position.get("acc_m", DEFAULT_ACC_M)
    if not _is_number(acc_m) or not math.isfinite(acc_m) or not 0 < acc_m <= 4e5:
        problems.append(f"position.acc_m: must be a number of metres > 0, got {_show(acc_m)}")
        return []
    if len(values) < len(limits):
        return []
    return position_items(values["lat_deg"], values["lon_deg"], values["height_m"], acc_m)


def _key_class(key: str) -> int:
    for rank, prefix in enumerate(("CFG_TMODE_", "CFG_TP_", "CFG_MSGOUT_")):
        if key.startswith(prefix):
            return rank
    return 3


_MSGOUT_UBX = re.compile(r"CFG_MSGOUT_UBX_(?P<message>\w+)_(?P<port>I2C|SPI|UART1|UART2|USB)")
_PROTOCOL_OFF = re.compile(r"CFG_\w+(IN|OUT)PROT_UBX")
_UART1_LINE = ("CFG_UART1_BAUDRATE", "CFG_UART1_STOPBITS", "CFG_UART1_DATABITS", "CFG_UART1_PARITY")
_HOST_PORTS = ("USB", "UART1")


def _message_name(message: str) -> str | None:
    """The pyubx2 name of a MSGOUT key's message part ("NAV_TIMEUTC" -> "NAV-TIMEUTC")."""
    for name in (message.replace("_", "-", 1), message.replace("_", "-")):
        if name in MESSAGE_NAMES:
            return name
    return None


def _dataflow_names(items: Sequence[tuple[str, object]]) -> tuple[str, ...]:
    """R-UBX-INIT-9: messages with a MSGOUT item of value 1 (pyubx2 names; others not checked)."""
    names: list[str] = []
    for key, value in items:
        match = _MSGOUT_UBX.fullmatch(key)
        if match and value == 1:
            name = _message_name(match["message"])
            if name is not None and name not in names:
                names.append(name)
    return tuple(names)


def _link_cutting_keys(items: Sequence[tuple[str, object]]) -> tuple[str, ...]:
    """Spec section 10: keys that may cut the link the server uses (named if InitF9t fails)."""
    suspects: list[str] = []
    enabled_on: dict[str, set[str]] = {}
    for key, value in items:
        if (
            key in _UART1_LINE
            or (key == "CFG_UART1_ENABLED" and value == 0)
            or (_PROTOCOL_OFF.fullmatch(key) and value == 0)
        ):
            suspects.append(key)
        match = _MSGOUT_UBX.fullmatch(key)
        if match and value == 1 and match["port"] in _HOST_PORTS:
            enabled_on.setdefault(match["message"], set()).add(match["port"])
    for message, ports in enabled_on.items():
        if len(ports) < len(_HOST_PORTS):
            suspects += [f"CFG_MSGOUT_UBX_{message}_{port}" for port in sorted(ports)]
    return tuple(suspects)


def plan_init(cfg: Mapping[str, Any]) -> F9tPlan:
    """Check an InitF9t `f9t_config` without I/O and plan it (R-UBX-CFG-1..4, R-UBX-INIT-1).

    Raises `F9tSettingsError` listing every problem found.
    """
    if not isinstance(cfg, Mapping):
        raise F9tSettingsError([f"f9t_config: must be an object, got {_show(cfg)}"])
    problems: list[str] = []
    ignored = [
        str(key) for key in cfg if key not in _READ_KEYS and key not in _QUIETLY_IGNORED_KEYS
    ]
    device = _check_device(cfg, problems)
    uid = _check_uid(cfg, problems)
    baud = _check_baud(cfg, problems)
    layers, verify_layer = _check_layers(cfg, problems)
    tmode = _check_position(cfg, problems, ignored)
    settings = _check_settings(cfg, "position" in cfg, problems)
    if len(problems) > _MAX_PROBLEMS:
        more = len(problems) - _MAX_PROBLEMS
        problems = [*problems[:_MAX_PROBLEMS], f"... and {more} more problems"]
    if problems:
        raise F9tSettingsError(problems)
    signal_items = [(key, value) for key, value in settings if key.startswith("CFG_SIGNAL_")]
    other_items = sorted(
        tmode + [(key, value) for key, value in settings if not key.startswith("CFG_SIGNAL_")],
        key=lambda item: _key_class(item[0]),
    )
    all_items = signal_items + other_items
    return F9tPlan(
        device=device,
        uid=uid,
        baud=baud,
        layers=layers,
        layer_mask=layer_mask(layers),
        verify_layer=verify_layer,
        signal_items=tuple(signal_items),
        other_items=tuple(other_items),
        dataflow_names=_dataflow_names(all_items),
        ignored_keys=tuple(ignored),
        link_cutting_keys=_link_cutting_keys(all_items),
        accepted_config=dict(cfg),
    )


@dataclass(frozen=True)
class ChipRequest:
    """One chip of an f9t_config.json5: the server to ask, the chip's id, its InitF9t config."""

    host: str
    port: int
    uid: str
    request: dict[str, Any]


def example_config_path() -> Path:
    """The shipped example f9t_config.json5 (the original's; one chip, DF03A241BC)."""
    return Path(
        str(resources.files("panoseti_daq.ublox").joinpath("data/f9t_config.example.json5"))
    )


def _read_json5(path: str | os.PathLike[str]) -> object:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise F9tSettingsError([f"{os.fspath(path)}: cannot read: {reason}"]) from err
    try:
        return json5.loads(text)
    except ValueError as err:
        raise F9tSettingsError([f"{os.fspath(path)}: not valid JSON5: {err}"]) from err


def load_chip_requests(source: str | os.PathLike[str] | Mapping[str, Any]) -> list[ChipRequest]:
    """One request per chip of an f9t_config (a JSON5 file or its dict, R-UBX-CFG-5).

    A chip's request is the top level without `f9t_chips`, overlaid key by key by the chip's
    object. A chip without host or port is served by localhost:50051. Two chips on one server
    are refused: one server serves one device (R-UBX-STATE-1).
    """
    where = "f9t_config" if isinstance(source, Mapping) else os.fspath(source)
    top = source if isinstance(source, Mapping) else _read_json5(source)
    if not isinstance(top, Mapping):
        raise F9tSettingsError([f"{where}: must be an object, got {type(top).__name__}"])
    chips = top.get("f9t_chips")
    if not isinstance(chips, list) or not chips:
        raise F9tSettingsError([f"{where}: f9t_chips: must be a non-empty list of chip objects"])
    shared = {key: value for key, value in top.items() if key != "f9t_chips"}
    problems: list[str] = []
    requests: list[ChipRequest] = []
    served_by: dict[tuple[str, int], int] = {}
    for index, chip in enumerate(chips):
        at = f"{where}: f9t_chips[{index}]"
        if not isinstance(chip, Mapping):
            problems.append(f"{at}: must be an object, got {_show(chip)}")
            continue
        request = {**shared, **chip}
        host = request.get("host", DEFAULT_HOST)
        port = request.get("port", DEFAULT_PORT)
        port_number = _whole_number(port)
        if not isinstance(host, str) or not host.strip():
            problems.append(f"{at}.host: must be a host name, got {_show(host)}")
            continue
        if port_number is None or not 0 < port_number < 65536:
            problems.append(f"{at}.port: must be a port number 1..65535, got {_show(port)}")
            continue
        target = (host.strip(), port_number)
        if target in served_by:
            problems.append(
                f"{at}: {host}:{port_number} already serves f9t_chips[{served_by[target]}] "
                "(one server serves one device)"
            )
            continue
        served_by[target] = index
        uid = request.get("f9t_uid", "")
        requests.append(
            ChipRequest(host.strip(), port_number, uid if isinstance(uid, str) else "", request)
        )
    if problems:
        raise F9tSettingsError(problems)
    return requests
