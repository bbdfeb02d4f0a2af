"""Every example script runs against a live simulated server (R-CLI-*, the seed's workflows)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each test runs an example script against a server process: 2-8 s under load.
pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, live_server, *args):
    daq, net, tmp = live_server
    env = {**os.environ, "MPLBACKEND": "Agg", "PANOSETI_PLOT_DIR": str(tmp / "plots")}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), str(daq), str(net), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp,
    )


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("blocking_client.py", "module 224"),
        ("async_asyncio.py", "module 224"),
        ("async_trio.py", "pulse heights"),
        ("robust_shutdown.py", "stream processing finished"),
        ("upload.py", "uploaded to"),
        ("visualize.py", "wrote"),
    ],
)
def test_example_runs(live_server, name, expect):
    result = run_example(name, live_server, "--max-frames", "5")
    assert result.returncode == 0, result.stderr
    assert expect in result.stdout
    assert "Traceback" not in result.stderr


def test_blocking_example_prints_requested_frames(live_server):
    """The blocking client stops after --max-frames and prints one line per frame."""
    result = run_example("blocking_client.py", live_server, "--max-frames", "7")
    assert result.returncode == 0, result.stderr
    # Any module: the examples leave the server's state alone, and upload.py added module 254.
    lines = [line for line in result.stdout.splitlines() if line.startswith("module ")]
    assert len(lines) == 7


def test_make_demo_runs_server_and_client(tmp_path):
    """`make demo` (python -m panoseti_daq.demo) shows live frames and stops cleanly."""
    result = subprocess.run(
        [sys.executable, "-m", "panoseti_daq.demo", "--duration", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert result.returncode == 0, result.stderr
    assert "simulation started" in result.stdout
    assert "ph256" in result.stdout and "img16" in result.stdout
    assert "server stopped (exit code 0)" in result.stdout


@pytest.mark.parametrize(("name", "expect"), [("blocking_client.py", "module 224")])
def test_example_without_a_config_starts_a_server_of_its_own(tmp_path, name, expect):
    """Without a daq_config an example starts its own server on a free port (never the
    default 127.0.0.1:50051 of someone else's server, never restarting its simulation), and
    stops it: no server process is left behind."""
    env = {**os.environ, "MPLBACKEND": "Agg", "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--max-frames", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "started a server of our own on 127.0.0.1:" in result.stdout
    assert "127.0.0.1:50051" not in result.stdout
    assert expect in result.stdout and "Traceback" not in result.stderr
    # The server stopped and removed its simulation (its directory was under TMPDIR).
    assert not list(tmp_path.glob("panoseti_daq_sim_*"))
