"""The panoseti-daq CLI against a live simulated server (R-UI-1 .. R-UI-3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from panoseti_daq import pff, product_named


def cli(live_server, *args, daq=None):
    daq_path, net_path, tmp = live_server
    env = {**os.environ, "MPLBACKEND": "Agg", "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "panoseti_daq.cli", str(daq or daq_path), str(net_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp,
    )


def test_list_hosts_ping_and_reflection(live_server):
    result = cli(live_server, "--list-hosts", "--ping", "--reflect-services")
    assert result.returncode == 0, result.stderr
    assert "\tup" in result.stdout and "\tok" in result.stdout
    assert "daqdata.DaqData" in result.stdout and "[server streaming]" in result.stdout


def test_ping_of_a_dead_host_exits_1(live_server, tmp_path):
    from tests.helpers import free_port

    dead = tmp_path / "dead.json"
    dead.write_text(json.dumps({"daq_nodes": [{"ip_addr": f"127.0.0.1:{free_port()}"}]}))
    result = cli(live_server, "--ping", daq=dead)
    assert result.returncode == 1
    assert "no answer" in result.stdout


def test_init_sim_and_stream_table(live_server):
    """R-UI-1: --init-sim, then the live table (the default action) bounded by --max-frames."""
    result = cli(
        live_server,
        "--init-sim",
        "--stream",
        "--update-interval",
        "0",
        "--max-frames",
        "10",
        "--refresh-period",
        "0.2",
    )
    assert result.returncode == 0, result.stderr
    assert "simulation started" in result.stdout
    assert "panoseti-daq stream" in result.stdout and "PULSE_HEIGHT" in result.stdout


def test_record_writes_readable_pff(live_server, tmp_path):
    """--record DIR: standard names, frames readable by panoseti_daq.pff."""
    out = tmp_path / "rec"
    result = cli(
        live_server,
        "--record",
        str(out),
        "--update-interval",
        "0",
        "--max-frames",
        "12",
        "--no-movie",
    )
    assert result.returncode == 0, result.stderr
    files = sorted(out.rglob("*.pff"))
    assert files and all(f.parent.name.startswith("obs_RECORD.") for f in files)
    frames = 0
    for path in files:
        name = pff.DataFileName.parse(path.name)
        assert name.dp == "ph256" and name.module == 224
        frames += len(list(pff.iter_frames(path, product_named(name.dp))))
    assert frames >= 12


def test_plots_are_written_without_a_display(live_server, tmp_path):
    """R-UI-2, R-UI-3 from the CLI: with no display the plots go to PNG files."""
    result = cli(
        live_server,
        "--plot-view",
        "--plot-phdist",
        "--plot-dir",
        str(tmp_path),
        "--update-interval",
        "0",
        "--max-frames",
        "20",
        "--refresh-period",
        "0.3",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "preview.png").stat().st_size > 10_000
    assert (tmp_path / "phdist.png").stat().st_size > 5_000


@pytest.mark.parametrize("args", [["--no-movie", "--no-ph"], []])
def test_bad_input_exits_2(live_server, tmp_path, args):
    missing = tmp_path / "missing.json"
    result = cli(live_server, *args, daq=missing if not args else None)
    assert result.returncode == 2
    assert "panoseti-daq:" in result.stderr
