"""What InitHpIo's checks need from the file system (R-INIT-2 .. R-INIT-4, R-INIT-11), and the
whole check for `serve --init`.

`inspect_data_dir` looks at a data_dir in the rules' order (a readable directory, where it
really is, whether a DAQ writes there) and returns `DataDirFacts`; the decision is
`server.admission.admit_hp_io`'s. `check_hp_io(hp_io, config)` runs both, for the RPC's
request check and for `serve --init` (R-OPS-1): the configuration to apply (data_dir resolved)
or `HpIoRefused` with the gRPC status and a message that names what was checked and where.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path

from grpclib.const import Status

from .. import pff
from ..config import HpIoConfig, ServerConfig
from ..errors import PanosetiDaqError
from .admission import (
    DataDirFacts,
    HpIoGate,
    Refusal,
    admit_hp_io,
    interval_refusal,
    within_roots,
)
from .scanner import RECENT_WRITE_S, daq_is_active

__all__ = ["HpIoRefused", "check_hp_io", "hp_io_gate", "inactive_daq_details", "inspect_data_dir"]

MARKER_SUFFIX = ".daq-active"


class HpIoRefused(PanosetiDaqError):
    """An hp_io configuration InitHpIo refuses: the gRPC status and the reason."""

    def __init__(self, status: Status, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def hp_io_gate(config: ServerConfig, hp_io: HpIoConfig) -> HpIoGate:
    """The limits of `config` and, unless simulating, the facts about hp_io's data_dir (this
    touches the file system: run it off the event loop). A request refused for its interval
    (R-INIT-1, R-INIT-10) is answered without a look at the file system."""
    gate = HpIoGate(
        min_interval_s=config.min_hp_io_update_interval_seconds,
        max_interval_s=config.max_client_update_interval_seconds,
        allowed_roots=tuple(root.resolve() for root in config.allowed_data_roots),
        daq_checks=config.daq_active_check,
    )
    if (
        not hp_io.data_dir
        or hp_io.simulate_daq
        or interval_refusal(hp_io.update_interval_seconds, gate) is not None
    ):
        return gate
    facts = inspect_data_dir(hp_io.data_dir, gate.allowed_roots, config.daq_active_check)
    return dataclasses.replace(gate, data_dir=facts)


def check_hp_io(hp_io: HpIoConfig, config: ServerConfig) -> HpIoConfig:
    """R-INIT-1 .. R-INIT-4, R-INIT-10, R-INIT-11: the request's own checks (those that do not
    depend on the server's state). Touches the file system; whatever it refuses is an
    `HpIoRefused`, never an OSError (R-INIT-11)."""
    decision = admit_hp_io(hp_io, hp_io_gate(config, hp_io))
    if isinstance(decision, Refusal):
        raise HpIoRefused(decision.status, decision.message)
    assert isinstance(decision, HpIoConfig)  # holds_writer_lock and no streams: never a wait
    return decision


def inspect_data_dir(
    data_dir: str, roots: tuple[Path, ...], checks: tuple[str, ...]
) -> DataDirFacts:
    """R-INIT-2 .. R-INIT-4: what the file system says of `data_dir`, up to the first problem.

    The DAQ checks look only inside the allowed `roots` (resolved): a directory outside them
    is refused without a look at what it holds.
    """
    try:
        path = Path(data_dir).expanduser()  # RuntimeError for "~user" with no such user
        if not stat.S_ISDIR(path.stat().st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with os.scandir(path):  # PermissionError for a directory this server cannot read
            pass
        resolved = path.resolve()
        if not within_roots(resolved, roots):
            return DataDirFacts(resolved=resolved)
        if daq_is_active(path, checks):
            return DataDirFacts(resolved=resolved, daq_active=True)
        return DataDirFacts(
            resolved=resolved,
            daq_active=False,
            inactive_details=inactive_daq_details(resolved, checks),
        )
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a loop of links, ~user
        return DataDirFacts(error=exc)


def inactive_daq_details(data_dir: Path, checks: tuple[str, ...]) -> str:
    """Where each check looked, for the answer to an inactive data_dir (R-INIT-4), and any
    marker file found outside a run directory, with where it belongs."""
    resolved = data_dir.resolve()
    runs = f"{resolved}/module_<id>/<run>/"
    looked = []
    if "marker" in checks:
        looked.append(f"no module_<id>{MARKER_SUFFIX} marker in {runs}")
    if "recent_write" in checks:
        looked.append(f"no data file in {runs} written in the last {RECENT_WRITE_S:g} s")
    if "process" in checks:
        looked.append("no hashpipe process running")
    text = "; ".join(looked)
    misplaced = _misplaced_markers(resolved)
    if misplaced and "marker" in checks:
        marker = misplaced[0]
        run = _first_run_dir(resolved)
        where = f"{run}/" if run is not None else f"{runs}"
        text += f"; {marker} is not in a run directory: a marker belongs in one, e.g. {where}"
    return text


def _misplaced_markers(data_dir: Path) -> list[Path]:
    """Marker files in data_dir itself or in a module directory (not in a run directory)."""
    found = sorted(data_dir.glob(f"*{MARKER_SUFFIX}"))
    for module_dir in sorted(data_dir.glob("module_*")):
        if module_dir.is_dir() and pff.module_dir_id(module_dir.name) is not None:
            found += sorted(module_dir.glob(f"*{MARKER_SUFFIX}"))
    return [path for path in found if not path.is_dir()]


def _first_run_dir(data_dir: Path) -> Path | None:
    for module_dir in sorted(data_dir.glob("module_*")):
        if not module_dir.is_dir() or pff.module_dir_id(module_dir.name) is None:
            continue
        with os.scandir(module_dir) as entries:
            runs = sorted(entry.path for entry in entries if entry.is_dir())
        if runs:
            return Path(runs[0])
    return None
