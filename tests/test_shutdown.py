"""Shutdown as grpcio clients see it: the real SIGTERM path of `python -m panoseti_daq.serve`
(R-STOP-1, R-NET-4, R-STREAM-3, R-NET-2).

The server runs in a subprocess (tests/helpers.py `server_process`) on each backend. DaqData
statuses are read by the grpcio reference client (tests/reference.py); the standard health
service by grpcio-health-checking in a process of its own (tests/grpcio_probe.py: its protos
collide with grpclib's in one process). A stream that does not end by itself is a real HTTP/2
client that never acknowledges data once the server has filled its flow-control window.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from panoseti_daq.messages import StreamImagesRequest
from tests.helpers import fill_flow_control_window, server_process, stalled_stream_client
from tests.reference import modules

pb2, pb2_grpc = modules()

PROBE = str(Path(__file__).with_name("grpcio_probe.py"))


class LogLines(threading.Thread):
    """A process's log (a text stream) read line by line as it comes, in a thread: a selector
    on the pipe misses lines that Python has already buffered."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self._changed = threading.Condition()
        self.lines: list[str] = []
        self.ended = False
        self._read = 0

    def run(self) -> None:
        for line in self._stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def next_line(self, timeout_s: float) -> str:
        """The next line not yet returned by next_line, stripped, once it has come."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: len(self.lines) > self._read or self.ended, timeout_s
            ):
                raise TimeoutError(f"no line within {timeout_s} s")
            if len(self.lines) <= self._read:
                raise AssertionError(f"the stream ended: {''.join(self.lines)}")
            self._read += 1
            return self.lines[self._read - 1].strip()

    def wait_for(self, containing: str, timeout_s: float) -> str:
        """The first line that contains `containing`, once it has come."""

        def found() -> str | None:
            return next((line for line in self.lines if containing in line), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None or self.ended, timeout_s):
                raise TimeoutError(f"no log line with {containing!r} within {timeout_s} s")
            line = found()
        if line is None:
            raise AssertionError(f"the log ended without {containing!r}: {''.join(self.lines)}")
        return line


def first_frame(stub, timeout_s: float = 20.0) -> None:
    """Wait until the server streams (its --init-sim may still be starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stream = stub.StreamImages(
            pb2.StreamImagesRequest(stream_movie_data=True, stream_pulse_height_data=True),
            timeout=max(0.1, deadline - time.monotonic()),
        )
        try:
            next(stream)
            stream.cancel()
            return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            time.sleep(0.05)


@pytest.mark.timeout(60)  # two server starts and a shutdown that takes its grace period
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_shutdown_with_a_stream_that_does_not_end(short_tmp, backend):
    """R-STOP-1, R-NET-4, R-STREAM-3: during shutdown the health service reports NOT_SERVING
    (through the real stop path), a StreamImages call arriving then gets UNAVAILABLE, and a
    stream that never ends holds the shutdown no longer than `shutdown_grace_period` (the
    listeners then close: bounded by the grace period again); the process exits 0.

    Both answers come from the server while the stalled stream holds its listeners open: once
    the grace period is over they are closed, and a new connection is refused (UNAVAILABLE from
    grpcio, not NOT_SERVING). The checking client is started before the signal, so no process
    start falls inside the grace period."""
    grace = 2.0
    settings = {"shutdown_grace_period": grace, "hp_io_stop_timeout": 1.0}
    with server_process(short_tmp, "--init-sim", config=settings, backend=backend) as (
        process,
        port,
        _uds,
    ):
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as channel:
            stub = pb2_grpc.DaqDataStub(channel)
            first_frame(stub)
            request = StreamImagesRequest(stream_movie_data=True, stream_pulse_height_data=True)
            with stalled_stream_client(port, request) as (stalled, _):
                fill_flow_control_window(stalled)
                watch = subprocess.Popen(
                    [sys.executable, PROBE, "watch", target, "daqdata.DaqData"],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                watched = LogLines(watch.stdout)
                watched.start()
                check = subprocess.Popen(
                    [sys.executable, PROBE, "check-per-line", target, ""],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                checked = LogLines(check.stdout)
                checked.start()
                try:
                    assert watched.next_line(20) == "SERVING"
                    assert checked.next_line(20) == "ready"
                    started = time.monotonic()
                    process.send_signal(signal.SIGTERM)
                    assert watched.next_line(10) == "NOT_SERVING"
                    # A new connection, answered: the stalled stream holds the listeners open.
                    check.stdin.write("check\n")
                    check.stdin.flush()
                    assert checked.next_line(20) == "NOT_SERVING"
                    late = stub.StreamImages(
                        pb2.StreamImagesRequest(stream_movie_data=True), timeout=5
                    )
                    with pytest.raises(grpc.RpcError) as info:
                        next(late)
                    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "server shutting down" in info.value.details()
                    code = process.wait(timeout=2 * grace + 1.0 + 5)
                    elapsed = time.monotonic() - started
                finally:
                    for probe in (watch, check):
                        probe.kill()
                        probe.communicate()
    assert code == 0
    assert grace <= elapsed < 2 * grace + 1.0 + 3, elapsed
    assert not (short_tmp / "sim").exists()


@pytest.mark.timeout(45)  # two server processes
def test_second_server_refuses_a_live_unix_socket(short_tmp):
    """R-NET-2: a second server does not take a Unix socket another server listens on: it exits
    with code 2 naming the socket, and the first server keeps answering on it."""
    with server_process(short_tmp) as (_process, _port, uds):
        other = subprocess.run(
            [sys.executable, "-m", "panoseti_daq.serve", "--port", "-1", "--uds", uds],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert other.returncode == 2, other.stderr
        assert f"another server is listening on {uds}" in other.stderr
        with grpc.insecure_channel(f"unix://{uds}") as channel:
            ping = channel.unary_unary(
                "/daqdata.DaqData/Ping",
                request_serializer=empty_pb2.Empty.SerializeToString,
                response_deserializer=empty_pb2.Empty.FromString,
            )
            assert ping(empty_pb2.Empty(), timeout=10) == empty_pb2.Empty()
        assert Path(uds).exists()


@pytest.mark.timeout(40)  # a server start and a shortened shutdown
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_second_signal_cuts_the_grace_period_short_and_still_exits_cleanly(short_tmp, backend):
    """R-STOP-1: a second SIGINT or SIGTERM during a graceful stop (Ctrl+C twice, or a
    supervisor's signal on top of a terminal's) ends the streams' grace period at once; the
    rest of the stop still runs (the simulation's directory is removed, the socket file too)
    and the process exits 0 with one log line for it, not a traceback."""
    grace = 30.0
    settings = {"shutdown_grace_period": grace, "hp_io_stop_timeout": 1.0}
    with server_process(short_tmp, "--init-sim", config=settings, backend=backend) as (
        process,
        port,
        uds,
    ):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            first_frame(pb2_grpc.DaqDataStub(channel))
        request = StreamImagesRequest(stream_movie_data=True, stream_pulse_height_data=True)
        with stalled_stream_client(port, request) as (stalled, _):
            fill_flow_control_window(stalled)  # this stream would hold the stop for `grace`
            started = time.monotonic()
            log = LogLines(process.stderr)
            log.start()
            process.send_signal(signal.SIGTERM)
            assert "SIGTERM received: shutting down" in log.wait_for("SIGTERM", 10)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=15)
            elapsed = time.monotonic() - started
            log.join(5)
            stderr = "".join(log.lines)
    assert process.returncode == 0, stderr
    assert elapsed < 10, elapsed
    assert "SIGINT received again: ending the streams now" in stderr
    assert "Traceback" not in stderr
    assert not (short_tmp / "sim").exists()
    assert not Path(uds).exists()
