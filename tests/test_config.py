"""Server configuration files: defaults, both simulate_daq_cfg layouts, validation (spec §10)."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from panoseti_daq.config import (
    BUNDLED_CONFIG_DIR,
    HpIoConfig,
    ServerConfig,
    SimulateConfig,
    hp_io_config_from_dict,
    load_hp_io_config,
    load_server_config,
    server_config_from_dict,
)
from panoseti_daq.errors import ConfigError

FILE = Path("/etc/panoseti/daq_data_server_config.json")

# The seed README's daq_data_server_config.json, verbatim.
SEED_CONFIG: dict[str, Any] = {
    "init_from_default": False,
    "default_hp_io_config_file": "hp_io_config_simulate.json",
    "unix_domain_socket": "unix:///tmp/daq_data.sock",
    "max_concurrent_rpcs": 100,
    "max_read_queue_size": 50,
    "min_hp_io_update_interval_seconds": 0.01,
    "max_client_update_interval_seconds": 60,
    "max_reader_enqueue_timeouts": 2,
    "max_reader_dequeue_timeouts": 3,
    "reader_timeout": 5,
    "shutdown_grace_period": 5,
    "hp_io_stop_timeout": 5.0,
    "valid_data_products": ["img8", "img16", "ph256", "ph1024"],
    "simulate_daq_cfg": {
        "simulation_mode": "filesystem",
        "movie_type": "img16",
        "ph_type": "ph256",
        "frames_per_pff": 1000,
        "sim_module_ids": [224],
        "real_module_id": 1,
        "files": {
            "data_dir": "daq_data/simulated_data_dir",
            "real_run_dir": "obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd",
            "sim_run_dir_template": "module_{module_id}/obs_SIMULATE",
            "movie_pff_template": "start_2024-07-25T04_34_46Z.dp_img16.bpp_2.module_{module_id}"
            ".seqno_{seqno}.debug_TRUNCATED.pff",
            "ph_pff_template": "start_2024-07-25T04_34_46Z.dp_ph256.bpp_2.module_{module_id}"
            ".seqno_{seqno}.debug_TRUNCATED.pff",
            "daq_active_file": "module_{module_id}.daq-active",
        },
    },
}

# The original's later layout (its tests' daq_data_server_config.json).
LATER_CONFIG: dict[str, Any] = {
    "init_from_default": False,
    "max_concurrent_rpcs": 100,
    "min_hp_io_update_interval_seconds": 0.001,
    "valid_data_products": ["img8", "img16", "ph256", "ph1024"],
    "read_status_pipe_name": "read_status_2",
    "acquisition_methods": {
        "filesystem_poll": {"enabled": True},
        "filesystem_pipe": {"enabled": True},
        "uds": {
            "enabled": True,
            "data_products": ["img8", "img16", "ph256", "ph1024"],
            "socket_path_template": "/tmp/hashpipe_grpc.dp_{dp_name}.sock",
            "read_timeout": 600.0,
        },
    },
    "simulate_daq_cfg": {
        "simulation_mode": "filesystem_poll",
        "sim_module_ids": [224],
        "movie_type": "img16",
        "ph_type": "ph256",
        "source_data": {
            "real_module_id": 1,
            "movie_pff_path": "daq_data/simulated_data_dir/obs_Lick/x.dp_img16.pff",
            "ph_pff_path": "daq_data/simulated_data_dir/obs_Lick/x.dp_ph256.pff",
        },
        "filesystem_cfg": {
            "sim_data_dir": "daq_data/simulated_data_dir",
            "sim_run_dir_template": "module_{module_id}/obs_SIMULATE",
            "daq_active_file": "module_{module_id}.daq-active",
        },
        "strategies": {
            "filesystem_poll": {"frames_per_pff": 100, "frame_limit": 1000},
            "filesystem_pipe": {"frames_per_pff": 50, "frame_limit": 1000},
            "uds": {"data_products": ["ph256", "img16"]},
            "rpc": {},
        },
    },
}


def _error(data: dict[str, Any], file: Path | None = FILE) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        server_config_from_dict(data, file)
    return info.value


def test_bundled_config_loads_for_the_demo() -> None:
    """The bundled config: filesystem simulation of module 224, img16 + ph256 (make demo)."""
    config = load_server_config()
    sim = config.simulate_daq_cfg
    assert sim.simulation_mode == "filesystem"
    assert (sim.movie_type, sim.ph_type, sim.sim_module_ids) == ("img16", "ph256", (224,))
    assert sim.source_dir is None
    assert sim.frame_rate_hz > 0
    assert config.config_file == (BUNDLED_CONFIG_DIR / "daq_data_server_config.json").resolve()
    hp_io = load_hp_io_config(config.default_hp_io_config_path())
    assert hp_io == HpIoConfig(
        data_dir="",
        update_interval_seconds=0.1,
        force=True,
        simulate_daq=True,
        module_ids=(),
        comments=hp_io.comments,
    )
    assert hp_io.comments


def test_defaults_are_the_originals() -> None:
    """R-CFG-1 / spec §10: every key with the original's default; the new keys' defaults."""
    config = server_config_from_dict({})
    assert config == ServerConfig.defaults()
    assert config.init_from_default is False
    assert config.default_hp_io_config_file == "hp_io_config_simulate.json"
    assert config.unix_domain_socket == "unix:///tmp/daq_data.sock"
    assert config.uds_path == "/tmp/daq_data.sock"
    assert (config.max_concurrent_rpcs, config.max_read_queue_size) == (100, 50)
    assert config.min_hp_io_update_interval_seconds == 0.01
    assert config.max_client_update_interval_seconds == 60
    assert (config.max_reader_enqueue_timeouts, config.max_reader_dequeue_timeouts) == (2, 3)
    assert (config.reader_timeout, config.shutdown_grace_period) == (5, 5)
    assert config.hp_io_stop_timeout == 5.0
    assert set(config.valid_data_products) == {"img8", "img16", "ph256", "ph1024"}
    assert (config.host, config.port) == ("[::]", 50051)
    assert config.server_name == socket.gethostname()
    assert config.daq_active_check == ("process", "marker", "recent_write")
    assert config.scanner_watch is True
    sim = config.simulate_daq_cfg
    assert sim.data_dir == Path(tempfile.gettempdir()) / f"panoseti_daq_sim_{os.getpid()}"
    assert config.allowed_data_roots == (Path.cwd(), sim.data_dir)
    assert (sim.frame_rate_hz, sim.frame_limit, sim.source_dir) == (10, 0, None)
    assert config.uds_ingest.enabled is False
    assert config.replace(port=1).port == 1


def test_seed_layout_is_accepted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """R-CFG-4: the seed README's `files` layout; relative paths resolve against the file."""
    file = tmp_path / "daq_data_server_config.json"
    file.write_text(json.dumps(SEED_CONFIG))
    with caplog.at_level(logging.WARNING, "panoseti_daq.config"):
        config = load_server_config(file)
    sim = config.simulate_daq_cfg
    assert sim.data_dir == tmp_path / "daq_data" / "simulated_data_dir"
    assert sim.source_dir is None  # the real run is not there: replay the bundled data
    assert (sim.frames_per_pff, sim.real_module_id) == (1000, 1)
    assert "real_run_dir" in caplog.text
    assert "simulate_daq_cfg.files.movie_pff_template" in caplog.text


def test_seed_layout_real_run_dir_is_found(tmp_path: Path) -> None:
    """R-CFG-4: real_run_dir under data_dir/module_<real_module_id>/ becomes the source."""
    run = tmp_path / "daq_data/simulated_data_dir/module_1" / "obs_Lick.pffd"
    run.mkdir(parents=True)
    data = json.loads(json.dumps(SEED_CONFIG))
    data["simulate_daq_cfg"]["files"]["real_run_dir"] = "obs_Lick.pffd"
    config = server_config_from_dict(data, tmp_path / "c.json")
    assert config.simulate_daq_cfg.source_dir == run


def test_later_layout_is_accepted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """R-CFG-4, R-CFG-5: source_data, filesystem_cfg, strategies, acquisition_methods (rpc too)
    and the later top-level keys (read_status_pipe_name) load."""
    with caplog.at_level(logging.WARNING, "panoseti_daq.config"):
        config = server_config_from_dict(LATER_CONFIG, tmp_path / "c.json")
    sim = config.simulate_daq_cfg
    assert sim.simulation_mode == "filesystem"
    assert (sim.frames_per_pff, sim.frame_limit) == (100, 1000)
    assert sim.data_dir == tmp_path / "daq_data" / "simulated_data_dir"
    assert sim.real_module_id == 1
    assert config.min_hp_io_update_interval_seconds == 0.001
    uds = config.uds_ingest
    assert uds.enabled and uds.read_timeout_s == 600.0
    assert uds.socket_path_template == "/tmp/hashpipe_grpc.dp_{dp_name}.sock"
    # Keys we do not implement are named in a warning, not an error.
    assert "read_status_pipe_name" in caplog.text
    assert "simulate_daq_cfg.strategies.uds.data_products" in caplog.text


def test_later_layout_source_data_found(tmp_path: Path) -> None:
    """R-CFG-4: the directory of source_data.movie_pff_path is the replayed run."""
    run = tmp_path / "run"
    run.mkdir()
    data = json.loads(json.dumps(LATER_CONFIG))
    data["simulate_daq_cfg"]["source_data"]["movie_pff_path"] = "run/x.dp_img16.pff"
    data["simulate_daq_cfg"]["simulation_mode"] = "rpc"
    data["simulate_daq_cfg"]["strategies"]["rpc"] = {"frame_limit": -1, "frame_rate_hz": 0}
    config = server_config_from_dict(data, tmp_path / "c.json")
    sim = config.simulate_daq_cfg
    assert sim.source_dir == run
    assert (sim.simulation_mode, sim.frame_limit, sim.frame_rate_hz) == ("rpc", 0, 0)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"max_concurent_rpcs": 3}, "max_concurent_rpcs"),
        ({"simulate_daq_cfg": {"frame_per_pff": 3}}, "simulate_daq_cfg.frame_per_pff"),
        ({"simulate_daq_cfg": {"files": {"data": "x"}}}, "simulate_daq_cfg.files.data"),
        ({"acquisition_methods": {"uds": {"path": "x"}}}, "acquisition_methods.uds.path"),
        ({"acquisition_methods": {"tcp": {}}}, "acquisition_methods.tcp"),
        ({"simulate_daq_cfg": {"strategies": {"x": {}}}}, "simulate_daq_cfg.strategies.x"),
    ],
)
def test_unknown_key_is_an_error(data: dict[str, Any], key: str) -> None:
    """R-CFG-1: an unknown key names itself (dotted) and the file."""
    error = _error(data)
    assert error.key == key
    assert str(FILE) in str(error) and key in str(error)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"max_read_queue_size": -1}, "max_read_queue_size"),
        ({"max_read_queue_size": 0}, "max_read_queue_size"),
        ({"max_concurrent_rpcs": 0}, "max_concurrent_rpcs"),
        ({"max_reader_enqueue_timeouts": 0}, "max_reader_enqueue_timeouts"),
        ({"max_reader_dequeue_timeouts": 0}, "max_reader_dequeue_timeouts"),
        ({"min_hp_io_update_interval_seconds": 0}, "min_hp_io_update_interval_seconds"),
        ({"max_client_update_interval_seconds": -1}, "max_client_update_interval_seconds"),
        ({"reader_timeout": 0}, "reader_timeout"),
        ({"hp_io_stop_timeout": 0.0}, "hp_io_stop_timeout"),
        ({"shutdown_grace_period": -0.5}, "shutdown_grace_period"),
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"host": ""}, "host"),
        ({"valid_data_products": ["img16", "img32"]}, "valid_data_products"),
        ({"valid_data_products": []}, "valid_data_products"),
        ({"daq_active_check": ["marker", "psychic"]}, "daq_active_check"),
        ({"simulate_daq_cfg": {"simulation_mode": "magic"}}, "simulate_daq_cfg.simulation_mode"),
        ({"simulate_daq_cfg": {"movie_type": "ph256"}}, "simulate_daq_cfg.movie_type"),
        ({"simulate_daq_cfg": {"ph_type": "img8"}}, "simulate_daq_cfg.ph_type"),
        ({"simulate_daq_cfg": {"frames_per_pff": 0}}, "simulate_daq_cfg.frames_per_pff"),
        ({"simulate_daq_cfg": {"frame_limit": -2}}, "simulate_daq_cfg.frame_limit"),
        ({"simulate_daq_cfg": {"frame_rate_hz": -1}}, "simulate_daq_cfg.frame_rate_hz"),
        ({"simulate_daq_cfg": {"frame_rate_hz": 0}}, "simulate_daq_cfg.frame_rate_hz"),
        ({"simulate_daq_cfg": {"sim_module_ids": []}}, "simulate_daq_cfg.sim_module_ids"),
        ({"simulate_daq_cfg": {"sim_module_ids": [1, 1]}}, "simulate_daq_cfg.sim_module_ids"),
        ({"simulate_daq_cfg": {"sim_module_ids": [-1]}}, "simulate_daq_cfg.sim_module_ids"),
        ({"simulate_daq_cfg": {"source_dir": "/no/such/dir"}}, "simulate_daq_cfg.source_dir"),
        (
            {"simulate_daq_cfg": {"strategies": {"filesystem": {"frames_per_pff": -5}}}},
            "simulate_daq_cfg.strategies.filesystem.frames_per_pff",
        ),
        (
            {"acquisition_methods": {"uds": {"socket_path_template": "/tmp/x.sock"}}},
            "acquisition_methods.uds.socket_path_template",
        ),
        (
            {"acquisition_methods": {"uds": {"read_timeout": 0}}},
            "acquisition_methods.uds.read_timeout",
        ),
        ({"reader_timeout": float("nan")}, "reader_timeout"),
        ({"reader_timeout": float("inf")}, "reader_timeout"),
    ],
)
def test_out_of_range_value_is_an_error(data: dict[str, Any], key: str) -> None:
    """R-CFG-1: out-of-range values (negative sizes, zero limits, unknown names) name the key."""
    error = _error(data)
    assert error.key == key
    assert str(FILE) in str(error)


def test_ints_are_accepted_where_floats_are_bools_are_not_ints() -> None:
    """R-CFG-1: JSON 5 is a valid float; true is not an integer."""
    config = server_config_from_dict({"reader_timeout": 7, "hp_io_stop_timeout": 1})
    assert config.reader_timeout == 7.0 and isinstance(config.reader_timeout, float)
    assert _error({"max_concurrent_rpcs": True}).key == "max_concurrent_rpcs"
    assert _error({"reader_timeout": False}).key == "reader_timeout"
    assert _error({"simulate_daq_cfg": {"sim_module_ids": [True]}}).key == (
        "simulate_daq_cfg.sim_module_ids"
    )


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    """Relative data_dir and allowed_data_roots are relative to the config file's directory."""
    config = server_config_from_dict(
        {"allowed_data_roots": ["data", "/abs"], "simulate_daq_cfg": {"data_dir": "sim"}},
        tmp_path / "c.json",
    )
    assert config.simulate_daq_cfg.data_dir == tmp_path / "sim"
    assert config.allowed_data_roots == ((tmp_path / "data").resolve(), Path("/abs"))


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    """R-CFG-1: a missing file, bad JSON or a non-object name the file."""
    with pytest.raises(ConfigError, match="not found"):
        load_server_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        load_server_config(bad)
    assert str(bad) in str(info.value)
    bad.write_text("[]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_server_config(bad)
    bad.write_text('{"simulate_daq_cfg": 3}')
    with pytest.raises(ConfigError) as info:
        load_server_config(bad)
    assert info.value.key == "simulate_daq_cfg"


# --- wrong types, exhaustively ---------------------------------------------------------------

# dotted key -> the JSON kinds it accepts
_TYPED_KEYS: dict[str, set[str]] = {
    "init_from_default": {"bool"},
    "default_hp_io_config_file": {"str"},
    "unix_domain_socket": {"str"},
    "max_concurrent_rpcs": {"int"},
    "max_read_queue_size": {"int"},
    "min_hp_io_update_interval_seconds": {"int", "float"},
    "max_client_update_interval_seconds": {"int", "float"},
    "max_reader_enqueue_timeouts": {"int"},
    "max_reader_dequeue_timeouts": {"int"},
    "reader_timeout": {"int", "float"},
    "shutdown_grace_period": {"int", "float"},
    "hp_io_stop_timeout": {"int", "float"},
    "valid_data_products": {"list"},
    "allowed_data_roots": {"list"},
    "daq_active_check": {"list"},
    "scanner_watch": {"bool"},
    "server_name": {"str"},
    "host": {"str"},
    "port": {"int"},
    "simulate_daq_cfg": {"dict"},
    "acquisition_methods": {"dict"},
    "simulate_daq_cfg.simulation_mode": {"str"},
    "simulate_daq_cfg.movie_type": {"str"},
    "simulate_daq_cfg.ph_type": {"str"},
    "simulate_daq_cfg.frames_per_pff": {"int"},
    "simulate_daq_cfg.sim_module_ids": {"list"},
    "simulate_daq_cfg.real_module_id": {"int"},
    "simulate_daq_cfg.data_dir": {"str"},
    "simulate_daq_cfg.frame_rate_hz": {"int", "float"},
    "simulate_daq_cfg.frame_limit": {"int"},
    "simulate_daq_cfg.files": {"dict"},
    "simulate_daq_cfg.files.data_dir": {"str"},
    "simulate_daq_cfg.files.real_run_dir": {"str"},
    "simulate_daq_cfg.source_data": {"dict"},
    "simulate_daq_cfg.source_data.real_module_id": {"int"},
    "simulate_daq_cfg.source_data.movie_pff_path": {"str"},
    "simulate_daq_cfg.filesystem_cfg.sim_data_dir": {"str"},
    "simulate_daq_cfg.strategies.filesystem.frames_per_pff": {"int"},
    "simulate_daq_cfg.strategies.rpc.frame_limit": {"int"},
    "acquisition_methods.uds.enabled": {"bool"},
    "acquisition_methods.uds.read_timeout": {"int", "float"},
    "acquisition_methods.uds.data_products": {"list"},
    "acquisition_methods.filesystem_poll.enabled": {"bool"},
    # R-PEER-1 .. R-PEER-4 (docs/limits.md)
    "max_message_bytes": {"int"},
    "handshake_timeout_seconds": {"int", "float"},
    "idle_connection_timeout_seconds": {"int", "float"},
    "max_connections": {"int"},
    "max_streams_per_peer": {"int", "null"},
}

_VALUES = {
    "bool": st.booleans(),
    "int": st.integers(-(2**40), 2**40),
    "float": st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    "str": st.text(max_size=8),
    "list": st.lists(st.integers(), max_size=3),
    "dict": st.dictionaries(st.sampled_from(["zz_unknown"]), st.integers(), min_size=1),
    "null": st.none(),
}


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    *parents, leaf = dotted.split(".")
    data: dict[str, Any] = {leaf: value}
    for parent in reversed(parents):
        data = {parent: data}
    return data


@st.composite
def _wrong_typed(draw: st.DrawFn) -> tuple[str, Any]:
    key = draw(st.sampled_from(sorted(_TYPED_KEYS)))
    kind = draw(st.sampled_from(sorted(set(_VALUES) - _TYPED_KEYS[key])))
    return key, draw(_VALUES[kind])


@settings(max_examples=300, deadline=None)
@given(_wrong_typed())
def test_wrong_type_always_names_the_key_and_file(case: tuple[str, Any]) -> None:
    """R-CFG-1: any value of a wrong JSON type gives a ConfigError naming the key and file."""
    key, value = case
    error = _error(_nest(key, value))
    assert error.key == key
    assert error.file == str(FILE)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: k not in _TYPED_KEYS),
        st.integers(),
        min_size=1,
        max_size=3,
    )
)
def test_random_keys_are_rejected(data: dict[str, Any]) -> None:
    """R-CFG-1: keys outside the schema are errors (except comments and later-layout keys)."""
    known_later = {
        "comments",
        "role",
        "gateway",
        "log_dir",
        "grpc_logging",
        "read_status_pipe_name",
    }
    if set(data) <= known_later:
        server_config_from_dict(data, FILE)
    else:
        assert _error(data).key in set(data) - known_later


# --- hp_io_config.json -----------------------------------------------------------------------


def test_hp_io_config_keys_and_validation() -> None:
    """R-CFG-2: data_dir, update_interval_seconds, force, simulate_daq, module_ids, comments."""
    config = hp_io_config_from_dict(
        {
            "data_dir": "/mnt/panoseti",
            "update_interval_seconds": 1,
            "force": False,
            "simulate_daq": False,
            "module_ids": [1, 254],
            "comments": "x",
        }
    )
    assert config == HpIoConfig("/mnt/panoseti", 1.0, False, False, (1, 254), "x")
    assert hp_io_config_from_dict({}) == HpIoConfig()
    for data, key in [
        ({"update_interval_seconds": 0}, "update_interval_seconds"),
        ({"update_interval_seconds": "1"}, "update_interval_seconds"),
        ({"force": 1}, "force"),
        ({"module_ids": "1-3"}, "module_ids"),
        ({"data_dir": None}, "data_dir"),
        ({"extra": 1}, "extra"),
    ]:
        with pytest.raises(ConfigError) as info:
            hp_io_config_from_dict(data, "hp.json")
        assert (info.value.key, info.value.file) == (key, "hp.json")


def test_simulate_config_is_frozen() -> None:
    """Configs are frozen dataclasses."""
    with pytest.raises(AttributeError):
        SimulateConfig().frame_limit = 3  # type: ignore[misc]


def test_rpc_simulation_defaults_to_full_speed() -> None:
    """R-SIM-3: rpc mode uploads as fast as backpressure allows unless a rate is given."""
    rpc = server_config_from_dict({"simulate_daq_cfg": {"simulation_mode": "rpc"}})
    assert rpc.simulate_daq_cfg.frame_rate_hz == 0.0
    paced = server_config_from_dict(
        {"simulate_daq_cfg": {"simulation_mode": "rpc", "frame_rate_hz": 5}}
    )
    assert paced.simulate_daq_cfg.frame_rate_hz == 5.0
    assert server_config_from_dict({}).simulate_daq_cfg.frame_rate_hz == 10.0


def test_acquisition_methods_rpc_section_loads(caplog: pytest.LogCaptureFixture) -> None:
    """R-CFG-5: the original writes acquisition_methods.rpc for its rpc simulation; it loads,
    and its `enabled` flag is validated (UploadImages is always on here)."""
    data = json.loads(json.dumps(LATER_CONFIG))
    data["acquisition_methods"]["rpc"] = {"enabled": True}
    server_config_from_dict(data, FILE)
    data["acquisition_methods"]["rpc"] = {"enabled": "yes"}
    error = _error(data)
    assert error.key == "acquisition_methods.rpc.enabled" and str(FILE) in str(error)
    data["acquisition_methods"]["rpc"] = {"enabled": True, "port": 1}
    assert _error(data).key == "acquisition_methods.rpc.port"
    data["acquisition_methods"]["rpc"] = {"enabled": False}
    with caplog.at_level(logging.WARNING, "panoseti_daq.config"):
        server_config_from_dict(data, FILE)
    assert "acquisition_methods.rpc.enabled" in caplog.text


def test_later_layout_paths_resolve_against_the_working_directory_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R-CFG-5: relative source_data.*_pff_path and filesystem_cfg.sim_data_dir resolve as the
    original resolves them, against the working directory, and against the config file's
    directory only when the first does not exist."""
    cwd, etc = tmp_path / "cwd", tmp_path / "etc"
    for base in (cwd, etc):
        (base / "daq_data" / "obs_Lick").mkdir(parents=True)
        (base / "daq_data" / "obs_Lick" / "x.pff").touch()
    monkeypatch.chdir(cwd)
    data = json.loads(json.dumps(LATER_CONFIG))
    data["simulate_daq_cfg"]["source_data"]["movie_pff_path"] = "daq_data/obs_Lick/x.pff"
    data["simulate_daq_cfg"]["filesystem_cfg"]["sim_data_dir"] = "daq_data"
    sim = server_config_from_dict(data, etc / "c.json").simulate_daq_cfg
    assert sim.source_dir == cwd / "daq_data" / "obs_Lick"
    assert sim.data_dir == cwd / "daq_data"
    # Not under the working directory: the config file's directory.
    monkeypatch.chdir(tmp_path)
    sim = server_config_from_dict(data, etc / "c.json").simulate_daq_cfg
    assert sim.source_dir == etc / "daq_data" / "obs_Lick"
    assert sim.data_dir == etc / "daq_data"


def test_peer_limits_have_the_specs_defaults():
    """R-PEER-1, R-PEER-3, R-PEER-4: the defaults of section 15."""
    config = server_config_from_dict({}, FILE)
    assert config.max_message_bytes == 4 * 1024 * 1024
    assert config.handshake_timeout_seconds == 10
    assert config.idle_connection_timeout_seconds == 300
    assert config.max_connections == 1000
    assert config.streams_per_peer == 50  # half of max_concurrent_rpcs
    assert server_config_from_dict({"max_concurrent_rpcs": 7}, FILE).streams_per_peer == 3
    assert server_config_from_dict({"max_concurrent_rpcs": 1}, FILE).streams_per_peer == 1
    assert server_config_from_dict({"max_streams_per_peer": 9}, FILE).streams_per_peer == 9


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("max_message_bytes", 1000, ">= 65536"),
        ("max_message_bytes", 2**31, "<= 2147483647"),
        ("handshake_timeout_seconds", 0, "> 0.0"),
        ("handshake_timeout_seconds", float("inf"), "finite"),
        ("idle_connection_timeout_seconds", -1, "> 0.0"),
        ("max_connections", 0, ">= 1"),
        ("max_streams_per_peer", 0, ">= 1"),
    ],
)
def test_peer_limits_out_of_range_name_key_and_file(key, value, reason):
    """R-CFG-1 for the limits of section 15: key, file and the range."""
    error = _error({key: value})
    assert (error.key, error.file) == (key, str(FILE))
    assert reason in str(error)
