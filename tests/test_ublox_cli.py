"""panoseti-ublox, `make demo-ublox`, examples/ublox_capture.py and the recipes of docs/ublox.md,
each run as a user runs them: processes against a server process that owns a simulated ZED-F9T
(the simulator's CLI on a real pseudo-terminal, `python -m panoseti_daq.serve`)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from panoseti_daq.ublox.demo import simulated_node
from tests.ublox_helpers import RECORDING

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "MPLBACKEND": "Agg", "COLUMNS": "80"}


@pytest.fixture(scope="module")
def node():
    """One simulated chip (output every 0.2 s) and its server for the module, started as the
    demo starts them."""
    with simulated_node(period_s=0.2) as running:
        yield running


def ublox(*args, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "panoseti_daq.ublox.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        **kwargs,
    )


def test_init_then_capture_into_a_pipe(node, tmp_path):
    """init prints the server's answer per chip; capture into a pipe prints the heading and one
    key=value line per node at each refresh, with qErr and tAcc; --plot writes a PNG."""
    init = ublox("init", node.f9t_config, "--force")
    assert init.returncode == 0, init.stderr
    assert f"DF03A241BC at 127.0.0.1:{node.port}: initialised" in init.stdout
    assert "F9T initialized, configured, and verified successfully." in init.stdout
    plot, recording = tmp_path / "qerr.png", tmp_path / "night.jsonl"
    capture = ublox(
        *("capture", node.f9t_config, "--duration", 3, "--refresh-period", 0.5),
        *("--plot", plot, "--record", recording),
    )
    assert capture.returncode == 0, capture.stderr
    rows = [line for line in capture.stdout.splitlines() if line.startswith("  DF03A241BC: ")]
    assert rows, capture.stdout
    assert re.search(r"qErr_ps=-?\d+ pulse=\d\d:\d\d:\d\d tAcc_ns=\d+ utc_ok=yes", rows[-1])
    assert f"qErr plot: {plot} (" in capture.stdout and plot.stat().st_size > 10_000
    assert "Traceback" not in capture.stderr
    recorded = len(recording.read_text().splitlines())
    assert f"recorded {recorded} messages to {recording}" in capture.stdout and recorded > 5
    replot = ublox("plot", recording, "--output", tmp_path / "again.png")
    assert replot.returncode == 0, replot.stderr
    assert re.search(r"qErr plot: .*again\.png \(\d+ pulses\)", replot.stdout)


def test_plot_of_the_originals_recording(tmp_path):
    """plot reads the original's ubx_packets.jsonl: its 40 TIM-TP; a file that is not a
    recording is named with its line (exit code 2)."""
    result = ublox("plot", RECORDING, "-o", tmp_path / "q.png")
    assert result.returncode == 0, result.stderr
    assert f"qErr plot: {tmp_path / 'q.png'} (40 pulses)" in result.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    result = ublox("plot", bad)
    assert result.returncode == 2
    assert "bad.jsonl line 1: not a recorded UBX frame" in result.stderr


def test_poll_and_capture_by_address(node):
    """poll prints each answer's fields; capture and poll take host:port instead of the file."""
    ublox("init", node.f9t_config, "--force")
    poll = ublox("poll", f"127.0.0.1:{node.port}", "MON-VER$", "NAV-TIMEUTC$")
    assert poll.returncode == 0, poll.stderr
    lines = poll.stdout.splitlines()
    assert lines[0].startswith("MON-VER: swVersion=") and "MOD=ZED-F9T" in lines[0]
    assert lines[1].startswith("NAV-TIMEUTC: iTOW=")
    capture = ublox("capture", f"127.0.0.1:{node.port}", "--max-messages", 3, "--pattern", ".")
    assert capture.returncode == 0, capture.stderr
    assert f"  127.0.0.1:{node.port}: " in capture.stdout


def test_capture_ends_quietly_on_a_closed_pipe_and_on_sigterm(node):
    """`| head` ends the capture with exit code 0 and no traceback; SIGTERM ends it as Ctrl+C
    does: the final table, exit code 0."""
    ublox("init", node.f9t_config, "--force")
    command = [sys.executable, "-m", "panoseti_daq.ublox.cli", "capture", str(node.f9t_config)]
    pipeline = subprocess.run(
        f"{' '.join(command)} --refresh-period 0.2 | head -n 2",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        executable="/bin/bash",
    )
    assert len(pipeline.stdout.splitlines()) == 2
    assert "Traceback" not in pipeline.stderr and "Broken pipe" not in pipeline.stderr
    status = subprocess.run(
        f"{' '.join(command)} --refresh-period 0.2 | head -n 2; echo ${{PIPESTATUS[0]}}",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        executable="/bin/bash",
    )
    assert status.stdout.splitlines()[-1] == "0", status.stderr
    process = subprocess.Popen(
        [*command, "--refresh-period", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("  DF03A241BC: "):
            break  # it is capturing
    process.send_signal(signal.SIGTERM)
    rest, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert "DF03A241BC: qErr_ps=" in rest


def test_errors_name_the_input_and_what_would_be_valid(node, tmp_path):
    """Bad input: one line on stderr naming it and what is valid; exit code 2 (1 when a server
    refuses). Nothing is sent for a request the server would refuse."""
    cases = [
        (("init", tmp_path / "nope.json5"), 2, "nope.json5: no such file; give the f9t_config"),
        (("capture", "daq-7"), 2, "daq-7: no such file; give an f9t_config.json5 or host:port"),
        (("capture", node.f9t_config, "--pattern", "TIM-TP("), 2, "TIM-TP("),
        (("capture", node.f9t_config, "--uid", "ABCDEF0123"), 2, "known: "),
        (("poll", node.f9t_config, "TP"), 1, "no pollable message matches"),
        (("capture", node.f9t_config, "--duration", "-1"), 2, "above 0"),
    ]
    bad = tmp_path / "bad.json5"
    bad.write_text(node.f9t_config.read_text().replace('"CFG_TP_FREQ_TP1"', '"CFG_TP_FREQ_TP9"'))
    cases.append((("init", bad), 2, "CFG_TP_FREQ_TP9"))
    for args, code, text in cases:
        result = ublox(*args)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert text in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    wrong_chip = tmp_path / "other.json5"
    wrong_chip.write_text(node.f9t_config.read_text().replace("DF03A241BC", "0102030405"))
    refused = ublox("init", wrong_chip, "--force")
    assert refused.returncode == 1
    assert "0102030405 at 127.0.0.1:" in refused.stdout and "failed: INVALID_ARGUMENT" in (
        refused.stdout
    )
    assert "does not match client UID 0102030405" in refused.stdout


def test_example_runs(node):
    """examples/ublox_capture.py against the node's f9t_config, initialising first."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "ublox_capture.py"),
            str(node.f9t_config),
            "--init",
            "--max-messages",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    assert "initialised" in result.stdout and "qErr" in result.stdout
    assert "MOD=ZED-F9T" in result.stdout


def test_doc_recipes_run_as_written(node, tmp_path):
    """Every Python recipe of docs/ublox.md runs as written, in a directory whose
    f9t_config.json5 names the simulated chip and its server."""
    shutil.copy(node.f9t_config, tmp_path / "f9t_config.json5")
    ublox("init", node.f9t_config, "--force")
    doc = (ROOT / "docs" / "ublox.md").read_text()
    recipes = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    assert len(recipes) >= 2
    for recipe in recipes:
        result = subprocess.run(
            [sys.executable, "-c", recipe],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
            cwd=tmp_path,
        )
        assert result.returncode == 0, (recipe, result.stderr)
        assert result.stdout.strip(), recipe


def test_make_demo_ublox_runs_and_stops_cleanly(tmp_path):
    """`make demo-ublox`: simulator, server, init and a capture; --duration ends it and every
    process stops with exit code 0."""
    result = subprocess.run(
        [sys.executable, "-m", "panoseti_daq.ublox.demo", "--duration", "3"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    assert ": initialised" in result.stdout
    assert re.search(r"DF03A241BC: qErr_ps=-?\d+", result.stdout), result.stdout
    assert "server stopped (exit code 0)" in result.stdout
    assert "simulator stopped (exit code 0)" in result.stdout
