"""The CLI and the client as an operator meets them at night (R-OPS-4): errors that name what
was given and what would be valid, module ranges, a hint for modules that never come, a closed
pipe, quiet debug logs; plus the client used without `async with` and the live table's counts
(spec §14, §16)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from panoseti_daq import AsyncDaqClient, PanoFrame
from panoseti_daq.cli import parse_args
from panoseti_daq.viewer.live_table import LiveTable
from tests.helpers import movie_frame, ph_frame
from tests.test_cli import ENV, cli, dead_config

# The CLI runs as a process against the module's live simulated server.
pytestmark = pytest.mark.timeout(60)

RULE_ID = re.compile(r"\bR-[A-Z]+-\d+")


def test_host_not_in_the_file_lists_the_hosts_there(live_server, tmp_path):
    """R-OPS-4: `--host X is not in F; hosts there: a, b`, said before any node is pinged
    (a typo used to come after a warning for each node that was down)."""
    dead = dead_config(tmp_path)
    result = cli(live_server, "--host", "127.0.0.1:1", "--ping", daq=dead)
    assert result.returncode == 2
    assert result.stderr.startswith(f"panoseti-daq: --host 127.0.0.1:1 is not in {dead}; "), (
        result.stderr
    )
    assert "is down" not in result.stderr
    daq, _, _ = live_server
    host = json.loads(daq.read_text())["daq_nodes"][0]["ip_addr"]
    result = cli(live_server, "--host", "127.0.0.1", "--ping")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"panoseti-daq: --host 127.0.0.1 is not in {daq}; hosts there: {host}"
    )


def test_module_ids_take_the_daq_config_forms():
    """R-OPS-4: "1-4,7" as daq_config writes it, ids, or both; nonsense is refused."""
    args = ["daq.json", "--module-ids", "1-4,7", "9"]
    assert parse_args(args).module_ids == [1, 2, 3, 4, 7, 9]
    assert parse_args(["daq.json", "--module-ids", "3", "1"]).module_ids == [1, 3]
    result = subprocess.run(
        [sys.executable, "-m", "panoseti_daq.cli", "d.json", "--module-ids", "1-x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--module-ids 1-x: not a module id or range" in result.stderr
    assert "1-4,7" in result.stderr


@pytest.mark.timeout(90)
def test_a_listed_module_that_never_sends_is_named_once(live_server):
    """R-OPS-4: `--module-ids 999` (no such module) used to stream nothing for ever, silently;
    after 10 s one warning names it and the modules that do arrive."""
    started = time.monotonic()
    result = cli(live_server, "--module-ids", "999", "224", "--duration", "11.5", timeout=80)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 11.5
    hints = [line for line in result.stderr.splitlines() if "no frame of module" in line]
    assert len(hints) == 1, result.stderr
    assert "no frame of module 999 in 10 s" in hints[0] and "modules received: 224" in hints[0]


def test_output_into_a_closed_pipe_ends_quietly(live_server):
    """R-OPS-4: `panoseti-daq cfg | head -3` ended with "[Errno 32] Broken pipe", exit 1."""
    daq, net, tmp = live_server
    process = subprocess.Popen(
        [sys.executable, "-m", "panoseti_daq.cli", str(daq), str(net), "--refresh-period", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=tmp,
    )
    lines = [process.stdout.readline() for _ in range(3)]
    assert all(lines), lines
    process.stdout.close()  # as `head -3` does
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err, err


def test_debug_logs_are_ours_not_the_http2_librarys(live_server):
    """R-OPS-4: `--log-level debug` no longer floods the screen with hpack internals."""
    result = cli(live_server, "--list-hosts", "--log-level", "debug")
    assert result.returncode == 0, result.stderr
    assert "hpack" not in result.stderr and " h2." not in result.stderr, result.stderr[:2000]


def test_list_hosts_fails_when_every_host_is_down_and_says_so_once(live_server, tmp_path):
    """R-OPS-4: it exited 0 and logged each "is down" twice."""
    result = cli(live_server, "--list-hosts", daq=dead_config(tmp_path))
    assert result.returncode == 1
    assert "\tdown" in result.stdout
    assert result.stderr.count("is down") == 1, result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "panoseti_daq.cli", "--help"],
        ["-m", "panoseti_daq.serve", "--help"],
        ["-m", "panoseti_daq.replay", "--help"],
        ["-m", "panoseti_daq.demo", "--help"],
        [str(Path(__file__).parents[1] / "examples" / "visualize.py"), "--help"],
    ],
)
def test_help_texts_name_no_rule_ids(argv):
    """Rule IDs belong in comments, tests and docs, not in what users read."""
    result = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=30, env=ENV
    )
    assert result.returncode == 0, result.stderr
    assert not RULE_ID.search(result.stdout), result.stdout


def test_visualize_writes_its_png_where_asked(live_server, tmp_path):
    """`examples/visualize.py --png DIR`, as its docstring says, was refused by its parser."""
    daq, net, _ = live_server
    script = Path(__file__).parents[1] / "examples" / "visualize.py"
    result = subprocess.run(
        [
            *(sys.executable, str(script), str(daq), str(net)),
            *("--max-frames", "2", "--png", str(tmp_path / "pngs")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pngs" / "preview.png").stat().st_size > 0


@pytest.mark.anyio
async def test_the_async_client_outside_async_with_says_so():
    """R-CLI-8: without `async with`, the clear message itself, not an ExceptionGroup around
    it."""
    client = AsyncDaqClient({"daq_nodes": [{"ip_addr": "127.0.0.1:1"}]})
    for call in (
        client.get_daq_host_status,
        client.get_valid_daq_hosts,
        lambda: client.init_sim(),
        lambda: client.init_hp_io(None, {"update_interval_seconds": 1}),
        lambda: client.ping("127.0.0.1:1"),
    ):
        with pytest.raises(RuntimeError, match=r"inside `async with AsyncDaqClient"):
            await call()


def _socket_frame(module: int, number: int) -> PanoFrame:
    """A frame as the Hashpipe socket ingest names it: the connection, and its own count."""
    frame = movie_frame(module, 0)
    return PanoFrame(frame.product, frame.header, frame.pixels, module, "uds:img16", number)


def test_socket_frames_mixed_with_scanned_ones_are_not_skips():
    """R-CLI-10: numbers of socket frames count one connection's frames; two connections (or
    scanned frames between them) are no gap. It showed skip=2750 when nothing was skipped."""
    table = LiveTable()
    table.update(_socket_frame(1, 2750), 0.0)
    table.update(movie_frame(1, 3), 0.1)
    table.update(_socket_frame(1, 0), 0.2)
    table.update(_socket_frame(1, 2751), 0.3)
    table.update(_socket_frame(1, 5), 0.4)
    assert table.rows[("", 1, "img16")].skipped == 0


def test_the_title_gives_the_dates_when_rows_differ():
    """The table's times of day need a date: rows of several days (the simulation's movie and
    pulse-height data) show the range in the title instead of none."""
    table = LiveTable()
    movie, ph = movie_frame(1, 0), ph_frame(1, 0)
    table.update(movie, 0.0)
    table.update(ph, 0.1)
    days = sorted(f"{f.time.pandas_timestamp:%Y-%m-%d}" for f in (movie, ph))
    assert days[0] != days[1]
    assert f"UTC {days[0]}..{days[1]}" in table.heading(0.2)


def test_replay_names_the_file_and_the_socket(tmp_path):
    """R-UDS-1: a missing file is named (it said "no dp_ field in the name"); a socket nobody
    listens on is named with the file (it said "[Errno 2] No such file or directory")."""
    from panoseti_daq._bundled import NGC7331_PH256

    def replay(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "panoseti_daq.replay", *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )

    result = replay("capture.pff")
    assert result.returncode == 1
    assert result.stderr.strip() == "replay: capture.pff: no such file"
    template = str(tmp_path / "none.{dp_name}.sock")
    result = replay("--socket-template", template, str(NGC7331_PH256))
    assert result.returncode == 1
    assert f"cannot connect to {tmp_path / 'none.ph256.sock'}" in result.stderr
    assert str(NGC7331_PH256) in result.stderr


def test_the_title_stays_one_line_in_80_columns():
    """In an 80-column terminal the title with a date range wrapped onto a second line."""
    import io

    from rich.console import Console

    table = LiveTable("panoseti-daq stream")
    table.update(movie_frame(224, 0), 0.0, host="node-1")
    table.update(ph_frame(224, 0), 0.1, host="node-1")
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(table.render(8.0))
    first = console.export_text().splitlines()[0]
    assert first.strip() == table.heading(8.0), first
