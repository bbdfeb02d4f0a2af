"""Who gets in: the admission rules of StreamImages and InitHpIo, as pure functions.

`admit_stream` (R-STREAM-1 .. R-STREAM-5, R-STATE-3, R-PEER-4, R-SRC-1) and `admit_hp_io`
(R-INIT-1 .. R-INIT-5, R-INIT-10, R-INIT-11, R-STATE-2) each take a request and a snapshot of
the server's state and return a decision: what is admitted, a `Refusal` (the gRPC status and a
message naming the problem), or `WAIT_FOR_WRITER` (ask again once the writer is done). They read
no clock, file or socket: the handlers in service.py gather the state, act on the decision and
nothing else, and `serve --init` asks the same question before the server listens. The file
system's answers about a data_dir arrive as `DataDirFacts`, gathered by
`server.hp_io_checks.inspect_data_dir`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from grpclib.const import Status

from ..config import HpIoConfig
from ..messages import StreamImagesRequest
from .hub import Subscription

__all__ = [
    "WAIT_FOR_WRITER",
    "DataDirFacts",
    "HpIoGate",
    "Refusal",
    "StreamGate",
    "WaitForWriter",
    "admit_hp_io",
    "admit_stream",
    "hp_io_interval_ok",
    "interval_refusal",
    "stream_interval_ok",
    "within_roots",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request turned away: the status its call ends with, and why."""

    status: Status
    message: str


class WaitForWriter(enum.Enum):
    """An InitHpIo is in progress: wait for it (within the caller's deadline), then ask again
    (R-STATE-2, R-STATE-3)."""

    WAIT = "wait for the writer"


WAIT_FOR_WRITER = WaitForWriter.WAIT


def stream_interval_ok(interval_s: float, maximum_s: float) -> bool:
    """R-STREAM-5: 0 <= interval <= maximum, not NaN."""
    return not math.isnan(interval_s) and 0.0 <= interval_s <= maximum_s


def hp_io_interval_ok(interval_s: float, minimum_s: float) -> bool:
    """R-INIT-1: the hp_io interval is a number >= the configured minimum."""
    return not math.isnan(interval_s) and interval_s >= minimum_s


def within_roots(resolved: Path, roots: Collection[Path]) -> bool:
    """R-INIT-3: whether a resolved path is one of `roots` (resolved) or lies under one."""
    return any(resolved == root or root in resolved.parents for root in roots)


# --- StreamImages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamGate:
    """What StreamImages' admission looks at: the server's state when the call arrives."""

    writer_busy: bool  # an InitHpIo is checking or applying its request
    hp_io_valid: bool
    source_failure: str | None  # why the source failed, when it did (R-SRC-1)
    shutting_down: bool
    active_streams: int
    max_streams: int  # max_concurrent_rpcs
    peer_host: str
    peer_streams: int  # StreamImages streams open from peer_host
    streams_per_peer: int  # max_streams_per_peer
    max_interval_s: float  # max_client_update_interval_seconds


def admit_stream(
    request: StreamImagesRequest, gate: StreamGate
) -> Subscription | Refusal | WaitForWriter:
    """R-STREAM-1 .. R-STREAM-5 in the spec's order, with R-SRC-1 and R-PEER-4: the
    subscription to open, a refusal, or WAIT_FOR_WRITER.

    A request for nothing is refused before waiting for a writer; every other answer is given
    only once no writer is busy, so that it describes the configuration the caller will get.
    """
    movie, pulse_height = request.stream_movie_data, request.stream_pulse_height_data
    interval_s = request.update_interval_seconds
    if not (movie or pulse_height):  # R-STREAM-1
        return Refusal(
            Status.INVALID_ARGUMENT,
            "stream_movie_data and stream_pulse_height_data are both false: nothing to stream",
        )
    if gate.writer_busy:  # R-STATE-3: answer for the configuration the writer leaves
        return WAIT_FOR_WRITER
    if not gate.hp_io_valid:  # R-STREAM-2, R-SRC-1
        if gate.source_failure is not None:
            return Refusal(
                Status.FAILED_PRECONDITION,
                f"hp_io is not valid: {gate.source_failure}; call InitHpIo again",
            )
        return Refusal(Status.FAILED_PRECONDITION, "hp_io is not initialized: call InitHpIo first")
    if gate.shutting_down:  # R-STREAM-3
        return Refusal(Status.UNAVAILABLE, "server shutting down")
    if gate.active_streams >= gate.max_streams:  # R-STREAM-4
        return Refusal(
            Status.RESOURCE_EXHAUSTED,
            f"too many StreamImages clients: the limit is {gate.max_streams}",
        )
    if gate.peer_streams >= gate.streams_per_peer:  # R-PEER-4
        return Refusal(
            Status.RESOURCE_EXHAUSTED,
            f"too many StreamImages streams from {gate.peer_host}: the limit per peer is "
            f"{gate.streams_per_peer} (max_streams_per_peer)",
        )
    if not stream_interval_ok(interval_s, gate.max_interval_s):  # R-STREAM-5
        return Refusal(
            Status.INVALID_ARGUMENT,
            f"update_interval_seconds must be between 0 and {gate.max_interval_s:g}, "
            f"not {interval_s}",
        )
    return Subscription(
        movie=movie,
        pulse_height=pulse_height,
        module_ids=frozenset(request.module_ids),
        interval_s=interval_s,
    )


# --- InitHpIo ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataDirFacts:
    """What the file system said about a data_dir, looked at in the rules' order and no
    further than the first problem (see `server.hp_io_checks.inspect_data_dir`).

    `error`: the OSError (or ValueError / RuntimeError: a NUL byte, a loop of links) met
    while checking that it is a readable directory, if any; `resolved`: its real path;
    `daq_active`: whether a DAQ writes there, None when not looked at (outside the roots);
    `inactive_details`: where the checks looked, for the answer when none is active.
    """

    error: OSError | ValueError | RuntimeError | None = None
    resolved: Path | None = None
    daq_active: bool | None = None
    inactive_details: str = ""


@dataclass(frozen=True, slots=True)
class HpIoGate:
    """What InitHpIo's admission looks at: its limits and the server's state."""

    min_interval_s: float  # min_hp_io_update_interval_seconds
    max_interval_s: float  # max_client_update_interval_seconds
    allowed_roots: tuple[Path, ...]  # resolved
    daq_checks: tuple[str, ...]
    data_dir: DataDirFacts | None = None  # None: not inspected (simulating, or none given)
    shutting_down: bool = False
    holds_writer_lock: bool = True
    active_streams: int = 0


def admit_hp_io(hp_io: HpIoConfig, gate: HpIoGate) -> HpIoConfig | Refusal | WaitForWriter:
    """R-INIT-1 .. R-INIT-5, R-INIT-10, R-INIT-11 in order: the configuration to apply
    (data_dir resolved), a refusal, or WAIT_FOR_WRITER (take the writer lock, then ask again).

    The request's own checks come first, then the server's state: one writer at a time
    (R-STATE-2), and streams end only when the caller says `force` (R-INIT-5).
    """
    refusal = interval_refusal(hp_io.update_interval_seconds, gate)
    if refusal is not None:
        return refusal
    if not hp_io.simulate_daq:  # R-INIT-8: a simulation ignores data_dir
        checked = _data_dir_decision(hp_io.data_dir, gate)
        if isinstance(checked, Refusal):
            return checked
        hp_io = dataclasses.replace(hp_io, data_dir=str(checked))
    if gate.shutting_down:
        return Refusal(Status.UNAVAILABLE, "server shutting down")
    if not gate.holds_writer_lock:
        return WAIT_FOR_WRITER
    if not hp_io.force and gate.active_streams > 0:  # R-INIT-5
        return Refusal(
            Status.FAILED_PRECONDITION,
            f"{gate.active_streams} StreamImages client(s) active; "
            "use force=true to reconfigure anyway",
        )
    return hp_io


def interval_refusal(interval_s: float, gate: HpIoGate) -> Refusal | None:
    """R-INIT-1, R-INIT-10: a finite interval within [minimum, max client interval]."""
    if not hp_io_interval_ok(interval_s, gate.min_interval_s):
        return Refusal(
            Status.INVALID_ARGUMENT,
            f"update_interval_seconds must be >= {gate.min_interval_s:g}, not {interval_s}",
        )
    if not interval_s <= gate.max_interval_s:
        return Refusal(
            Status.INVALID_ARGUMENT,
            f"update_interval_seconds must be finite, between {gate.min_interval_s:g} and "
            f"{gate.max_interval_s:g} (max_client_update_interval_seconds), not {interval_s}",
        )
    return None


def _data_dir_decision(data_dir: str, gate: HpIoGate) -> Path | Refusal:
    """R-INIT-2 .. R-INIT-4, R-INIT-11: the resolved data_dir, or why it cannot be used."""
    facts = gate.data_dir
    if not data_dir or facts is None:
        return Refusal(Status.INVALID_ARGUMENT, f"data_dir {data_dir!r} does not exist")
    if facts.error is not None:
        return _data_dir_error(data_dir, facts.error)
    assert facts.resolved is not None
    if not within_roots(facts.resolved, gate.allowed_roots):  # R-INIT-3
        roots = ", ".join(str(r) for r in gate.allowed_roots)
        return Refusal(
            Status.PERMISSION_DENIED,
            f"data_dir {data_dir!r} is outside the allowed data roots ({roots})",
        )
    if not facts.daq_active:  # R-INIT-4
        return Refusal(
            Status.FAILED_PRECONDITION,
            f"no active DAQ under {data_dir!r} (checked: {', '.join(gate.daq_checks)}): "
            f"{facts.inactive_details}",
        )
    return facts.resolved


def _data_dir_error(data_dir: str, exc: OSError | ValueError | RuntimeError) -> Refusal:
    """R-INIT-2, R-INIT-11: what a failed look at `data_dir` tells the caller (never UNKNOWN)."""
    if isinstance(exc, FileNotFoundError):
        return Refusal(Status.INVALID_ARGUMENT, f"data_dir {data_dir!r} does not exist")
    if isinstance(exc, NotADirectoryError):
        return Refusal(Status.INVALID_ARGUMENT, f"data_dir {data_dir!r} is not a directory")
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        status = (
            Status.PERMISSION_DENIED
            if isinstance(exc, PermissionError)
            else Status.INVALID_ARGUMENT
        )
        return Refusal(status, f"data_dir {data_dir!r} cannot be used: {reason}")
    return Refusal(Status.INVALID_ARGUMENT, f"data_dir {data_dir!r} cannot be used: {exc}")
