"""A simulated u-blox ZED-F9T on a pseudo-terminal, for tests and demos without hardware.

`SimulatedF9t` opens a pty pair; the slave's path (`.device`) is what a server opens as the
chip's serial port. The chip's behaviour (identity, configuration layers, polls, periodic output)
is the loop-free `ChipModel`; this module moves bytes between it and the pty master, paces the
output, and applies the faults of the wire and the link (R-UBX-SIM-1, -6, -7).

It runs in a thread of its own with a `select` loop on the master (plus a self-pipe that fault
switches use to wake it), not on an event loop: a test runs the server in-process on whatever
loop it uses (asyncio, trio, trio-asyncio) and the chip must keep answering while that loop is
busy or blocked, exactly as hardware would; and the same thread serves the command line, which
has no loop. Every public method is thread-safe (one lock guards the chip and the output queue).

Closing the master is an unplugged cable: the host's next read of the slave fails (EOF or EIO).
The simulator keeps its own descriptor of the slave open while it runs, so the pty survives the
host closing and reopening the port, and the master never reports a hang-up that is not one.

    python -m panoseti_daq.ublox.simulator [--uid HEX] [--period S]

prints the device path alone as its first line and runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import math
import os
import random
import re
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterable, Mapping
from types import FrameType, TracebackType

from panoseti_daq.ublox.chip_model import (
    ChipModel,
    ConfigValue,
    Identity,
    Port,
    Source,
    key_type,
    normalise_key,
)
from panoseti_daq.ublox.protocol import UbxFrameSplitter

__all__ = ["SimulatedF9t", "main"]

_log = logging.getLogger(__name__)

# termios speed constants (B9600, ...) by value, to read the host's speed off the pty.
_SPEEDS = {
    getattr(termios, name): int(name[1:])
    for name in dir(termios)
    if re.fullmatch(r"B\d+", name) and name != "B0"
}
# Output the host does not read piles up in the pty, then here; beyond this it is dropped, as a
# chip's transmit buffer drops it.
_MAX_QUEUED_BYTES = 64 * 1024
_READ_SIZE = 4096
_NOISE_BYTES = bytes(b for b in range(256) if b not in (0xB5, 0x24))
# Epochs fall this long after whole multiples of the period in host (UTC) time, as a chip's
# messages follow the second they describe.
_EPOCH_OFFSET_S = 0.02


class SimulatedF9t:
    """A ZED-F9T behind a pseudo-terminal, running in a thread (see the module docstring).

    Use it as a context manager; `.device` is the path to open. `period_s` is the output epoch
    (1 s on the chip); `source` "synthetic" builds TIM-TP and NAV-TIMEUTC from the host clock,
    "recorded" replays the shipped recording byte for byte. `port` is the chip port the host is
    on (its MSGOUT and protocol keys count); `speed` is the chip's UART speed and a host setting
    another one on the pty gets noise (`usb=True`: the speed does not matter, as on USB CDC).
    """

    def __init__(
        self,
        *,
        uid: str = "DF03A241BC",
        model: str = "ZED-F9T",
        fwver: str = "TIM 2.20",
        protver: str = "29.20",
        period_s: float = 1.0,
        source: Source = "synthetic",
        port: Port = "USB",
        usb: bool = False,
        speed: int = 115200,
        unsupported_keys: Iterable[str] = (),
        answers: Mapping[str, bytes] | None = None,
        seed: int = 0,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, not {period_s}")
        if speed not in _SPEEDS.values():
            raise ValueError(f"speed {speed} is not a serial speed this system supports")
        identity = Identity(model=model, uid=_checked_uid(uid), fwver=fwver, protver=protver)
        self._chip = ChipModel(
            identity=identity,
            port=port,
            source=source,
            speed=speed,
            unsupported_keys=[_checked_key(key) for key in unsupported_keys],
            answers=answers,
        )
        self._usb = usb
        self._period_s = period_s
        self._normal_period_s = period_s
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._splitter = UbxFrameSplitter()
        self._out: collections.deque[tuple[float, bytes]] = collections.deque()
        self._queued_bytes = 0
        # Wire faults (R-UBX-SIM-6).
        self._silent = False
        self._bad_checksum_every = 0
        self._ubx_frames_sent = 0
        self._garbage_bytes = 0
        self._split_pause_s = 0.0
        # Figures a test may read.
        self.dropped_bytes = 0
        self.ignored_bytes = 0
        self.noise_bytes = 0
        self._master = -1
        self._slave = -1
        self._wake_r = -1
        self._wake_w = -1
        self._device: str | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    # --- lifetime --------------------------------------------------------------------------

    def start(self) -> SimulatedF9t:
        """Open the pty and start answering; returns self."""
        if self._thread is not None:
            raise RuntimeError("the simulator was already started")
        self._master, self._slave = os.openpty()
        self._device = os.ttyname(self._slave)
        for fd in (self._master, self._slave):
            tty.setraw(fd)
        # Until a host sets its own, the line runs at the chip's speed.
        attrs = termios.tcgetattr(self._slave)
        speed_constant = next(k for k, v in _SPEEDS.items() if v == self._chip.link_speed())
        attrs[4] = attrs[5] = speed_constant
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        os.set_blocking(self._master, False)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name=f"f9t-sim {self._device}")
        self._thread.daemon = True
        self._thread.start()
        _log.info("simulated ZED-F9T %s on %s", self._chip.identity.uid, self._device)
        return self

    def close(self) -> None:
        """Unplug (if still plugged in) and wait for the thread to end."""
        self.unplug()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> SimulatedF9t:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def device(self) -> str:
        """The pty slave's path: the serial device a server opens."""
        if self._device is None:
            raise RuntimeError("the simulator is not started")
        return self._device

    @property
    def running(self) -> bool:
        """Whether the chip is plugged in (started, not unplugged, no error)."""
        return self._thread is not None and not self._closed.is_set()

    # --- faults (R-UBX-SIM-6) ---------------------------------------------------------------

    def unplug(self) -> None:
        """Close the master, as a pulled cable: the host's next read fails. Waits for it."""
        if self._thread is None or threading.current_thread() is self._thread:
            return
        with self._lock:
            self._stop = True
        self._wake()
        self._closed.wait()

    def mute(self, on: bool = True) -> None:
        """Answer nothing the host sends (periodic output goes on)."""
        with self._lock:
            self._chip.mute = on

    def nak_next_valset(self, count: int = 1) -> None:
        """Refuse the next `count` CFG-VALSET messages with ACK-NAK."""
        with self._lock:
            self._chip.nak_valsets = count

    def nak_next_valget(self, count: int = 1) -> None:
        """Refuse the next `count` CFG-VALGET polls with ACK-NAK."""
        with self._lock:
            self._chip.nak_valgets = count

    def wrong_readback(self, keys: Iterable[str]) -> None:
        """CFG-VALGET reports another value than stored for these keys (empty: none)."""
        with self._lock:
            self._chip.wrong_readback_keys = {_checked_key(key) for key in keys}

    def set_identity(
        self, *, model: str | None = None, uid: str | None = None, fwver: str | None = None
    ) -> None:
        """Report another model (MON-VER MOD=), UID (SEC-UNIQID) or firmware (FWVER=)."""
        with self._lock:
            if model is not None:
                self._chip.identity.model = model
            if uid is not None:
                self._chip.identity.uid = _checked_uid(uid)
            if fwver is not None:
                self._chip.identity.fwver = fwver

    def set_unsupported_keys(self, keys: Iterable[str]) -> None:
        """Keys the firmware does not know: VALSET and VALGET naming them get ACK-NAK."""
        with self._lock:
            self._chip.unsupported_keys = {_checked_key(key) for key in keys}

    def set_answer(self, name: str, frame: bytes | None) -> None:
        """Answer polls of `name` (e.g. "MON-HW") with this whole frame; None: no answer."""
        with self._lock:
            if frame is None:
                self._chip.answers.pop(name, None)
            else:
                self._chip.answers[name] = bytes(frame)

    def stray_acks(self, on: bool = True) -> None:
        """Send the recording's ACK-ACK for CFG-VALGET before each CFG-VALSET answer."""
        with self._lock:
            self._chip.stray_acks = on

    def bad_checksum_every(self, n: int) -> None:
        """Corrupt the checksum of every n-th UBX frame sent (0: none)."""
        with self._lock:
            self._bad_checksum_every = max(0, n)
            self._ubx_frames_sent = 0

    def garbage_between_frames(self, nbytes: int) -> None:
        """Send `nbytes` random bytes (never a sync byte) before each frame (0: none)."""
        with self._lock:
            self._garbage_bytes = max(0, nbytes)

    def split_frames(self, pause_s: float) -> None:
        """Write each frame in pieces with `pause_s` between them (0: whole frames)."""
        with self._lock:
            self._split_pause_s = max(0.0, pause_s)

    def silence(self, on: bool = True) -> None:
        """Stop (or resume) the periodic output; polls are still answered."""
        with self._lock:
            self._silent = on
        self._wake()

    def burst(self, epochs_per_s: float) -> None:
        """Output `epochs_per_s` epochs a second (each TIM-TP, NAV-TIMEUTC, NMEA as enabled);
        0 returns to the normal period."""
        with self._lock:
            self._period_s = 1.0 / epochs_per_s if epochs_per_s > 0 else self._normal_period_s
        self._wake()

    def send_raw(self, data: bytes) -> None:
        """Put bytes on the wire as they are (after anything queued)."""
        with self._lock:
            self._enqueue([bytes(data)])
        self._wake()

    def recorded_ack(self) -> bytes:
        """The recording's stray ACK-ACK (for a CFG-VALGET), e.g. for `send_raw`."""
        return self._chip.recorded_ack()

    # --- what a test may ask ----------------------------------------------------------------

    def value(self, key: str, layer: str = "RAM") -> ConfigValue:
        """A configuration key's value on RAM, BBR, FLASH or DEFAULT."""
        name = _checked_key(key)
        if layer.upper() not in ("RAM", "BBR", "FLASH", "DEFAULT"):
            raise ValueError(f"layer must be RAM, BBR, FLASH or DEFAULT, not {layer!r}")
        with self._lock:
            return self._chip.value(name, layer)

    def received(self, name: str) -> int:
        """How many frames of this name (e.g. "CFG-VALSET", "MON-VER") the host sent."""
        with self._lock:
            return len(self._chip.arrivals[name])

    def received_at(self, name: str) -> list[float]:
        """When (time.time()) the host's frames of this name arrived, oldest first."""
        with self._lock:
            return list(self._chip.arrivals[name])

    def wait_received(self, name: str, count: int = 1, timeout_s: float = 5.0) -> bool:
        """Wait until the host has sent `count` frames of this name; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: len(self._chip.arrivals[name]) >= count, timeout_s
            )

    def host_speed(self) -> int:
        """The speed the host set on the port (tcgetattr on the master shows the slave's)."""
        with self._lock:
            if self._master < 0:
                raise RuntimeError("the simulator is not plugged in")
            return self._host_speed()

    # --- the thread ------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._lock:
            if self._wake_w >= 0:
                # A full pipe already holds a wake-up.
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"x")

    def _host_speed(self) -> int:
        ospeed = int(termios.tcgetattr(self._master)[5])
        return _SPEEDS.get(ospeed, ospeed)

    def _mismatched(self) -> bool:
        """R-UBX-SIM-7: a UART whose two ends disagree on the speed."""
        return not self._usb and self._host_speed() != self._chip.link_speed()

    def _next_epoch(self, after_wall: float) -> float:
        """The monotonic time of the first epoch after a wall-clock time (lock held)."""
        period = self._period_s
        wall_epoch = (math.floor((after_wall - _EPOCH_OFFSET_S) / period) + 1) * period
        return time.monotonic() + wall_epoch + _EPOCH_OFFSET_S - time.time()

    def _run(self) -> None:
        with self._lock:
            next_epoch = self._next_epoch(time.time())
        try:
            while True:
                with self._lock:
                    if self._stop:
                        return
                    now = time.monotonic()
                    if now >= next_epoch:
                        wall = time.time()
                        if not self._silent:
                            self._send(self._chip.tick(wall))
                        next_epoch = self._next_epoch(wall + self._period_s / 2)
                    # A burst switched on meanwhile starts now, not after the old period.
                    next_epoch = min(next_epoch, now + self._period_s)
                    # Behind schedule (an epoch took longer than a burst's period): no wait.
                    timeout = max(0.0, next_epoch - now)
                    if self._out:
                        timeout = min(timeout, max(0.0, self._out[0][0] - now))
                    want_write = bool(self._out) and self._out[0][0] <= now
                readers, writers, _ = select.select(
                    [self._master, self._wake_r], [self._master] if want_write else [], [], timeout
                )
                if self._wake_r in readers:
                    while _drain(self._wake_r):
                        pass
                if self._master in readers:
                    self._receive(os.read(self._master, _READ_SIZE))
                if writers:
                    self._write_due()
        except OSError as exc:
            _log.error("simulated ZED-F9T on %s stopped: %s", self._device, exc)
        finally:
            self._close_fds()

    def _receive(self, data: bytes) -> None:
        with self._changed:
            if self._mismatched():
                self.ignored_bytes += len(data)
                return
            answers = []
            for frame in self._splitter.feed(data):
                try:
                    answers += self._chip.handle(frame, time.time())
                except Exception:
                    # A simulator defect, not a chip behaviour: say so, and keep the port up.
                    _log.exception("simulated ZED-F9T failed on host frame %s", frame.hex())
            self._send(answers)
            self._changed.notify_all()

    def _send(self, frames: list[bytes]) -> None:
        """Queue the chip's frames through the wire faults (lock held)."""
        for frame in frames:
            if self._mismatched():
                noise = bytes(self._random.choice(_NOISE_BYTES) for _ in frame)
                self.noise_bytes += len(noise)
                self._enqueue([noise])
                continue
            if frame[:2] == b"\xb5\x62":
                self._ubx_frames_sent += 1
                if (
                    self._bad_checksum_every
                    and self._ubx_frames_sent % self._bad_checksum_every == 0
                ):
                    frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
            if self._garbage_bytes:
                garbage = bytes(
                    self._random.choice(_NOISE_BYTES) for _ in range(self._garbage_bytes)
                )
                self._enqueue([garbage])
            if self._split_pause_s and len(frame) > 2:
                cuts = sorted(self._random.sample(range(1, len(frame)), 2))
                pieces = [frame[: cuts[0]], frame[cuts[0] : cuts[1]], frame[cuts[1] :]]
                self._enqueue(pieces, self._split_pause_s)
            else:
                self._enqueue([frame])

    def _enqueue(self, pieces: list[bytes], pause_s: float = 0.0) -> None:
        """Queue pieces, each `pause_s` after the one before (lock held)."""
        due = max(time.monotonic(), self._out[-1][0] if self._out else 0.0)
        for index, piece in enumerate(pieces):
            if self._queued_bytes + len(piece) > _MAX_QUEUED_BYTES:
                self.dropped_bytes += len(piece)
                continue
            if index:
                due += pause_s
            self._out.append((due, piece))
            self._queued_bytes += len(piece)

    def _write_due(self) -> None:
        with self._lock:
            now = time.monotonic()
            while self._out and self._out[0][0] <= now:
                due, piece = self._out[0]
                try:
                    written = os.write(self._master, piece)
                except BlockingIOError:
                    return
                self._queued_bytes -= written
                if written < len(piece):
                    self._out[0] = (due, piece[written:])
                    return
                self._out.popleft()

    def _close_fds(self) -> None:
        with self._changed:
            for fd in (self._master, self._slave, self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._master = self._slave = self._wake_r = self._wake_w = -1
            self._closed.set()
            self._changed.notify_all()
        _log.info("simulated ZED-F9T on %s unplugged", self._device)


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _checked_uid(uid: str) -> str:
    if not re.fullmatch(r"[0-9A-Fa-f]{10}", uid):
        raise ValueError(f"UID must be 10 hex digits, not {uid!r}")
    return uid.upper()


def _checked_key(key: str) -> str:
    name = normalise_key(key)
    try:
        key_type(name)
    except KeyError:
        raise ValueError(f"unknown configuration key {key!r}") from None
    return name


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Run a simulated ZED-F9T until SIGINT or SIGTERM; print its device path first."""
    parser = argparse.ArgumentParser(
        prog="python -m panoseti_daq.ublox.simulator",
        description="A simulated u-blox ZED-F9T on a pseudo-terminal. Prints the device path, "
        "then runs until interrupted; stopping it unplugs the device.",
    )
    parser.add_argument("--uid", default="DF03A241BC", help="chip UID, 10 hex digits")
    parser.add_argument("--model", default="ZED-F9T", help="model reported by MON-VER")
    parser.add_argument("--fwver", default="TIM 2.20", help="firmware reported by MON-VER")
    parser.add_argument(
        "--period", type=_positive_seconds, default=1.0, help="output period in seconds"
    )
    parser.add_argument(
        "--recorded", action="store_true", help="replay the recorded frames, not clock-built ones"
    )
    parser.add_argument("--port", choices=["USB", "UART1"], default="USB", help="chip port")
    parser.add_argument("--speed", type=int, default=115200, help="the chip's UART speed")
    parser.add_argument("--usb", action="store_true", help="ignore the host's speed (USB CDC)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        simulator = SimulatedF9t(
            uid=args.uid,
            model=args.model,
            fwver=args.fwver,
            period_s=args.period,
            source="recorded" if args.recorded else "synthetic",
            port=args.port,
            usb=args.usb,
            speed=args.speed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with simulator:
        print(simulator.device, flush=True)
        while not stop.wait(0.5):
            if not simulator.running:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
