"""The panoseti-daq CLI as a subprocess against live simulated servers (R-UI-1 .. R-UI-3).

The servers run `python -m panoseti_daq.serve --init-sim` (filesystem simulation replaying the
bundled NGC 7331 ph256 frames and a movie source, R-SIM-2, R-SIM-4), started by the
`live_server` fixture of tests/conftest.py and by `server_process` of tests/helpers.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import numpy as np
import pytest

from panoseti_daq import pff, product_named
from panoseti_daq.viewer.recorder import hashpipe_header
from tests.helpers import REAL_PH, free_port, server_process
from tests.test_recorder import read_like_the_observatory

# Each test runs the CLI, and most a server, as processes: 2-15 s under load.
pytestmark = pytest.mark.timeout(60)

ENV = {**os.environ, "MPLBACKEND": "Agg", "COLUMNS": "200"}


def command(daq_path, net_path, *args) -> list[str]:
    return [sys.executable, "-m", "panoseti_daq.cli", str(daq_path), str(net_path), *args]


def cli(live_server, *args, daq=None, cwd=None, timeout=60):
    daq_path, net_path, tmp = live_server
    return subprocess.run(
        command(daq or daq_path, net_path, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=cwd or tmp,
    )


def dead_config(tmp_path: Path) -> Path:
    path = tmp_path / "dead.json"
    path.write_text(json.dumps({"daq_nodes": [{"ip_addr": f"127.0.0.1:{free_port()}"}]}))
    return path


def test_list_hosts_ping_and_reflection(live_server):
    """R-UI-1 --list-hosts, --ping, --reflect-services (R-CLI-4)."""
    result = cli(live_server, "--list-hosts", "--ping", "--reflect-services")
    assert result.returncode == 0, result.stderr
    assert "\tup" in result.stdout and "\tok" in result.stdout
    assert "daqdata.DaqData" in result.stdout and "[server streaming]" in result.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("panoseti-daq")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for option in ("--host", "--ping", "--list-hosts", "--reflect-services", "--init CFG_PATH"):
        assert option in result.stdout
    for option in ("--init-sim", "--plot-view", "--plot-phdist", "--refresh-period"):
        assert option in result.stdout
    for option in ("--module-ids", "--log-level", "--stream", "--record DIR", "--plot-dir"):
        assert option in result.stdout


def test_ping_of_a_dead_host_exits_1(live_server, tmp_path):
    result = cli(live_server, "--ping", daq=dead_config(tmp_path))
    assert result.returncode == 1
    assert "no answer" in result.stdout


def test_no_reachable_host_is_one_line_and_exit_1(live_server, tmp_path):
    """R-CLI-3: no DAQ node answers: one clear line on stderr, no traceback, exit 1."""
    result = cli(live_server, daq=dead_config(tmp_path), timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("panoseti-daq: no DAQ node answered a ping")
    )


def test_init_sim_and_stream_table(live_server):
    """R-UI-1: --init-sim, then the live table bounded by --max-frames: host, module, product."""
    result = cli(
        live_server,
        "--init-sim",
        "--stream",
        "--update-interval",
        "0",
        "--max-frames",
        "30",
        "--refresh-period",
        "0.2",
    )
    assert result.returncode == 0, result.stderr
    assert "simulation started" in result.stdout
    assert "panoseti-daq stream" in result.stdout
    rows = [line for line in result.stdout.splitlines() if "subprocess-node" in line]
    assert any("224" in row and "img16" in row for row in rows), result.stdout
    assert any("224" in row and "ph256" in row for row in rows), result.stdout
    assert "first frame: subprocess-node module 224" in result.stderr


def test_the_table_is_the_default_action(live_server):
    result = cli(live_server, "--no-movie", "--update-interval", "0", "--max-frames", "5")
    assert result.returncode == 0, result.stderr
    assert "panoseti-daq stream" in result.stdout and "ph256" in result.stdout
    assert "img16" not in result.stdout.split("panoseti-daq stream")[-1]


def test_record_writes_frames_the_server_sent(live_server, tmp_path):
    """--record DIR: standard names (R-NAME-1, R-NAME-2); readable by panoseti_daq.pff and the
    observatory's way of reading; each ph256 frame is a frame of the replayed source (R-SIM-4)."""
    out = tmp_path / "rec"
    started = time.monotonic()
    result = cli(live_server, "--record", str(out), "--max-frames", "40")
    assert result.returncode == 0, result.stderr
    # --record streams every frame by default (interval 0, R-STREAM-10): 40 frames of two
    # products at 50 frames/s arrive in well under a second, not one per refresh period.
    assert time.monotonic() - started < 15
    assert f"recorded 40 frames under {out}" in result.stdout
    files = sorted(out.rglob("*.pff"))
    assert files
    source = {json.dumps(hashpipe_header(f.header), sort_keys=True): f.pixels for f in REAL_PH}
    counts = {"img16": 0, "ph256": 0}
    for path in files:
        run = pff.RunDirName.parse(path.parent.name)
        assert run is not None and run.observatory == "RECORD"
        assert path.parent.parent.name == "module_224"
        name = pff.DataFileName.parse(path.name)
        assert name.module == 224 and name.bpp == 2
        product = product_named(name.dp)
        frames = list(pff.iter_frames(path, product))
        observed = read_like_the_observatory(path, product.pixel_bytes)
        assert len(observed) == len(frames)
        counts[name.dp] += len(frames)
        for header, pixels in frames:
            if name.dp == "ph256":
                np.testing.assert_array_equal(pixels, source[json.dumps(header, sort_keys=True)])
    assert counts["img16"] > 0 and counts["ph256"] > 0
    assert sum(counts.values()) == 40


def test_plots_are_written_without_a_display(live_server, tmp_path):
    """R-UI-2, R-UI-3 from the CLI: with no display the plots go to ./panoseti_plots as PNGs
    showing real content (many colours in the previewer, bars in the histogram)."""
    result = cli(
        live_server,
        "--plot-view",
        "--plot-phdist",
        "--update-interval",
        "0",
        "--max-frames",
        "30",
        "--refresh-period",
        "0.3",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    preview = matplotlib.image.imread(tmp_path / "panoseti_plots" / "preview.png")
    phdist = matplotlib.image.imread(tmp_path / "panoseti_plots" / "phdist.png")
    assert preview.shape[1] > preview.shape[0]  # one module: a movie and a PH panel side by side
    colours = np.unique(preview[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 200
    assert len(np.unique(phdist[..., :3].reshape(-1, 3), axis=0)) > 10


def test_ctrl_c_ends_the_stream_cleanly(live_server, tmp_path):
    """Ctrl+C while streaming: the final table, the recording closed, exit 0, no traceback."""
    code, stdout, stderr, out = _record_until_first_frame_then(live_server, tmp_path, signal.SIGINT)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "panoseti-daq stream" in stdout and "recorded" in stdout
    for path in out.rglob("*.pff"):
        name = pff.DataFileName.parse(path.name)
        frames = list(pff.iter_frames(path, product_named(name.dp)))
        assert frames and len(frames) == len(read_like_the_observatory(path, frames[0][1].nbytes))


def test_duration_ends_even_without_frames(live_server):
    """--duration bounds the run when nothing arrives (module 999 does not exist, R-STREAM-6)."""
    started = time.monotonic()
    result = cli(live_server, "--module-ids", "999", "--duration", "1.5")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "0 frames" in result.stdout
    assert 1.5 <= elapsed < 20


def test_two_hosts_get_a_row_each(live_server, tmp_path):
    """R-CLI-6: the streams of every host merged; the table keeps one row per host, named by
    its daq_config address (two servers on one machine share a host name, R-OPS-4)."""
    other = Path(tmp_path / "n2")
    other.mkdir()
    config = {
        "server_name": "second-node",
        "simulate_daq_cfg": {"data_dir": str(other / "sim"), "sim_module_ids": [7]},
    }
    daq, _net, _ = live_server
    first_node = json.loads(daq.read_text())["daq_nodes"][0]
    with server_process(other, "--init-sim", config=config) as (_, port, _uds):
        both = tmp_path / "both.json"
        both.write_text(json.dumps({"daq_nodes": [first_node, {"ip_addr": f"127.0.0.1:{port}"}]}))
        result = cli(
            live_server,
            "--list-hosts",
            "--stream",
            "--update-interval",
            "0.2",
            "--duration",
            "3",
            daq=both,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\tup") == 2
    rows = result.stdout.split("panoseti-daq stream")[-1].splitlines()
    assert any(first_node["ip_addr"] in row and "224" in row for row in rows), result.stdout
    assert any(f"127.0.0.1:{port}" in row and " 7 " in row for row in rows), result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--no-movie", "--no-ph"], "nothing to stream"),
        (["--host", "10.9.9.9"], "not in"),
        (["--refresh-period", "0"], "--refresh-period"),
    ],
)
def test_bad_arguments_exit_2(live_server, args, message):
    result = cli(live_server, *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("content", [None, "{not json", '{"daq_nodes": []}'])
def test_bad_daq_config_exits_2(live_server, tmp_path, content):
    """R-CLI-1: a missing, malformed or empty daq_config: one line naming it, exit 2."""
    path = tmp_path / "daq.json"
    if content is not None:
        path.write_text(content)
    result = cli(live_server, "--list-hosts", daq=path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("panoseti-daq:"), result.stderr


def test_init_with_a_missing_hp_io_config_exits_2(live_server, tmp_path):
    result = cli(live_server, "--init", str(tmp_path / "nope.json"))
    assert result.returncode == 2 and "nope.json" in result.stderr


def test_init_from_an_hp_io_config(live_server, tmp_path):
    """R-UI-1 --init CFG_PATH (R-CFG-2): a refused configuration exits 1 with the server's
    reason (R-INIT-2); a valid one (simulate_daq, R-INIT-8) initialises hp_io."""
    config = {
        "data_dir": str(tmp_path / "nonexistent"),
        "update_interval_seconds": 0.1,
        "force": False,
        "simulate_daq": False,
        "module_ids": [],
        "comments": "refused",
    }
    path = tmp_path / "hp_io_config.json"
    path.write_text(json.dumps(config))
    result = cli(live_server, "--init", str(path))
    assert result.returncode == 1
    # One line for the failed host, with the server's reason, and no summary line after it.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0], result.stderr
    assert "InitHpIo on" in lines[0] and "Traceback" not in result.stderr
    path.write_text(json.dumps({**config, "simulate_daq": True, "force": True}))
    result = cli(live_server, "--init", str(path))
    assert result.returncode == 0, result.stderr
    assert "hp_io initialised" in result.stdout


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"update_intervall_seconds": 0.1}, "update_intervall_seconds"),
        ({"forse": True}, "forse"),
        ({"force": "yes"}, "force"),
        ({"module_ids": "1,2"}, "module_ids"),
        ({"update_interval_seconds": None}, "update_interval_seconds"),
        ({"comments": 3}, "comments"),
    ],
)
def test_init_file_with_a_typo_exits_2_and_sends_nothing(tmp_path, change, key):
    """R-CFG-2: an unknown key, a wrong type or a missing required key in an --init file is one
    line naming the key and the file, exit code 2, and nothing is sent: here the daq_config names
    a port nobody listens on, so a client that connected first would fail with exit 1."""
    config = {
        "data_dir": str(tmp_path),
        "update_interval_seconds": 0.1,
        "force": True,
        "simulate_daq": True,
        "module_ids": [],
        "comments": "typo",
    }
    config.update(change)
    if change.get("update_interval_seconds", 0) is None:
        del config["update_interval_seconds"]
    path = tmp_path / "hp_io_config.json"
    path.write_text(json.dumps(config))
    daq = dead_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "panoseti_daq.cli", str(daq), "--init", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert repr(key) in lines[0] and str(path) in lines[0]


def test_malformed_init_file_names_the_file(tmp_path):
    """R-CFG-2: an --init file that is not JSON names the file; exit code 2."""
    path = tmp_path / "hp_io_config.json"
    path.write_text("{not json")
    result = subprocess.run(
        [sys.executable, "-m", "panoseti_daq.cli", str(dead_config(tmp_path)), "--init", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert result.returncode == 2 and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _record_until_first_frame_then(live_server, tmp_path, sig):
    daq, net, _ = live_server
    out = tmp_path / "rec"
    process = subprocess.Popen(
        command(daq, net, "--record", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "first frame:" in line:
                break
        assert "first frame:" in "".join(seen), "".join(seen)
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stdout, stderr, out


def test_sigterm_ends_the_stream_like_ctrl_c(live_server, tmp_path):
    """SIGTERM (systemd, `timeout`, batch jobs) is treated as SIGINT: the final table is
    printed, the recording is closed complete (every frame the table counted is in the files,
    each file whole), exit 0, no traceback."""
    code, stdout, stderr, out = _record_until_first_frame_then(
        live_server, tmp_path, signal.SIGTERM
    )
    assert code == 0, stderr
    assert "Traceback" not in stderr
    final = [line for line in stdout.splitlines() if line.startswith("panoseti-daq stream")][-1]
    counted = int(final.split(" frames")[0].rsplit(" ", 1)[-1])
    assert f"recorded {counted} frames under {out}" in stdout
    on_disk = 0
    for path in out.rglob("*.pff"):
        name = pff.DataFileName.parse(path.name)
        frames = list(pff.iter_frames(path, product_named(name.dp)))
        assert frames and len(frames) == len(read_like_the_observatory(path, frames[0][1].nbytes))
        on_disk += len(frames)
    assert on_disk == counted > 0


def test_piped_output_is_plain_lines_and_logs_one_line_per_record(live_server):
    """Into a pipe: the table as plain lines (no box drawing, nothing cut to "…"), and log
    records on stderr as one line each with an ISO 8601 UTC time."""
    import re

    env = {**ENV, "COLUMNS": "80"}
    daq, net, tmp = live_server
    result = subprocess.run(
        command(
            daq, net, "--update-interval", "0", "--max-frames", "20", "--refresh-period", "0.2"
        ),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp,
    )
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout and "━" not in result.stdout and "─" not in result.stdout
    rows = [line for line in result.stdout.splitlines() if "module 224" in line]
    assert rows and all("frames=" in row and "lost=" in row for row in rows)
    first = [line for line in result.stderr.splitlines() if "first frame:" in line]
    assert len(first) == 1
    assert re.match(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO panoseti_daq\.cli: first frame: "
        r"subprocess-node module 224 \w+$",
        first[0],
    ), first[0]


def test_terminal_table_fits_80_columns(live_server):
    """On an 80-column terminal (a pty) the live table fits: no line wider than 80 and no cell
    cut to "…"."""
    import fcntl
    import pty
    import re
    import struct
    import termios

    daq, net, tmp = live_server
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    env = {k: v for k, v in ENV.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm"
    process = subprocess.Popen(
        command(
            daq, net, "--update-interval", "0", "--max-frames", "60", "--refresh-period", "0.2"
        ),
        stdout=slave,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break  # the child closed the terminal
            if not data:
                break
            chunks.append(data)
        process.wait(timeout=60)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stderr.read()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    screen = text.split("panoseti-daq stream")[-1]
    lines = [line.rstrip() for line in screen.replace("\r", "\n").splitlines() if line.strip()]
    assert any("img16" in line for line in lines) and any("ph256" in line for line in lines)
    assert "…" not in screen, screen
    assert max(len(line) for line in lines) <= 80, screen


def test_plot_phdist_streams_every_frame_by_default(live_server, tmp_path):
    """R-UI-3: --plot-phdist accumulates every frame (interval 0, like --record), not one per
    refresh: 40 frames at the simulation's 50 frames/s arrive well before 40 refresh periods."""
    started = time.monotonic()
    result = cli(
        live_server, "--plot-phdist", "--max-frames", "40", "--refresh-period", "1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "never published" in result.stdout  # the explanation of an interval-0 stream
    assert time.monotonic() - started < 20
    assert (tmp_path / "panoseti_plots" / "phdist.png").stat().st_size > 5_000
