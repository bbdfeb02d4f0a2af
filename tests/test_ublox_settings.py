"""InitF9t requests checked without I/O, and the clients' f9t_config.json5 (R-UBX-CFG-*)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panoseti_daq.ublox.protocol import CONFIG_DATABASE
from panoseti_daq.ublox.settings import (
    ChipRequest,
    F9tSettingsError,
    example_config_path,
    load_chip_requests,
    normalise_key,
    plan_init,
    position_items,
)

BASE = {"device": "/dev/ttyACM0", "f9t_uid": "DF03A241BC"}


def as_struct(value: object) -> object:
    """What a google.protobuf.Struct gives back: every number a float."""
    if isinstance(value, dict):
        return {key: as_struct(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_struct(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def problems_of(cfg: dict[str, object]) -> list[str]:
    with pytest.raises(F9tSettingsError) as caught:
        plan_init(cfg)
    assert str(caught.value) == "; ".join(caught.value.problems)
    return caught.value.problems


def with_settings(*entries: object, **extra: object) -> dict[str, object]:
    return {**BASE, "cfg_key_settings": list(entries), **extra}


def example_request() -> dict[str, object]:
    (chip,) = load_chip_requests(example_config_path())
    return chip.request


def test_the_shipped_example_loads_into_one_chip_with_40_keys():
    """R-UBX-CFG-5: the shipped file: one chip, 40 keys, RAM+BBR, verify RAM, TIM-TP and
    NAV-TIMEUTC on USB and UART1, a fixed position."""
    (chip,) = load_chip_requests(example_config_path())
    assert (chip.host, chip.port, chip.uid) == ("localhost", 50051, "DF03A241BC")
    assert "f9t_chips" not in chip.request
    plan = plan_init(chip.request)
    assert len(chip.request["cfg_key_settings"]) == 40
    assert (plan.device, plan.uid, plan.baud) == ("/dev/ttyACM1", "DF03A241BC", 115200)
    assert (plan.layers, plan.layer_mask, plan.verify_layer) == (("RAM", "BBR"), 3, "RAM")
    assert len(plan.signal_items) == 19
    assert len(plan.other_items) == 21 + 9  # the TP and MSGOUT keys, and 9 TMODE items
    assert plan.dataflow_names == ("TIM-TP", "NAV-TIMEUTC")
    assert plan.ignored_keys == ()
    assert plan.link_cutting_keys == ()
    assert plan.accepted_config == chip.request
    items = dict(plan.items)
    assert items["CFG_TP_ANT_CABLEDELAY"] == 10  # given as CFG-TP-ANT_CABLEDELAY
    assert items["CFG_TP_FREQ_TP2"] == 10_000_000
    assert items["CFG_TP_DUTY_TP1"] == 0.01
    assert items["CFG_SIGNAL_GAL_E5B_ENA"] == 1


def test_struct_numbers_arrive_as_floats_and_give_the_same_plan():
    """R-UBX-CFG-3, R-UBX-WIRE-3: integers that travelled as Struct doubles are coerced back."""
    request = example_request()
    plan = plan_init(request)
    from_struct = plan_init(as_struct(request))
    assert from_struct.items == plan.items
    assert all(
        type(a) is type(b) for (_, a), (_, b) in zip(from_struct.items, plan.items, strict=True)
    )
    assert from_struct.baud == 115200


def test_position_check_values_from_the_spec():
    """R-UBX-CFG-4: (37.4219999, -122.0840575, 12.345) -> 374219999, 0, -1220840575, 0, 1234, 50;
    fixed mode, LLH, accuracy in 0.1 mm."""
    plan = plan_init(
        {
            **BASE,
            "position": {"lat_deg": 37.4219999, "lon_deg": -122.0840575, "height_m": 12.345},
        }
    )
    assert plan.other_items == (
        ("CFG_TMODE_MODE", 2),
        ("CFG_TMODE_POS_TYPE", 1),
        ("CFG_TMODE_LAT", 374219999),
        ("CFG_TMODE_LAT_HP", 0),
        ("CFG_TMODE_LON", -1220840575),
        ("CFG_TMODE_LON_HP", 0),
        ("CFG_TMODE_HEIGHT", 1234),
        ("CFG_TMODE_HEIGHT_HP", 50),
        ("CFG_TMODE_FIXED_POS_ACC", 500),  # the default 0.05 m
    )
    assert dict(position_items(0, 0, 0, 0.02))["CFG_TMODE_FIXED_POS_ACC"] == 200


@given(
    st.floats(-90, 90),
    st.floats(-180, 180),
    st.floats(-1000, 9000),
    st.floats(1e-4, 100),
)
def test_position_items_split_into_standard_and_high_precision_parts(lat, lon, height, acc):
    """R-UBX-CFG-4: value = standard x 100 + remainder, remainder in 0..99, every item in its
    key's range."""
    items = dict(position_items(lat, lon, height, acc))
    assert items["CFG_TMODE_LAT"] * 100 + items["CFG_TMODE_LAT_HP"] == round(lat * 1e9)
    assert items["CFG_TMODE_LON"] * 100 + items["CFG_TMODE_LON_HP"] == round(lon * 1e9)
    assert items["CFG_TMODE_HEIGHT"] * 100 + items["CFG_TMODE_HEIGHT_HP"] == round(height * 1e4)
    for key in ("CFG_TMODE_LAT_HP", "CFG_TMODE_LON_HP", "CFG_TMODE_HEIGHT_HP"):
        assert 0 <= items[key] <= 99
    assert abs(items["CFG_TMODE_LAT"] * 1e-7 + items["CFG_TMODE_LAT_HP"] * 1e-9 - lat) < 1e-9
    plan = plan_init(
        {**BASE, "position": {"lat_deg": lat, "lon_deg": lon, "height_m": height, "acc_m": acc}}
    )
    assert dict(plan.other_items) == items


def test_items_are_ordered_signals_then_tmode_tp_msgout_others():
    """R-UBX-INIT-7: the signal group first; then TMODE, TP, MSGOUT, others, stable in each."""
    plan = plan_init(
        with_settings(
            {"key": "CFG_MSGOUT_UBX_TIM_TP_USB", "value": 1},
            {"key": "CFG_NAVSPG_DYNMODEL", "value": 2},
            {"key": "CFG_SIGNAL_GPS_ENA", "value": 1},
            {"key": "CFG_TP_TP1_ENA", "value": 1},
            {"key": "CFG_TMODE_MODE", "value": 0},
            {"key": "CFG_RATE_MEAS", "value": 1000},
            {"key": "CFG_SIGNAL_GAL_ENA", "value": 0},
            {"key": "CFG_TP_FREQ_TP1", "value": 1},
            {"key": "CFG_MSGOUT_UBX_NAV_TIMEUTC_USB", "value": 1},
        )
    )
    assert [key for key, _ in plan.signal_items] == ["CFG_SIGNAL_GPS_ENA", "CFG_SIGNAL_GAL_ENA"]
    assert [key for key, _ in plan.other_items] == [
        "CFG_TMODE_MODE",
        "CFG_TP_TP1_ENA",
        "CFG_TP_FREQ_TP1",
        "CFG_MSGOUT_UBX_TIM_TP_USB",
        "CFG_MSGOUT_UBX_NAV_TIMEUTC_USB",
        "CFG_NAVSPG_DYNMODEL",
        "CFG_RATE_MEAS",
    ]


def test_keys_are_case_insensitive_with_dash_and_underscore_alike():
    """R-UBX-CFG-2: CFG-TP-ANT_CABLEDELAY = cfg_tp_ant_cabledelay = CFG_TP_ANT_CABLEDELAY."""
    assert normalise_key(" cfg-tp-ant_cabledelay ") == "CFG_TP_ANT_CABLEDELAY"
    plan = plan_init(with_settings({"key": "cfg-Tp-Ant_CableDelay", "value": 50}))
    assert plan.other_items == (("CFG_TP_ANT_CABLEDELAY", 50),)
    problems = problems_of(
        with_settings(
            {"key": "CFG-TP-ANT_CABLEDELAY", "value": 50},
            {"key": "cfg_tp_ant_cabledelay", "value": 51},
        )
    )
    assert problems == [
        "cfg_key_settings[1] (CFG_TP_ANT_CABLEDELAY): given twice (first at index 0)"
    ]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("CFG_SIGNAL_GPS_ENA", True, 1),  # L: a bool
        ("CFG_SIGNAL_GPS_ENA", 0.0, 0),  # L: 0 as a Struct number
        ("CFG_TP_FREQ_TP2", 1e7, 10_000_000),  # U4 from a double
        ("CFG_TP_FREQ_TP2", "0x989680", 10_000_000),  # U4 as a hex string
        ("CFG_TP_FREQ_TP2", 4294967295, 4294967295),  # U4 maximum
        ("CFG_TMODE_LAT", -900000000, -900000000),  # I4
        ("CFG_TMODE_LAT_HP", -128.0, -128),  # I1 minimum
        ("CFG_TMODE_MODE", 2, 2),  # E1
        ("CFG_TP_DUTY_TP1", 1, 1.0),  # R8 from an integer
        ("CFG_NAVSPG_USRDAT_DX", 1.1, 1.1),  # R4: sent as given, compared after rounding
        ("CFG_INFMSG_UBX_USB", 7, b"\x07"),  # X1 from an integer
        ("CFG_INFMSG_UBX_USB", "0x07", b"\x07"),  # X1 from a hex string
        ("CFG_UART1INPROT_UBX", 1, 1),
    ],
)
def test_values_are_coerced_by_the_keys_type(key, value, expected):
    """R-UBX-CFG-3: L 0/1/bool; U/I/E integers in range (0x... accepted); R numbers; X an integer
    or 0x... string sent as the key's little-endian bytes."""
    plan = plan_init(with_settings({"key": key, "value": value}))
    ((got_key, got),) = plan.items
    assert got_key == key
    assert got == expected
    assert type(got) is type(expected)


def test_x_keys_of_eight_bytes_take_hex_strings_beyond_double_precision():
    """R-UBX-CFG-3, R-UBX-WIRE-3: integers beyond 2^53 travel as "0x..." strings."""
    key = next(k for k, (_, kind) in CONFIG_DATABASE.items() if kind == "X008")
    plan = plan_init(with_settings({"key": key, "value": "0x0123456789ABCDEF"}))
    assert plan.items == ((key, bytes.fromhex("efcdab8967452301")),)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("CFG_TP_FREQ_TP1", 1.5, "value 1.5 is not valid for type U4: not an integer"),
        ("CFG_TP_FREQ_TP1", -1, "value -1 is not valid for type U4: outside 0..4294967295"),
        ("CFG_TP_FREQ_TP1", "12", "value '12' is not valid for type U4: a string other than"),
        ("CFG_TP_FREQ_TP1", None, "value None is not valid for type U4: not an integer"),
        ("CFG_TP_FREQ_TP1", True, "value True is not valid for type U4: not an integer"),
        ("CFG_TMODE_LAT_HP", 128, "value 128 is not valid for type I1: outside -128..127"),
        ("CFG_TMODE_MODE", 256, "value 256 is not valid for type E1: outside 0..255"),
        ("CFG_SIGNAL_GPS_ENA", 2, "value 2 is not valid for type L: not 0, 1, true or false"),
        ("CFG_SIGNAL_GPS_ENA", "1", "value '1' is not valid for type L: not 0, 1, true or false"),
        ("CFG_TP_DUTY_TP1", "x", "value 'x' is not valid for type R8: not a number"),
        ("CFG_TP_DUTY_TP1", math.nan, "value nan is not valid for type R8: not a finite number"),
        ("CFG_NAVSPG_USRDAT_DX", 1e39, "type R4: out of the range of a 32-bit float"),
        ("CFG_INFMSG_UBX_USB", 256, "value 256 is not valid for type X1: outside 0..255"),
        ("CFG_INFMSG_UBX_USB", -1, "value -1 is not valid for type X1: outside 0..255"),
        ("CFG_INFMSG_UBX_USB", "0xZZ", "value '0xZZ' is not valid for type X1: a string other"),
        ("CFG_INFMSG_UBX_USB", b"\x07", "value b'\\x07' is not valid for type X1: not an integer"),
    ],
)
def test_a_value_of_the_wrong_type_names_key_value_and_type(key, value, problem):
    """R-UBX-CFG-3: anything else -> a problem naming the entry, key, value and type (the
    original turned 1.5 into 1 and crashed on X keys)."""
    (got,) = problems_of(
        with_settings({"key": "CFG_SIGNAL_GAL_ENA", "value": 1}, {"key": key, "value": value})
    )
    assert got.startswith(f"cfg_key_settings[1] ({key}): ")
    assert problem in got


@given(st.sampled_from(["U001", "U002", "U004", "I001", "I002", "I004", "E001"]), st.data())
def test_integer_ranges_follow_the_keys_size_and_sign(kind, data):
    """R-UBX-CFG-3: every integer in the key's range is taken (also as a double); one beyond is
    refused."""
    key = next(k for k, (_, t) in CONFIG_DATABASE.items() if t == kind)
    bits = 8 * int(kind[1:])
    low, high = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if kind[0] == "I" else (0, (1 << bits) - 1)
    )
    value = data.draw(st.integers(low, high))
    assert plan_init(with_settings({"key": key, "value": float(value)})).items == ((key, value),)
    outside = data.draw(st.sampled_from([low - 1, high + 1]))
    (problem,) = problems_of(with_settings({"key": key, "value": outside}))
    assert f"outside {low}..{high}" in problem


def test_device_problems_use_the_originals_words():
    """R-UBX-INIT-1: a missing, empty or non-string device says "Device path not specified"."""
    for cfg in (
        {"f9t_uid": "DF03A241BC"},
        {**BASE, "device": ""},
        {**BASE, "device": "  "},
        {**BASE, "device": 5},
    ):
        assert problems_of(cfg) == ["Device path not specified"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"f9t_uid": None}, "f9t_uid: required (the chip's id, 10 hex digits)"),
        ({"f9t_uid": "DF03A241B"}, "f9t_uid: must be 10 hex digits, got 'DF03A241B'"),
        ({"f9t_uid": "DF03A241BG"}, "f9t_uid: must be 10 hex digits, got 'DF03A241BG'"),
        ({"f9t_uid": 12345}, "f9t_uid: must be 10 hex digits, got 12345"),
        ({"baud": 1.5}, "baud: must be a positive integer, got 1.5"),
        ({"baud": 0}, "baud: must be a positive integer, got 0"),
        ({"baud": "fast"}, "baud: must be a positive integer, got 'fast'"),
        ({"apply_to_layers": []}, "apply_to_layers: must be a non-empty list of RAM, BBR, FLASH"),
        (
            {"apply_to_layers": "RAM"},
            "apply_to_layers: must be a non-empty list of RAM, BBR, FLASH",
        ),
        (
            {"apply_to_layers": ["RAM", "DEFAULT"]},
            "apply_to_layers[1]: 'DEFAULT' is not RAM, BBR or FLASH",
        ),
        ({"apply_to_layers": [1]}, "apply_to_layers[0]: 1 is not RAM, BBR or FLASH"),
        (
            {"verify_layer": "DEFAULT"},
            "verify_layer: must be one of the layers written (RAM, BBR, FLASH), got 'DEFAULT'",
        ),
        (
            {"verify_layer": 0},
            "verify_layer: must be one of the layers written (RAM, BBR, FLASH), got 0",
        ),
        (
            {"verify_layer": "FLASH"},
            "verify_layer: FLASH is not one of apply_to_layers (RAM): it would not hold the new",
        ),
        (
            {"apply_to_layers": ["BBR"]},
            "verify_layer: RAM (the default) is not one of apply_to_layers (BBR)",
        ),
        (
            {"cfg_key_settings": {"key": "CFG_TP_TP1_ENA", "value": 1}},
            "cfg_key_settings: must be a list of {key, value}",
        ),
        (
            {"cfg_key_settings": [5]},
            "cfg_key_settings[0]: must be an object with key and value, got 5",
        ),
        ({"cfg_key_settings": [{"key": "CFG_TP_TP1_ENA"}]}, "cfg_key_settings[0]: missing value"),
        ({"cfg_key_settings": [{"value": 1}]}, "cfg_key_settings[0]: missing key"),
        ({"cfg_key_settings": [{}]}, "cfg_key_settings[0]: missing key and value"),
        (
            {"cfg_key_settings": [{"key": 7, "value": 1}]},
            "cfg_key_settings[0].key: must be a string, got 7",
        ),
        (
            {"cfg_key_settings": [{"key": "CFG_TP_TP9_ENA", "value": 1}]},
            "cfg_key_settings[0] (CFG_TP_TP9_ENA): not a configuration key of the ZED-F9T",
        ),
        (
            {"position": [37.4, -122.1, 12.3]},
            "position: must be an object, got [37.4, -122.1, 12.3]",
        ),
        (
            {"position": {"format": "ECEF", "x_m": 1}},
            "position.format: ECEF position not supported",
        ),
        (
            {"position": {"format": "UTM", "lat_deg": 1, "lon_deg": 1, "height_m": 1}},
            "position.format: must be LLH, got 'UTM'",
        ),
        ({"position": {"lon_deg": 1, "height_m": 1}}, "position.lat_deg: required"),
        (
            {"position": {"lat_deg": "north", "lon_deg": 1, "height_m": 1}},
            "position.lat_deg: must be a number, got 'north'",
        ),
        (
            {"position": {"lat_deg": 91, "lon_deg": 1, "height_m": 1}},
            "position.lat_deg: 91 is outside [-90, 90]",
        ),
        (
            {"position": {"lat_deg": 1, "lon_deg": -180.5, "height_m": 1}},
            "position.lon_deg: -180.5 is outside [-180, 180]",
        ),
        ({"position": {"lat_deg": 1, "lon_deg": 1}}, "position.height_m: required"),
        (
            {"position": {"lat_deg": 1, "lon_deg": 1, "height_m": 1, "acc_m": 0}},
            "position.acc_m: must be a number of metres > 0, got 0",
        ),
        (
            {"position": {"lat_deg": 1, "lon_deg": 1, "height_m": True}},
            "position.height_m: must be a number, got True",
        ),
    ],
)
def test_every_request_problem_names_its_key(change, problem):
    """R-UBX-CFG-1/2/4, R-UBX-INIT-1: "<key path>: <reason>" for each kind of bad request."""
    cfg = {**BASE, **change}
    cfg = {key: value for key, value in cfg.items() if value is not None}
    problems = problems_of(cfg)
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem), problems[0]


def test_tmode_keys_together_with_position_are_refused():
    """R-UBX-CFG-2: a CFG_TMODE_* key and `position` cannot both be given."""
    problems = problems_of(
        with_settings(
            {"key": "CFG-TMODE-MODE", "value": 0},
            position={"lat_deg": 1, "lon_deg": 2, "height_m": 3},
        )
    )
    assert problems == [
        "cfg_key_settings[0] (CFG_TMODE_MODE): CFG_TMODE_* keys cannot be given together with "
        "position"
    ]


def test_every_problem_is_listed_at_once():
    """R-UBX-INIT-1: all problems in one error, the device first, nothing opened."""
    problems = problems_of(
        {
            "f9t_uid": "xyz",
            "baud": -5,
            "cfg_key_settings": [
                {"key": "CFG_NOPE", "value": 1},
                {"key": "CFG_TP_FREQ_TP1", "value": 0.5},
            ],
            "position": {"format": "ECEF"},
        }
    )
    assert problems == [
        "Device path not specified",
        "f9t_uid: must be 10 hex digits, got 'xyz'",
        "baud: must be a positive integer, got -5",
        "position.format: ECEF position not supported (give LLH)",
        "cfg_key_settings[0] (CFG_NOPE): not a configuration key of the ZED-F9T",
        "cfg_key_settings[1] (CFG_TP_FREQ_TP1): value 0.5 is not valid for type U4: not an integer",
    ]
    with pytest.raises(F9tSettingsError, match="must be an object"):
        plan_init(["device", "/dev/ttyACM0"])  # type: ignore[arg-type]


def test_other_keys_are_accepted_and_named_as_ignored():
    """R-UBX-CFG-1: register_csv, host, port, comments are quietly accepted; others are named."""
    plan = plan_init(
        {
            **BASE,
            "register_csv": "x.csv",
            "host": "daq1",
            "port": 50051,
            "comments": "dome 1",
            "verfy_layer": "BBR",
            "f9t_chips": [],
            "position": {"lat_deg": 1, "lon_deg": 2, "height_m": 3, "datum": "WGS84"},
        }
    )
    assert plan.ignored_keys == ("verfy_layer", "f9t_chips", "position.datum")


def test_layers_any_case_and_deduplicated():
    """R-UBX-CFG-1: apply_to_layers any case; verify_layer one of them."""
    plan = plan_init({**BASE, "apply_to_layers": ["ram", "Flash", "RAM"], "verify_layer": "flash"})
    assert (plan.layers, plan.layer_mask, plan.verify_layer) == (("RAM", "FLASH"), 5, "FLASH")
    default = plan_init(BASE)
    assert (default.layers, default.layer_mask, default.verify_layer, default.baud) == (
        ("RAM",),
        1,
        "RAM",
        115200,
    )
    assert default.items == ()
    assert default.dataflow_names == ()


def test_dataflow_names_are_the_messages_enabled_at_rate_one():
    """R-UBX-INIT-9: MSGOUT items of value 1 name the messages to wait for; other rates and 0
    are not checked."""
    plan = plan_init(
        with_settings(
            {"key": "CFG_MSGOUT_UBX_TIM_TP_UART1", "value": 1},
            {"key": "CFG_MSGOUT_UBX_TIM_TP_USB", "value": 1},
            {"key": "CFG_MSGOUT_UBX_NAV_PVT_USB", "value": 5},
            {"key": "CFG_MSGOUT_UBX_NAV_SAT_USB", "value": 0},
            {"key": "CFG_MSGOUT_UBX_MON_HW2_USB", "value": 1},
            {"key": "CFG_MSGOUT_UBX_NAV_TIMEUTC_USB", "value": 1},
        )
    )
    assert plan.dataflow_names == ("TIM-TP", "MON-HW2", "NAV-TIMEUTC")


def test_link_cutting_keys_are_named():
    """Spec section 10: UART1 line settings, UBX protocol switched off on a port, and output
    enabled on only one of USB and UART1 may cut the server's link."""
    plan = plan_init(
        with_settings(
            {"key": "CFG_UART1_BAUDRATE", "value": 38400},
            {"key": "CFG_USBOUTPROT_UBX", "value": 0},
            {"key": "CFG_UART1INPROT_UBX", "value": 1},
            {"key": "CFG_MSGOUT_UBX_TIM_TP_UART1", "value": 1},
            {"key": "CFG_MSGOUT_UBX_NAV_TIMEUTC_USB", "value": 1},
            {"key": "CFG_MSGOUT_UBX_NAV_TIMEUTC_UART1", "value": 1},
        )
    )
    assert plan.link_cutting_keys == (
        "CFG_UART1_BAUDRATE",
        "CFG_USBOUTPROT_UBX",
        "CFG_MSGOUT_UBX_TIM_TP_UART1",
    )


def test_chip_requests_overlay_the_shared_settings(tmp_path):
    """R-UBX-CFG-5: JSON5 (comments, trailing commas); a chip's request is the top level without
    f9t_chips, overlaid key by key by the chip's object; sent to its host:port."""
    path = tmp_path / "f9t_config.json5"
    path.write_text(
        """{
          // shared
          baud: 38400,
          apply_to_layers: ["RAM", "BBR",],
          cfg_key_settings: [{key: "CFG_TP_TP1_ENA", value: 1},],
          f9t_chips: [
            {f9t_uid: "DF03A241BC", host: "daq1", port: 50051, device: "/dev/ttyACM0"},
            {f9t_uid: "0102030405", host: "daq2", port: 50052, device: "/dev/ttyUSB0",
             baud: 115200, apply_to_layers: ["RAM"]},
            {f9t_uid: "0A0B0C0D0E", device: "/dev/ttyACM1"},
          ],
        }"""
    )
    first, second, third = load_chip_requests(path)
    assert first == ChipRequest(
        "daq1",
        50051,
        "DF03A241BC",
        {
            "baud": 38400,
            "apply_to_layers": ["RAM", "BBR"],
            "cfg_key_settings": [{"key": "CFG_TP_TP1_ENA", "value": 1}],
            "f9t_uid": "DF03A241BC",
            "host": "daq1",
            "port": 50051,
            "device": "/dev/ttyACM0",
        },
    )
    assert (second.host, second.port, second.request["baud"]) == ("daq2", 50052, 115200)
    assert second.request["apply_to_layers"] == ["RAM"]
    assert (third.host, third.port) == ("localhost", 50051)
    assert [plan_init(chip.request).baud for chip in (first, second, third)] == [
        38400,
        115200,
        38400,
    ]
    # The same from a dict, as tests and notebooks build it.
    assert (
        load_chip_requests(json.loads(json.dumps(first.request | {"f9t_chips": [{}]})))[0].uid
        == "DF03A241BC"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{f9t_chips: [", "not valid JSON5"),
        ("[1, 2]", "must be an object, got list"),
        ("{baud: 1}", "f9t_chips: must be a non-empty list of chip objects"),
        ("{f9t_chips: []}", "f9t_chips: must be a non-empty list of chip objects"),
        ("{f9t_chips: [5]}", "f9t_chips[0]: must be an object, got 5"),
        (
            "{f9t_chips: [{port: 'x'}]}",
            "f9t_chips[0].port: must be a port number 1..65535, got 'x'",
        ),
        ("{f9t_chips: [{port: 70000}]}", "f9t_chips[0].port: must be a port number 1..65535"),
        ("{f9t_chips: [{host: ''}]}", "f9t_chips[0].host: must be a host name, got ''"),
        (
            "{f9t_chips: [{host: 'a', port: 1}, {host: 'a', port: 1}]}",
            "f9t_chips[1]: a:1 already serves f9t_chips[0] (one server serves one device)",
        ),
    ],
)
def test_f9t_config_file_problems_name_the_file_and_the_key(tmp_path, text, problem):
    """R-UBX-CFG-5: a broken f9t_config.json5 is one error naming the file and the key."""
    path = tmp_path / "f9t.json5"
    path.write_text(text)
    with pytest.raises(F9tSettingsError) as caught:
        load_chip_requests(path)
    (got,) = caught.value.problems
    assert got.startswith(f"{path}: ")
    assert problem in got


def test_a_missing_f9t_config_file_is_named(tmp_path):
    """R-UBX-CFG-5: a file that cannot be read is an F9tSettingsError naming it."""
    with pytest.raises(F9tSettingsError, match=r"nope\.json5: cannot read: No such file"):
        load_chip_requests(tmp_path / "nope.json5")


def test_a_hostile_request_gets_a_short_error():
    """R-UBX-INIT-1: values are shown clipped and at most 20 problems are listed, so the status
    details of a huge bad request stay small."""
    entries = [{"key": "X" * 10_000, "value": 1}] * 500 + [
        {"key": "CFG_TP_TP1_ENA", "value": "Y" * 10_000}
    ]
    problems = problems_of({**BASE, "baud": "Z" * 10_000, "cfg_key_settings": entries})
    assert len(problems) == 21
    assert problems[-1] == "... and 482 more problems"
    assert problems[0] == f"baud: must be a positive integer, got '{'Z' * 76}..."
    assert (
        problems[1]
        == f"cfg_key_settings[0] ({'X' * 77}...): not a configuration key of the ZED-F9T"
    )
    assert len("; ".join(problems)) < 4000
