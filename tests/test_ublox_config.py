"""The `ublox_control` section of the server config (R-UBX-CFG-6), validated like the other
keys: defaults, unknown keys and wrong types name key and file, `serve` exits 2 on them."""

from __future__ import annotations

import json
import logging

import pytest

from panoseti_daq.config import (
    ServerConfig,
    UbloxServerConfig,
    server_config_from_dict,
    ublox_server_config_from_dict,
)
from panoseti_daq.errors import ConfigError
from tests.helpers import one_line_exit_2, serve_refused


def test_defaults_never_allow_pseudo_terminals():
    """R-UBX-CFG-6 defaults; R-UBX-INIT-4: /dev/pts/* only where a config allows it."""
    ublox = ServerConfig.defaults().ublox_control
    assert ublox == UbloxServerConfig()
    assert ublox.allowed_devices == (
        "/dev/ttyACM*",
        "/dev/ttyUSB*",
        "/dev/serial/by-id/*",
        "/dev/serial/by-path/*",
    )
    assert (ublox.max_read_queue_size, ublox.shutdown_grace_period, ublox.max_workers) == (
        200,
        0.5,
        5,
    )
    assert (ublox.command_timeout_s, ublox.signal_settle_s, ublox.dataflow_timeout_s) == (
        2.5,
        0.3,
        3.0,
    )
    assert (ublox.silence_warning_s, ublox.max_capture_clients, ublox.poll_timeout_s) == (
        5.0,
        32,
        2.0,
    )
    assert ublox.max_poll_messages == 32
    assert (ublox.host, ublox.port) == ("[::]", 50051)


def test_section_is_read():
    """R-UBX-CFG-6: the spec's example section."""
    config = server_config_from_dict(
        {"ublox_control": {"allowed_devices": ["/dev/pts/*"], "max_capture_clients": 8}}
    )
    assert config.ublox_control.allowed_devices == ("/dev/pts/*",)
    assert config.ublox_control.max_capture_clients == 8


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        ({"bogus": 1}, "ublox_control.bogus", "unknown key"),
        ({"poll_timeout_s": "2"}, "ublox_control.poll_timeout_s", "must be a number"),
        ({"max_capture_clients": 0}, "ublox_control.max_capture_clients", ">= 1"),
        ({"allowed_devices": "/dev/pts/*"}, "ublox_control.allowed_devices", "list"),
        ({"allowed_devices": ["pts/*"]}, "ublox_control.allowed_devices", "absolute"),
        ({"command_timeout_s": 0}, "ublox_control.command_timeout_s", "> 0"),
    ],
)
def test_bad_values_name_key_and_file(tmp_path, section, key, words):
    with pytest.raises(ConfigError) as info:
        server_config_from_dict({"ublox_control": section}, tmp_path / "c.json")
    assert info.value.key == key
    assert words in info.value.reason
    assert str(tmp_path / "c.json") in str(info.value)


def test_original_server_config_is_accepted(caplog):
    """R-UBX-CFG-6: the original's file, with the early layout's sections warned about."""
    original = {
        "max_read_queue_size": 100,
        "shutdown_grace_period": 1,
        "max_workers": 10,
        "InitF9t": {"timeout": 3},
        "CaptureUblox": {},
    }
    with caplog.at_level(logging.WARNING, logger="panoseti_daq.config"):
        config = ublox_server_config_from_dict(original, "/etc/u.json")
    assert (config.max_read_queue_size, config.shutdown_grace_period) == (100, 1.0)
    assert "InitF9t" in caplog.text and "CaptureUblox" in caplog.text


def test_serve_exits_2_naming_key_and_file(tmp_path):
    """R-UBX-CFG-6: one line naming key and file, exit code 2."""
    config = {"ublox_control": {"max_capture_client": 8}}
    result = serve_refused(tmp_path, "--port", "0", config=config)
    one_line_exit_2(result, "ublox_control.max_capture_client", str(tmp_path / "c.json"))


def test_section_host_and_port_are_named_as_unused(caplog):
    """R-UBX-SRV-1: beside DaqData the service shares its listeners; a port of its own in the
    section is accepted with a warning naming it, not silently."""
    with caplog.at_level(logging.WARNING, logger="panoseti_daq.config"):
        config = server_config_from_dict({"ublox_control": {"port": 50052}})
    assert config.ublox_control.port == 50052
    assert "ublox_control.port" in caplog.text and "DaqData listeners" in caplog.text


def test_serve_takes_the_original_file_and_refuses_a_bad_one(tmp_path):
    """R-UBX-CFG-6: `serve --ublox-config` reads the original's separate file, validated the
    same way: a wrong type is one line naming key and file, exit code 2."""
    path = tmp_path / "ublox_control_server_config.json"
    path.write_text(json.dumps({"max_read_queue_size": "many", "max_workers": 10}))
    result = serve_refused(tmp_path, "--ublox-config", str(path), "--port", "0")
    one_line_exit_2(result, "'max_read_queue_size'", str(path))
