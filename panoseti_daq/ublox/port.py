"""The serial port of the F9T and the one task that owns it (R-UBX-INIT-4, R-UBX-STATE-2).

Why a non-blocking descriptor under anyio, not a thread: the port carries a few hundred bytes a
second, and every call made on it is non-blocking by construction (open with O_NONBLOCK, termios
with TCSANOW, `flock` with LOCK_NB, reads and writes on an O_NONBLOCK descriptor after
`anyio.wait_readable`/`wait_writable`), so the event loop never waits on the device. The owner is
then an ordinary task: cancelling it is how the port stops, there is no thread to join or to
signal, frames reach subscribers without crossing threads, and the descriptor is closed by the
task that uses it, after it has stopped waiting on it. The owner runs on grpclib's loop (asyncio,
or trio-asyncio under trio: anyio's asyncio backend waits on the descriptor through the loop's
`add_reader`), beside the handlers that talk to it; see controller.py.

Opening does the checks of R-UBX-INIT-4 in two steps: `check_device` (exists, a character
device, allowed by `allowed_devices`) touches nothing but file metadata and runs with the
request's validation; `open_port` opens, checks isatty, locks, sets raw 8N1 and flushes.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import glob
import logging
import os
import stat
import termios
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from .errors import UbloxError
from .protocol import Received, UbxDecodeError, UbxFrameSplitter, decode, message_name

log = logging.getLogger(__name__)

__all__ = [
    "Expectation",
    "PortOwner",
    "Received",
    "SerialPort",
    "baud_constant",
    "check_device",
    "open_port",
]

READ_SIZE = 4096
# Bad checksums and skipped bytes are logged at most this often (R-UBX-STATE-2).
NOISE_LOG_INTERVAL_S = 60.0


def baud_constant(baud: int) -> int:
    """termios' speed constant for `baud`; UbloxError (INVALID_ARGUMENT) for a non-standard rate."""
    constant = getattr(termios, f"B{baud}", None)
    if not isinstance(constant, int):
        raise UbloxError("INVALID_ARGUMENT", f"baud: {baud} is not a serial speed this host knows")
    return constant


def _allowed(resolved: str, patterns: Sequence[str]) -> bool:
    """The resolved path matches a pattern, or is the target of an entry matching one (the
    /dev/serial/by-id/* symlinks). Only names are compared: nothing is opened."""
    if any(fnmatch.fnmatchcase(resolved, pattern) for pattern in patterns):
        return True
    return any(
        os.path.realpath(entry) == resolved for pattern in patterns for entry in glob.glob(pattern)
    )


def check_device(device: str, allowed_devices: Sequence[str]) -> str:
    """R-UBX-INIT-4, without opening: the absolute resolved path of `device`, or UbloxError."""
    if not os.path.exists(device):
        raise UbloxError("INVALID_ARGUMENT", f"Device path {device} does not exist")
    resolved = os.path.realpath(device)
    try:
        mode = os.stat(resolved).st_mode
    except OSError as exc:
        raise UbloxError("INVALID_ARGUMENT", f"Device path {device}: {exc.strerror}") from None
    if not stat.S_ISCHR(mode):
        shown = device if resolved == device else f"{device} ({resolved})"
        raise UbloxError("INVALID_ARGUMENT", f"Device path {shown} is not a character device")
    if not _allowed(resolved, allowed_devices):
        raise UbloxError(
            "PERMISSION_DENIED",
            f"device {resolved} is not allowed on this server "
            f"(allowed_devices: {', '.join(allowed_devices) or 'none'})",
        )
    return resolved


@dataclass(eq=False)
class SerialPort:
    """An open, locked, raw serial port (non-blocking descriptor)."""

    fd: int
    device: str  # as the client named it
    path: str  # resolved
    baud: int

    def close(self) -> None:
        """Close the descriptor (which releases the lock); safe to call twice."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0


def open_port(device: str, path: str, baud: int, allowed_devices: Sequence[str]) -> SerialPort:
    """Open `path` (checked by `check_device`) read/write, raw 8N1 at `baud`, exclusively
    locked, both directions flushed (R-UBX-INIT-4). Every call here is non-blocking."""
    speed = baud_constant(baud)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UbloxError("UNAVAILABLE", f"could not open {path}: {exc.strerror}") from None
    try:
        if not os.isatty(fd):
            raise UbloxError(
                "PERMISSION_DENIED",
                f"device {path} is not a terminal "
                f"(allowed_devices: {', '.join(allowed_devices) or 'none'})",
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            reason = (
                "in use by another process"
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
                else exc.strerror
            )
            raise UbloxError("UNAVAILABLE", f"could not open {path}: {reason}") from None
        try:
            _set_raw_8n1(fd, speed)
        except (OSError, termios.error) as exc:
            raise UbloxError("UNAVAILABLE", f"could not open {path}: {exc}") from None
    except BaseException:
        os.close(fd)
        raise
    return SerialPort(fd, device, path, baud)


def _set_raw_8n1(fd: int, speed: int) -> None:
    attrs: list[Any] = termios.tcgetattr(fd)
    attrs[0] = 0  # iflag: no input processing, no software flow control
    attrs[1] = 0  # oflag: no output processing
    attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL  # 8 data bits, no parity, 1 stop
    attrs[3] = 0  # lflag: not canonical, no echo, no signals
    attrs[4] = attrs[5] = speed
    cc = list(attrs[6])
    cc[termios.VMIN] = 0
    cc[termios.VTIME] = 0
    attrs[6] = cc
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    termios.tcflush(fd, termios.TCIOFLUSH)


_Write = tuple[bytes, anyio.Event]  # a frame to write, set once written


@dataclass(eq=False)
class Expectation:
    """The first frame satisfying `matches`, once the owner has read it (see PortOwner.expect)."""

    matches: Callable[[Received], bool]
    owner: PortOwner
    answer: Received | None = None
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    def offer(self, received: Received) -> bool:
        if self.answer is None and self.matches(received):
            self.answer = received
            self._arrived.set()
            return True
        return False

    def wake(self) -> None:
        self._arrived.set()

    async def wait(self, timeout_s: float) -> Received | None:
        """The answer, or None when none came within `timeout_s`; UbloxError (UNAVAILABLE)
        when the device is lost meanwhile."""
        with anyio.move_on_after(max(0.0, timeout_s)):
            await self._arrived.wait()
        self.owner.raise_if_lost()
        return self.answer


class PortOwner:
    """The one task that reads and writes the port (R-UBX-STATE-2).

    `run` reads continuously, splits the bytes into UBX frames, decodes
    each, stamps it with the host time, offers it to the pending expectations and hands it to
    `on_frame`. Writes are queued by `write` and made by the same task, in order. A read or
    write error ends `run` (the device is lost, `lost` says why); `run` closes the port when it
    returns, whatever the reason.
    """

    def __init__(self, port: SerialPort, on_frame: Callable[[Received], None]) -> None:
        self.port = port
        self._on_frame = on_frame
        self.splitter = UbxFrameSplitter()
        self.lost: str | None = None
        self._expectations: list[Expectation] = []
        self._send, self._receive = anyio.create_memory_object_stream[_Write](64)
        self._noise_logged_at = -NOISE_LOG_INTERVAL_S
        self._noise_seen = (0, 0)
        self.last_frame_monotonic = time.monotonic()

    def raise_if_lost(self) -> None:
        if self.lost is not None:
            raise UbloxError("UNAVAILABLE", self.lost)

    @contextmanager
    def expect(self, matches: Callable[[Received], bool]) -> Iterator[Expectation]:
        """Watch for a frame from now on (enter before writing the command it answers)."""
        expectation = Expectation(matches, self)
        self._expectations.append(expectation)
        try:
            yield expectation
        finally:
            self._expectations.remove(expectation)

    async def write(self, frame: bytes) -> None:
        """Have the owner write `frame`; return once it is written (UNAVAILABLE once lost)."""
        self.raise_if_lost()
        written = anyio.Event()
        try:
            await self._send.send((frame, written))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.raise_if_lost()
            raise UbloxError("UNAVAILABLE", f"the port {self.port.device} is closed") from None
        await written.wait()
        self.raise_if_lost()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                tg.start_soon(self._write_loop, tg.cancel_scope)
                await self._read_loop()
                tg.cancel_scope.cancel()
        finally:
            self._send.close()
            self._receive.close()
            for expectation in self._expectations:
                expectation.wake()
            self.port.close()

    def _device_lost(self, reason: str) -> None:
        if self.lost is None:
            self.lost = f"F9T on {self.port.device} disconnected: {reason}"
            log.warning("%s", self.lost)

    async def _read_loop(self) -> None:
        fd = self.port.fd
        while True:
            await anyio.wait_readable(fd)
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._device_lost(exc.strerror or str(exc))
                return
            if not data:
                self._device_lost("device reports readiness to read but returned no data")
                return
            t_ns = time.time_ns()
            for frame in self.splitter.feed(data):
                self._handle(frame, t_ns)
            self._log_noise()

    def _handle(self, frame: bytes, t_ns: int) -> None:
        try:
            message = decode(frame)
            name = message_name(message)
        except UbxDecodeError as exc:
            log.debug("%s: %s", self.port.device, exc)
            return
        self.last_frame_monotonic = time.monotonic()
        received = Received(name, frame, t_ns, message)
        for expectation in list(self._expectations):
            expectation.offer(received)
        self._on_frame(received)

    def _log_noise(self) -> None:
        seen = (self.splitter.bad_checksums, self.splitter.skipped_bytes)
        now = time.monotonic()
        if seen != self._noise_seen and now - self._noise_logged_at >= NOISE_LOG_INTERVAL_S:
            bad = seen[0] - self._noise_seen[0]
            skipped = seen[1] - self._noise_seen[1]
            log.info(
                "%s: dropped %d frame(s) with bad checksums and %d non-UBX byte(s) (NMEA, RTCM, "
                "noise) since the last report",
                self.port.device,
                bad,
                skipped,
            )
            self._noise_seen = seen
            self._noise_logged_at = now

    async def _write_loop(self, scope: anyio.CancelScope) -> None:
        fd = self.port.fd
        async for frame, written in self._receive:
            view = memoryview(frame)
            try:
                while view:
                    try:
                        view = view[os.write(fd, view) :]
                    except BlockingIOError:
                        await anyio.wait_writable(fd)
            except OSError as exc:
                self._device_lost(exc.strerror or str(exc))
                scope.cancel()
                return
            finally:
                written.set()
