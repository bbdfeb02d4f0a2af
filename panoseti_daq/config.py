"""The configuration formats (spec §10): daq_data_server_config.json (the server's),
hp_io_config.json (what InitHpIo configures: the server applies it, clients send it) and the
settings clients share with the server (HTTP/2 window bounds). The client's daq_config.json is
read by `panoseti_daq.client.targets`. The simulation's and the demo's files ship in
panoseti_daq/data/config/.

Each file type has one loader that validates every key at load time and returns a frozen
dataclass; an unknown key, a wrong type or an out-of-range value raises ConfigError naming the
key (dotted for nested keys) and the file (R-CFG-1). Defaults live in the dataclasses.

`simulate_daq_cfg` is read in both layouts of the original (R-CFG-4): the panoseti_grpc README's
(`files` with data_dir, real_run_dir and name templates) and the later one (`source_data`,
`filesystem_cfg`, `strategies` per mode). Keys of the later layout that we do not implement are
accepted with a warning naming them; its relative paths resolve against the working directory
first, as the original resolves them (R-CFG-5).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._bundled import BUNDLED_CONFIG_DIR
from .errors import ConfigError
from .products import PRODUCTS

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_CONFIG_DIR",
    "DAQ_ACTIVE_CHECKS",
    "SIMULATION_MODES",
    "HpIoConfig",
    "ServerConfig",
    "SimulateConfig",
    "UbloxServerConfig",
    "UdsIngestConfig",
    "client_hp_io_config",
    "default_sim_data_dir",
    "hp_io_config_from_dict",
    "load_hp_io_config",
    "load_server_config",
    "load_ublox_server_config",
    "server_config_from_dict",
    "ublox_server_config_from_dict",
]

DAQ_ACTIVE_CHECKS = ("process", "marker", "recent_write")
SIMULATION_MODES = ("filesystem", "rpc", "uds")
# The later layout names the filesystem simulation after the hp_io method that reads it.
_MODE_ALIASES = {"filesystem_poll": "filesystem", "filesystem_pipe": "filesystem"}
MOVIE_TYPES = tuple(name for name, p in PRODUCTS.items() if p.is_movie)
PH_TYPES = tuple(name for name, p in PRODUCTS.items() if not p.is_movie)
_MAX_UINT32 = 2**32 - 1
# Top-level keys of the original's later versions that this server does not implement.
_LATER_TOP_LEVEL = ("role", "gateway", "log_dir", "grpc_logging", "read_status_pipe_name")
# The names the filesystem simulation uses; other values of panoseti_grpc's templates are ignored.
_STANDARD_TEMPLATES = {
    "sim_run_dir_template": "module_{module_id}/obs_SIMULATE",
    "daq_active_file": "module_{module_id}.daq-active",
}


def default_sim_data_dir() -> Path:
    """Where the filesystem simulation writes its run unless configured: a directory of this
    server process under the temporary directory, so that two servers on one host never share
    one (R-SIM-7)."""
    return Path(tempfile.gettempdir()) / f"panoseti_daq_sim_{os.getpid()}"


@dataclass(frozen=True)
class SimulateConfig:
    """simulate_daq_cfg: how the simulation replays archived data (spec §9, R-SIM-1)."""

    simulation_mode: str = "filesystem"
    movie_type: str = "img16"
    ph_type: str = "ph256"
    frames_per_pff: int = 1000
    sim_module_ids: tuple[int, ...] = (224,)
    real_module_id: int = 1
    data_dir: Path = field(default_factory=default_sim_data_dir)
    source_dir: Path | None = None
    frame_rate_hz: float = 10.0
    frame_limit: int = 0


@dataclass(frozen=True)
class UdsIngestConfig:
    """acquisition_methods.uds: Hashpipe's Unix-socket ingest (spec §12, R-UDS-1)."""

    enabled: bool = False
    data_products: tuple[str, ...] = tuple(PRODUCTS)
    socket_path_template: str = "/tmp/hashpipe_grpc.dp_{dp_name}.sock"
    read_timeout_s: float = 60.0


@dataclass(frozen=True)
class UbloxServerConfig:
    """The `ublox_control` section: the UbloxControl service's settings (R-UBX-CFG-6)."""

    # Shell patterns a client's device must match (after following symlinks, R-UBX-INIT-4).
    allowed_devices: tuple[str, ...] = (
        "/dev/ttyACM*",
        "/dev/ttyUSB*",
        "/dev/serial/by-id/*",
        "/dev/serial/by-path/*",
    )
    max_read_queue_size: int = 200
    shutdown_grace_period: float = 0.5
    max_workers: int = 5  # accepted, unused: the original's grpcio thread-pool size
    # Its own listener when UbloxControl runs alone; beside DaqData it shares DaqData's.
    host: str = "[::]"
    port: int = 50051
    command_timeout_s: float = 2.5
    signal_settle_s: float = 0.3
    dataflow_timeout_s: float = 3.0
    silence_warning_s: float = 5.0
    max_capture_clients: int = 32
    poll_timeout_s: float = 2.0
    max_poll_messages: int = 32


# HTTP/2 allows flow-control windows from 65,535 bytes (its initial window) to 2**31 - 1.
HTTP2_WINDOW_MIN = 65_535
HTTP2_WINDOW_MAX = 2**31 - 1
HTTP2_WINDOW_DEFAULT = 256 * 1024
# gRPC's usual receive limit: what a default grpcio client accepts (R-PEER-1, R-PEER-2).
GRPC_DEFAULT_MESSAGE_BYTES = 4 * 1024 * 1024
# A message limit below this could not hold one img16 upload; above 2**31 - 1 gRPC's framing
# (a 32-bit length) and HTTP/2 windows stop making sense.
MIN_MESSAGE_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 2**31 - 1


@dataclass(frozen=True)
class ServerConfig:
    """daq_data_server_config.json, validated (spec §10)."""

    init_from_default: bool = False
    default_hp_io_config_file: str = "hp_io_config_simulate.json"
    # R-OPS-1: an hp_io_config.json applied at start, with InitHpIo's checks; None: none.
    init_hp_io: Path | None = None
    unix_domain_socket: str = "unix:///tmp/daq_data.sock"
    max_concurrent_rpcs: int = 100
    max_read_queue_size: int = 50
    min_hp_io_update_interval_seconds: float = 0.01
    max_client_update_interval_seconds: float = 60.0
    max_reader_enqueue_timeouts: int = 2
    max_reader_dequeue_timeouts: int = 3
    reader_timeout: float = 5.0
    shutdown_grace_period: float = 5.0
    hp_io_stop_timeout: float = 5.0
    valid_data_products: tuple[str, ...] = tuple(PRODUCTS)
    simulate_daq_cfg: SimulateConfig = field(default_factory=SimulateConfig)
    allowed_data_roots: tuple[Path, ...] = ()
    daq_active_check: tuple[str, ...] = DAQ_ACTIVE_CHECKS
    scanner_watch: bool = True
    server_name: str = field(default_factory=socket.gethostname)
    host: str = "[::]"
    port: int = 50051
    # Prometheus /metrics on this TCP port (same bind address as the gRPC listener); None: off.
    metrics_port: int | None = None
    uds_ingest: UdsIngestConfig = field(default_factory=UdsIngestConfig)
    # Inbound HTTP/2 flow-control window, per connection and per stream (bounds the bytes an
    # uploader has in flight ahead of the hub; see server/flow.py).
    http2_window_bytes: int = HTTP2_WINDOW_DEFAULT
    # Hostile and broken peers (spec section 15, docs/limits.md).
    max_message_bytes: int = GRPC_DEFAULT_MESSAGE_BYTES  # R-PEER-1
    handshake_timeout_seconds: float = 10.0  # R-PEER-3
    idle_connection_timeout_seconds: float = 300.0  # R-PEER-3
    max_connections: int = 1000  # R-PEER-3
    # R-PEER-4; None: half of max_concurrent_rpcs (at least 1), see `streams_per_peer`.
    max_streams_per_peer: int | None = None
    ublox_control: UbloxServerConfig = field(default_factory=UbloxServerConfig)
    config_file: Path | None = None

    @classmethod
    def defaults(cls) -> ServerConfig:
        """Every key at its default; allowed_data_roots = (cwd, the simulation's data_dir)."""
        simulate = SimulateConfig()
        return cls(simulate_daq_cfg=simulate, allowed_data_roots=(Path.cwd(), simulate.data_dir))

    def replace(self, **changes: Any) -> ServerConfig:
        """A copy with some attributes changed (dataclasses.replace, not validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def streams_per_peer(self) -> int:
        """R-PEER-4: StreamImages streams one peer address may hold."""
        if self.max_streams_per_peer is not None:
            return self.max_streams_per_peer
        return max(1, self.max_concurrent_rpcs // 2)

    @property
    def uds_path(self) -> str | None:
        """The Unix socket path of `unix_domain_socket`, or None when it is empty."""
        target = self.unix_domain_socket
        if not target:
            return None
        return target[len("unix://") :] if target.startswith("unix://") else target

    def default_hp_io_config_path(self) -> Path:
        """default_hp_io_config_file, relative to the config file, else the bundled configs."""
        path = Path(self.default_hp_io_config_file).expanduser()
        if path.is_absolute():
            return path
        base = self.config_file.parent if self.config_file else BUNDLED_CONFIG_DIR
        candidate = base / path
        return candidate if candidate.exists() else BUNDLED_CONFIG_DIR / path


@dataclass(frozen=True)
class HpIoConfig:
    """hp_io_config.json: what InitHpIo configures (R-CFG-2)."""

    data_dir: str = ""
    update_interval_seconds: float = 0.1
    force: bool = False
    simulate_daq: bool = False
    module_ids: tuple[int, ...] = ()
    comments: str = ""


# --- validation helpers -------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else "an object"
    )


class _Reader:
    """Reads typed values out of one JSON object, naming key and file in every error."""

    def __init__(self, data: Any, file: Path | None, prefix: str = "") -> None:
        self.file = file
        self.prefix = prefix
        if not isinstance(data, Mapping):
            shown = "null" if data is None else _type_name(data)
            raise ConfigError(prefix or "<top level>", f"must be a JSON object, not {shown}", file)
        self.data = dict(data)
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.key(name), reason, self.file)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.data[name]

    def boolean(self, name: str, default: bool) -> bool:
        if name not in self.data:
            return default
        value = self.raw(name)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, not {value!r}")
        return value

    def integer(
        self, name: str, default: int, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        if name not in self.data:
            return default
        value = self.raw(name)
        # bool is an int in Python, not in JSON.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, not {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be >= {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be <= {maximum}, not {value}")
        return value

    def optional_integer(self, name: str, minimum: int, maximum: int) -> int | None:
        """An integer in [minimum, maximum], or None when the key is absent or null."""
        if name not in self.data or self.raw(name) is None:
            return None
        return self.integer(name, minimum, minimum, maximum)

    def number(
        self, name: str, default: float, minimum: float | None = None, exclusive: bool = False
    ) -> float:
        """A float; JSON integers are accepted, booleans, NaN and infinities are not."""
        if name not in self.data:
            return default
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"must be a number, not {value!r}")
        if not math.isfinite(value):
            raise self.error(name, f"must be a finite number, not {value!r}")
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            raise self.error(name, f"must be {'>' if exclusive else '>='} {minimum}, not {value}")
        return float(value)

    def string(self, name: str, default: str, nonempty: bool = False) -> str:
        if name not in self.data:
            return default
        value = self.raw(name)
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, not {value!r}")
        if nonempty and not value:
            raise self.error(name, "must not be empty")
        return value

    def path(self, name: str, default: Path | None, cwd_first: bool = False) -> Path | None:
        """A path; relative paths are relative to the config file's directory.

        With `cwd_first` (the original's later layout, R-CFG-5), a relative path is resolved
        against the working directory, as the original does, and against the config file's
        directory only when it does not exist there.
        """
        if name not in self.data:
            return default
        text = self.string(name, "")
        if not text:
            return default
        if cwd_first:
            in_cwd = Path.cwd() / Path(text).expanduser()
            if in_cwd.exists():
                return in_cwd
        return _resolve(text, self.file)

    def int_list(self, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
        if name not in self.data:
            return default
        value = self.raw(name)
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_UINT32
            for v in value
        ):
            raise self.error(name, f"must be a list of module ids (0 .. 2**32-1), not {value!r}")
        if len(set(value)) != len(value):
            raise self.error(name, f"names a module twice: {value!r}")
        return tuple(value)

    def choice_list(
        self, name: str, default: tuple[str, ...], choices: tuple[str, ...]
    ) -> tuple[str, ...]:
        if name not in self.data:
            return default
        value = self.raw(name)
        if not isinstance(value, list) or any(
            not isinstance(v, str) or v not in choices for v in value
        ):
            raise self.error(name, f"must be a list of {', '.join(choices)}; not {value!r}")
        return tuple(dict.fromkeys(value))

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def child(self, name: str) -> _Reader | None:
        if name not in self.data:
            return None
        return _Reader(self.raw(name), self.file, self.key(name))

    def ignore(self, name: str, why: str) -> None:
        """Accept a key we do not implement, with a warning naming it (R-CFG-4)."""
        if name in self.data:
            self.used.add(name)
            log.warning("%s: %r is accepted but not used: %s", self._where(), self.key(name), why)

    def reject_unknown(self, tolerated: tuple[str, ...] = ()) -> None:
        """ConfigError for the first key not read; `tolerated` keys only warn, `comments` pass."""
        for name in self.data:
            if name in self.used or name == "comments":
                continue
            if name in tolerated:
                self.ignore(name, "not implemented by this server")
                continue
            raise self.error(name, "unknown key")

    def _where(self) -> str:
        return str(self.file) if self.file else "config"


def _resolve(text: str, file: Path | None) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (file.parent if file is not None else Path.cwd()) / path
    return path


def _as_path(file: str | os.PathLike[str] | None) -> Path | None:
    return None if file is None else Path(file)


def read_json(path: str | os.PathLike[str]) -> tuple[Any, Path]:
    file = Path(path).expanduser().resolve()
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError("<file>", "file not found", file) from None
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read: {exc.strerror}", file) from None
    try:
        return json.loads(text), file
    except json.JSONDecodeError as exc:
        raise ConfigError("<file>", f"not valid JSON: {exc}", file) from None


# --- simulate_daq_cfg -----------------------------------------------------------------------


def _frame_limit(reader: _Reader, default: int) -> int:
    # The later layout writes -1 for "no limit"; we write 0 (R-SIM-5: loop forever).
    return max(0, reader.integer("frame_limit", default, -1))


def _source_dir(reader: _Reader, name: str, path: Path, what: str) -> Path | None:
    if path.exists():
        return path
    log.warning(
        "%s: %s %s of %r does not exist; the simulation replays the bundled data",
        reader._where(),
        what,
        path,
        reader.key(name),
    )
    return None


def _panoseti_grpc_files(files: _Reader, values: dict[str, Any]) -> None:
    """The panoseti_grpc README's `files` object: data_dir, real_run_dir and name templates."""
    values["data_dir"] = files.path("data_dir", values["data_dir"])
    real_run_dir = files.string("real_run_dir", "")
    if real_run_dir:
        run = Path(real_run_dir).expanduser()
        if not run.is_absolute():
            # The original kept the real run next to the simulated modules.
            run = values["data_dir"] / f"module_{values['real_module_id']}" / run
        values["source_dir"] = _source_dir(files, "real_run_dir", run, "directory")
    _templates(files)
    files.reject_unknown()


def _templates(reader: _Reader) -> None:
    for name, standard in _STANDARD_TEMPLATES.items():
        if reader.string(name, standard) != standard:
            reader.ignore(name, f"the simulation always uses {standard!r}")
    for name in ("movie_pff_template", "ph_pff_template"):
        reader.string(name, "")
        # R-NAME-2
        reader.ignore(name, "simulated files are named with the standard grammar")


def _later_layout(reader: _Reader, values: dict[str, Any], mode_name: str) -> None:
    """The original's later layout: source_data, filesystem_cfg, strategies per mode."""
    source = reader.child("source_data")
    if source is not None:
        values["real_module_id"] = source.integer(
            "real_module_id", values["real_module_id"], 0, _MAX_UINT32
        )
        for name in ("movie_pff_path", "ph_pff_path"):
            path = source.path(name, None, cwd_first=True)
            if path is not None and values["source_dir"] is None:
                values["source_dir"] = _source_dir(source, name, path.parent, "directory of")
        source.reject_unknown()
    filesystem = reader.child("filesystem_cfg")
    if filesystem is not None:
        values["data_dir"] = filesystem.path("sim_data_dir", values["data_dir"], cwd_first=True)
        values["data_dir"] = filesystem.path("data_dir", values["data_dir"], cwd_first=True)
        _templates(filesystem)
        filesystem.reject_unknown()
    strategies = reader.child("strategies")
    if strategies is None:
        return
    mode = values["simulation_mode"]
    # The strategy of the configured mode: its own name first, then its aliases.
    wanted = [mode_name, mode, *(a for a, m in _MODE_ALIASES.items() if m == mode)]
    chosen = next((name for name in wanted if name in strategies.data), None)
    settings: dict[str, dict[str, Any]] = {}
    for name in (*SIMULATION_MODES, *_MODE_ALIASES):
        strategy = strategies.child(name)
        if strategy is None:
            continue
        settings[name] = {
            "frames_per_pff": strategy.integer("frames_per_pff", values["frames_per_pff"], 1),
            "frame_limit": _frame_limit(strategy, values["frame_limit"]),
            "frame_rate_hz": strategy.number("frame_rate_hz", values["frame_rate_hz"], 0.0),
        }
        strategy.reject_unknown(tolerated=("data_products", "sim_module_ids"))
    strategies.reject_unknown()
    if chosen is not None:
        values.update(settings[chosen])


def _simulate_config(reader: _Reader | None) -> SimulateConfig:
    defaults = SimulateConfig()
    if reader is None:
        return defaults
    mode_name = reader.choice(
        "simulation_mode", defaults.simulation_mode, (*SIMULATION_MODES, *_MODE_ALIASES)
    )
    values: dict[str, Any] = {
        "simulation_mode": _MODE_ALIASES.get(mode_name, mode_name),
        "movie_type": reader.choice("movie_type", defaults.movie_type, MOVIE_TYPES),
        "ph_type": reader.choice("ph_type", defaults.ph_type, PH_TYPES),
        "frames_per_pff": reader.integer("frames_per_pff", defaults.frames_per_pff, 1),
        "sim_module_ids": reader.int_list("sim_module_ids", defaults.sim_module_ids),
        "real_module_id": reader.integer("real_module_id", defaults.real_module_id, 0, _MAX_UINT32),
        "data_dir": reader.path("data_dir", defaults.data_dir),
        "source_dir": reader.path("source_dir", None),
        # rpc mode uploads as fast as backpressure allows unless a rate is given (R-SIM-3).
        "frame_rate_hz": reader.number(
            "frame_rate_hz",
            0.0 if _MODE_ALIASES.get(mode_name, mode_name) == "rpc" else defaults.frame_rate_hz,
            0.0,
        ),
        "frame_limit": _frame_limit(reader, defaults.frame_limit),
    }
    if values["source_dir"] is not None and not values["source_dir"].is_dir():
        raise reader.error("source_dir", f"{values['source_dir']} is not a directory")
    files = reader.child("files")
    if files is not None:
        _panoseti_grpc_files(files, values)
    _later_layout(reader, values, mode_name)
    reader.reject_unknown()
    if not values["sim_module_ids"]:
        raise reader.error("sim_module_ids", "must name at least one module")
    if (
        values["simulation_mode"] == "filesystem"
        and values["frame_rate_hz"] == 0
        and values["frame_limit"] == 0
    ):
        raise reader.error(
            "frame_rate_hz",
            "0 (as fast as possible) needs a frame_limit in filesystem mode: the disk would fill",
        )
    return SimulateConfig(**values)


def _uds_config(methods: _Reader | None) -> UdsIngestConfig:
    defaults = UdsIngestConfig()
    if methods is None:
        return defaults
    config = defaults
    for name in ("filesystem_poll", "filesystem_pipe"):
        method = methods.child(name)
        if method is not None:
            # The scanner is the one filesystem method here; its flag is validated, not used.
            method.boolean("enabled", True)
            method.reject_unknown()
    rpc = methods.child("rpc")
    if rpc is not None:
        # The original writes this section for its rpc simulation (R-CFG-5). UploadImages is
        # always served here: the flag is validated, and `false` is named in a warning.
        if not rpc.boolean("enabled", True):
            log.warning(
                "%s: %r is false, but UploadImages is always served",
                rpc._where(),
                rpc.key("enabled"),
            )
        rpc.reject_unknown()
    uds = methods.child("uds")
    if uds is not None:
        config = UdsIngestConfig(
            # The original enables the ingest when its section exists.
            enabled=uds.boolean("enabled", True),
            data_products=uds.choice_list("data_products", defaults.data_products, tuple(PRODUCTS)),
            socket_path_template=uds.string(
                "socket_path_template", defaults.socket_path_template, nonempty=True
            ),
            read_timeout_s=uds.number("read_timeout", defaults.read_timeout_s, 0.0, exclusive=True),
        )
        if "{dp_name}" not in config.socket_path_template:
            raise uds.error("socket_path_template", "must contain {dp_name}")
        uds.reject_unknown()
    methods.reject_unknown()
    return config


# --- loaders --------------------------------------------------------------------------------


def server_config_from_dict(
    data: Mapping[str, Any], file: str | os.PathLike[str] | None = None
) -> ServerConfig:
    """A validated ServerConfig from the JSON object of daq_data_server_config.json (R-CFG-1).

    `file` names the file in errors, and relative paths resolve against its directory.
    """
    path = _as_path(file)
    r = _Reader(data, path)
    d = ServerConfig.defaults()
    simulate = _simulate_config(r.child("simulate_daq_cfg"))
    roots: tuple[Path, ...] = (Path.cwd(), simulate.data_dir)
    if r.has("allowed_data_roots"):
        value = r.raw("allowed_data_roots")
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise r.error("allowed_data_roots", f"must be a list of directories, not {value!r}")
        roots = tuple(_resolve(v, path).resolve() for v in value)
    server_name = r.string("server_name", d.server_name) or d.server_name
    config = ServerConfig(
        init_from_default=r.boolean("init_from_default", d.init_from_default),
        default_hp_io_config_file=r.string(
            "default_hp_io_config_file", d.default_hp_io_config_file
        ),
        init_hp_io=r.path("init_hp_io", None),
        unix_domain_socket=r.string("unix_domain_socket", d.unix_domain_socket),
        max_concurrent_rpcs=r.integer("max_concurrent_rpcs", d.max_concurrent_rpcs, 1),
        max_read_queue_size=r.integer("max_read_queue_size", d.max_read_queue_size, 1),
        min_hp_io_update_interval_seconds=r.number(
            "min_hp_io_update_interval_seconds", d.min_hp_io_update_interval_seconds, 0.0, True
        ),
        max_client_update_interval_seconds=r.number(
            "max_client_update_interval_seconds", d.max_client_update_interval_seconds, 0.0, True
        ),
        max_reader_enqueue_timeouts=r.integer(
            "max_reader_enqueue_timeouts", d.max_reader_enqueue_timeouts, 1
        ),
        max_reader_dequeue_timeouts=r.integer(
            "max_reader_dequeue_timeouts", d.max_reader_dequeue_timeouts, 1
        ),
        reader_timeout=r.number("reader_timeout", d.reader_timeout, 0.0, True),
        shutdown_grace_period=r.number("shutdown_grace_period", d.shutdown_grace_period, 0.0),
        hp_io_stop_timeout=r.number("hp_io_stop_timeout", d.hp_io_stop_timeout, 0.0, True),
        valid_data_products=r.choice_list(
            "valid_data_products", d.valid_data_products, tuple(PRODUCTS)
        ),
        simulate_daq_cfg=simulate,
        allowed_data_roots=roots,
        daq_active_check=r.choice_list("daq_active_check", d.daq_active_check, DAQ_ACTIVE_CHECKS),
        scanner_watch=r.boolean("scanner_watch", d.scanner_watch),
        server_name=server_name,
        host=r.string("host", d.host, nonempty=True),
        port=r.integer("port", d.port, 0, 65535),
        metrics_port=r.optional_integer("metrics_port", 0, 65535),
        uds_ingest=_uds_config(r.child("acquisition_methods")),
        http2_window_bytes=r.integer(
            "http2_window_bytes", d.http2_window_bytes, HTTP2_WINDOW_MIN, HTTP2_WINDOW_MAX
        ),
        max_message_bytes=r.integer(
            "max_message_bytes", d.max_message_bytes, MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES
        ),
        handshake_timeout_seconds=r.number(
            "handshake_timeout_seconds", d.handshake_timeout_seconds, 0.0, exclusive=True
        ),
        idle_connection_timeout_seconds=r.number(
            "idle_connection_timeout_seconds", d.idle_connection_timeout_seconds, 0.0, True
        ),
        max_connections=r.integer("max_connections", d.max_connections, 1),
        max_streams_per_peer=r.optional_integer("max_streams_per_peer", 1, _MAX_UINT32),
        ublox_control=_ublox_config(r.child("ublox_control"), beside_daqdata=True),
        config_file=path,
    )
    if not config.valid_data_products:
        raise r.error("valid_data_products", "must name at least one data product")
    r.reject_unknown(tolerated=_LATER_TOP_LEVEL)
    return config


def _ublox_config(reader: _Reader | None, beside_daqdata: bool = False) -> UbloxServerConfig:
    """The `ublox_control` section, or the original's ublox_control_server_config.json."""
    d = UbloxServerConfig()
    if reader is None:
        return d
    if beside_daqdata:
        for name in ("host", "port"):
            why = "UbloxControl is served on the DaqData listeners (the top-level host and port)"
            reader.ignore(name, why)
    allowed = d.allowed_devices
    if reader.has("allowed_devices"):
        value = reader.raw("allowed_devices")
        if not isinstance(value, list) or not all(
            isinstance(v, str) and v.startswith("/") for v in value
        ):
            raise reader.error(
                "allowed_devices", f"must be a list of absolute path patterns, not {value!r}"
            )
        allowed = tuple(value)
    for early in ("InitF9t", "CaptureUblox"):
        reader.ignore(early, "a section of the original's early layout")
    config = UbloxServerConfig(
        allowed_devices=allowed,
        max_read_queue_size=reader.integer("max_read_queue_size", d.max_read_queue_size, 1),
        shutdown_grace_period=reader.number("shutdown_grace_period", d.shutdown_grace_period, 0.0),
        max_workers=reader.integer("max_workers", d.max_workers, 1),
        host=reader.string("host", d.host, nonempty=True),
        port=reader.integer("port", d.port, 0, 65535),
        command_timeout_s=reader.number("command_timeout_s", d.command_timeout_s, 0.0, True),
        signal_settle_s=reader.number("signal_settle_s", d.signal_settle_s, 0.0),
        dataflow_timeout_s=reader.number("dataflow_timeout_s", d.dataflow_timeout_s, 0.0),
        silence_warning_s=reader.number("silence_warning_s", d.silence_warning_s, 0.0, True),
        max_capture_clients=reader.integer("max_capture_clients", d.max_capture_clients, 1),
        poll_timeout_s=reader.number("poll_timeout_s", d.poll_timeout_s, 0.0, True),
        max_poll_messages=reader.integer("max_poll_messages", d.max_poll_messages, 1),
    )
    reader.reject_unknown()
    return config


def ublox_server_config_from_dict(
    data: Mapping[str, Any], file: str | os.PathLike[str] | None = None
) -> UbloxServerConfig:
    """A validated UbloxServerConfig from the original's ublox_control_server_config.json, or
    from the `ublox_control` section's object (R-UBX-CFG-6)."""
    return _ublox_config(_Reader(data, _as_path(file)))


def load_ublox_server_config(
    path: str | os.PathLike[str], *, beside_daqdata: bool = True
) -> UbloxServerConfig:
    """Load the original's ublox_control_server_config.json (R-UBX-CFG-6). Beside DaqData its
    host and port are named as unused (the service is on the DaqData listeners); a
    UbloxControl-only server listens there."""
    data, file = read_json(path)
    return _ublox_config(_Reader(data, file), beside_daqdata=beside_daqdata)


def load_server_config(path: str | os.PathLike[str] | None = None) -> ServerConfig:
    """Load daq_data_server_config.json; None loads the bundled one."""
    data, file = read_json(path or BUNDLED_CONFIG_DIR / "daq_data_server_config.json")
    return server_config_from_dict(data, file)


def hp_io_config_from_dict(
    data: Mapping[str, Any], file: str | os.PathLike[str] | None = None
) -> HpIoConfig:
    """A validated HpIoConfig from the JSON object of hp_io_config.json (R-CFG-2)."""
    r = _Reader(data, _as_path(file))
    d = HpIoConfig()
    config = HpIoConfig(
        data_dir=r.string("data_dir", d.data_dir),
        update_interval_seconds=r.number(
            "update_interval_seconds", d.update_interval_seconds, 0.0, exclusive=True
        ),
        force=r.boolean("force", d.force),
        simulate_daq=r.boolean("simulate_daq", d.simulate_daq),
        module_ids=r.int_list("module_ids", d.module_ids),
        comments=r.string("comments", d.comments),
    )
    r.reject_unknown()
    return config


def load_hp_io_config(path: str | os.PathLike[str]) -> HpIoConfig:
    """Load hp_io_config.json."""
    data, file = read_json(path)
    return hp_io_config_from_dict(data, file)


# What a client must say in an hp_io config: a missing interval used to fall silently to 1 s.
CLIENT_REQUIRED_HP_IO_KEYS = ("update_interval_seconds",)


def client_hp_io_config(source: Mapping[str, Any] | str | os.PathLike[str]) -> HpIoConfig:
    """An hp_io config a client is about to send, validated as the server validates its own
    (R-CFG-2): a dict or the path of an hp_io_config.json. ConfigError names the key and the
    file (or "hp_io_cfg dict") for an unknown key, a wrong type or a missing required key."""
    if isinstance(source, Mapping):
        data: Any = source
        file: Path = Path("hp_io_cfg dict")
    else:
        data, file = read_json(source)
    if isinstance(data, Mapping):
        for key in CLIENT_REQUIRED_HP_IO_KEYS:
            if key not in data:
                raise ConfigError(key, "missing required key", file)
    return hp_io_config_from_dict(data, file)
