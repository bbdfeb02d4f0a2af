"""InitHpIo's checks of a configuration (R-INIT-1 .. R-INIT-4, R-INIT-10, R-INIT-11), for the
RPC and for `serve --init`.

`check_hp_io(hp_io, config)` returns the configuration to apply (data_dir resolved) or raises
`HpIoRefused` with the gRPC status the RPC answers and a message that names what was checked
and where. `serve --init` (R-OPS-1) runs the same checks before it listens.
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
from .core import interval_ok
from .scanner import RECENT_WRITE_S, daq_is_active

__all__ = ["HpIoRefused", "check_hp_io", "inactive_daq_details"]

MARKER_SUFFIX = ".daq-active"


class HpIoRefused(PanosetiDaqError):
    """An hp_io configuration InitHpIo refuses: the gRPC status and the reason."""

    def __init__(self, status: Status, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def _within(path: Path, roots: tuple[Path, ...]) -> bool:
    resolved = path.resolve()
    return any(resolved == root.resolve() or root.resolve() in resolved.parents for root in roots)


def check_hp_io(hp_io: HpIoConfig, config: ServerConfig) -> HpIoConfig:
    """R-INIT-1 .. R-INIT-4, R-INIT-10, R-INIT-11, in order: the interval, then (unless
    simulating) that data_dir exists, is a readable directory, lies under allowed_data_roots and
    has an active DAQ. Touches the file system; whatever it refuses is an `HpIoRefused`, never
    an OSError (R-INIT-11)."""
    # R-INIT-1, R-INIT-10: a finite interval within [minimum, max client interval].
    minimum_s = config.min_hp_io_update_interval_seconds
    maximum_s = config.max_client_update_interval_seconds
    interval_s = hp_io.update_interval_seconds
    if not interval_ok(interval_s, minimum_s):
        raise HpIoRefused(
            Status.INVALID_ARGUMENT,
            f"update_interval_seconds must be >= {minimum_s:g}, not {interval_s}",
        )
    if not interval_s <= maximum_s:
        raise HpIoRefused(
            Status.INVALID_ARGUMENT,
            f"update_interval_seconds must be finite, between {minimum_s:g} and "
            f"{maximum_s:g} (max_client_update_interval_seconds), not {interval_s}",
        )
    if hp_io.simulate_daq:
        return hp_io  # R-INIT-8: data_dir is ignored
    if not hp_io.data_dir:
        raise HpIoRefused(Status.INVALID_ARGUMENT, "data_dir '' does not exist")
    try:
        return _check_data_dir(hp_io, config)
    except OSError as exc:  # R-INIT-11: never UNKNOWN
        raise _data_dir_refused(hp_io.data_dir, exc) from None
    except (ValueError, RuntimeError) as exc:  # a NUL byte; a loop of links (Python < 3.13)
        raise HpIoRefused(
            Status.INVALID_ARGUMENT, f"data_dir {hp_io.data_dir!r} cannot be used: {exc}"
        ) from None


def _check_data_dir(hp_io: HpIoConfig, config: ServerConfig) -> HpIoConfig:
    """R-INIT-2 .. R-INIT-4, R-INIT-11; OSError for what the file system refuses."""
    data_dir = Path(hp_io.data_dir).expanduser()
    if not stat.S_ISDIR(data_dir.stat().st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    with os.scandir(data_dir):  # PermissionError for a directory this server cannot read
        pass
    if not _within(data_dir, config.allowed_data_roots):
        roots = ", ".join(str(r) for r in config.allowed_data_roots)
        raise HpIoRefused(
            Status.PERMISSION_DENIED,
            f"data_dir {hp_io.data_dir!r} is outside the allowed data roots ({roots})",
        )
    if not daq_is_active(data_dir, config.daq_active_check):
        raise HpIoRefused(
            Status.FAILED_PRECONDITION,
            f"no active DAQ under {hp_io.data_dir!r} (checked: "
            f"{', '.join(config.daq_active_check)}): "
            f"{inactive_daq_details(data_dir, config.daq_active_check)}",
        )
    return dataclasses.replace(hp_io, data_dir=str(data_dir.resolve()))


def _data_dir_refused(data_dir: str, exc: OSError) -> HpIoRefused:
    """R-INIT-2, R-INIT-11: what an OSError about `data_dir` tells the caller."""
    if isinstance(exc, FileNotFoundError):
        return HpIoRefused(Status.INVALID_ARGUMENT, f"data_dir {data_dir!r} does not exist")
    if isinstance(exc, NotADirectoryError):
        return HpIoRefused(Status.INVALID_ARGUMENT, f"data_dir {data_dir!r} is not a directory")
    reason = exc.strerror or str(exc)
    status = (
        Status.PERMISSION_DENIED if isinstance(exc, PermissionError) else Status.INVALID_ARGUMENT
    )
    return HpIoRefused(status, f"data_dir {data_dir!r} cannot be used: {reason}")


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
        if pff.module_dir_id(module_dir.name) is None:
            continue
        with os.scandir(module_dir) as entries:
            runs = sorted(entry.path for entry in entries if entry.is_dir())
        if runs:
            return Path(runs[0])
    return None
