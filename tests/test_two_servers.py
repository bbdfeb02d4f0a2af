"""Two servers on one host, each with its default simulation directory (R-SIM-7), as real
processes: neither touches the other's run; one whose run is removed logs one line, stops its
simulation and keeps serving; InitHpIo starts it again; no traceback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import types
from pathlib import Path

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from panoseti_daq.server.process import free_port, serve_command, started
from tests.helpers import init_hp_io, next_reply, open_stream, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"  # the raw grpclib helpers run on asyncio


@contextlib.contextmanager
def serve(home: Path, env: dict[str, str]):
    """A server process with the default simulation directory; its stderr goes to a file."""
    home.mkdir()
    port = free_port()
    (home / "c.json").write_text(
        json.dumps({"simulate_daq_cfg": {"frame_rate_hz": 50}, "shutdown_grace_period": 3})
    )
    err = home / "stderr.log"
    command = serve_command(
        *("--config", str(home / "c.json"), "--host", "127.0.0.1", "--port", str(port)),
        *("--uds", "", "--init-sim"),
    )
    with (
        open(err, "w") as stderr,
        started(
            command,
            port,
            stop_signal=signal.SIGKILL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        ) as process,
    ):
        yield process, types.SimpleNamespace(port=port), err


async def frames(server, count: int) -> list[int]:
    """Frame numbers of the next `count` frames from the server (every frame, interval 0),
    once its simulation runs: a server started with --init-sim listens before it does."""
    got = []
    with anyio.fail_after(20):
        while True:
            try:
                async with open_stream(server) as stream:
                    while len(got) < count:
                        reply = await next_reply(stream)
                        got.append(reply.frame.frame_number)
                return got
            except GRPCError as exc:
                if exc.status is not Status.FAILED_PRECONDITION:
                    raise
                await anyio.sleep(0.05)


def vanished(log: Path, run: Path) -> list[str]:
    """The log lines saying that the run was removed."""
    return [line for line in log.read_text().splitlines() if str(run) in line and "removed" in line]


def stop(process) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=20)


async def test_two_servers_with_default_simulation_directories(tmp_path):
    """R-SIM-7 over two real server processes sharing one temporary directory."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with serve(tmp_path / "a", env) as (pa, a, err_a), serve(tmp_path / "b", env) as (pb, b, _):
        run_a = tmp_path / f"panoseti_daq_sim_{pa.pid}"
        run_b = tmp_path / f"panoseti_daq_sim_{pb.pid}"
        await frames(a, 3)
        await frames(b, 3)
        assert run_a.is_dir() and run_b.is_dir()
        # Someone removes A's run while it writes.
        shutil.rmtree(run_a)
        await wait_until(lambda: len(vanished(err_a, run_a)) == 1, timeout_s=15, what="log")
        # A goes on serving: InitHpIo answers and starts the simulation again; B never stopped.
        assert (await init_hp_io(a, "", simulate_daq=True)).success
        assert len(await frames(a, 3)) == 3 and run_a.is_dir()
        assert len(await frames(b, 3)) == 3
        assert stop(pa) == 0
        assert not run_a.exists() and run_b.is_dir()  # A removed its own run only
        assert stop(pb) == 0
        assert not run_b.exists()
    log_a = err_a.read_text()
    assert "Traceback" not in log_a and "ExceptionGroup" not in log_a, log_a
    assert len(vanished(err_a, run_a)) == 1, log_a
