"""Where a relayed frame's CPU goes: per-frame counts and a sampling profile of our server.

    python -m benchmarks._profile_relay [--socket] [--seconds S] [--py-spy] [--top N]

Runs our server (trio) under `benchmarks._counting_server` with the grpcio load generator at
3,000 img16 frames/s and one grpcio interval-0 viewer (`--socket`: the frames come through
Hashpipe's Unix-socket ingest instead of a grpcio uploader), and prints one JSON line: the
load generator's figures (server CPU and system calls per frame, see benchmarks/cpu.py), per
frame that entered the hub the h2 events, bytes-in calls and DATA sends, and with `--py-spy`
(py-spy on PATH or beside this Python) the functions the server's samples were in over the
measured part, top N by own samples and by samples including callees. Samples waiting for
events (epoll, idle worker threads) are left out; a sample is wall-clock time the thread was
not idle, so a system call that wakes another process on a shared CPU (a loopback send) can
count time spent preempted. Not a benchmark `make bench` runs (the name starts with `_`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._process import ROOT
from benchmarks.cpu import RATE_HZ, WARMUP, _socket_config
from benchmarks.grpcio_e2e import server

_IDLE = ("EpollIOManager.get_events", "WorkerThread._work", "Condition.wait", "Thread.run")


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def top_functions(raw: str, top: int) -> dict[str, Any]:
    """Own and inclusive shares of the non-idle samples of py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [frame.split(" (")[0] for frame in stack.split(";")]
        if not frames or frames[-1].startswith(_IDLE):
            continue
        count = int(count_text)
        busy += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    share = {name: round(100 * n / max(busy, 1), 1) for name, n in own.most_common(top)}
    return {
        "busy_samples": busy,
        "own_percent": share,
        "inclusive_percent": {
            name: round(100 * n / max(busy, 1), 1) for name, n in inclusive.most_common(top + 12)
        },
    }


def profile(socket_feed: bool, seconds: float, py_spy: bool, top: int) -> dict[str, Any]:
    images = int(RATE_HZ * seconds)
    spy = _py_spy() if py_spy else None
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        counts_file = tmp / "counts.json"
        os.environ["PANOSETI_COUNTS_FILE"] = str(counts_file)
        config = _socket_config(tmp) if socket_feed else {}
        with server("ours_trio", tmp, serve_module="benchmarks._counting_server", **config) as (
            pid,
            port,
            data_dir,
            _,
        ):
            cmd = [sys.executable, "-m", "benchmarks.grpcio_load", "--port", str(port)]
            cmd += ["--server-pid", str(pid), "--rate", str(RATE_HZ), "--count-syscalls"]
            cmd += ["--announce"]
            cmd += ["--images", str(images), "--warmup", str(WARMUP)]
            cmd += ["--init-data-dir", data_dir]
            if socket_feed:
                cmd += ["--uds-feed", str(tmp / "hashpipe.dp_img16.sock")]
            load = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            sampled = ""
            assert load.stdout is not None
            if load.stdout.readline().strip() != "measuring":
                raise RuntimeError("the grpcio load generator failed before measuring")
            if spy:
                raw = tmp / "samples.txt"
                duration = str(max(1, int(seconds / 2)))
                record = ["record", "-r", "250", "-d", duration, "-f", "raw", "--idle"]
                subprocess.run(
                    [spy, *record, "--nonblocking", "-o", str(raw), "-p", str(pid)],
                    check=True,
                    capture_output=True,
                )
                sampled = raw.read_text()
            out, _ = load.communicate(timeout=300)
            if load.returncode:
                raise RuntimeError("the grpcio load generator failed")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        counted = json.loads(counts_file.read_text())
    frames = max(counted.pop("frames_into_hub", 0), 1)
    result["per_frame_into_hub"] = {name: round(n / frames, 3) for name, n in counted.items()}
    result["path"] = "socket" if socket_feed else "relay"
    if sampled:
        result["py_spy"] = top_functions(sampled, top)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks._profile_relay", description=__doc__
    )
    parser.add_argument("--socket", action="store_true", help="Hashpipe's socket, not uploads")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--py-spy", action="store_true", help="sample with py-spy")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    print(json.dumps(profile(args.socket, args.seconds, args.py_spy, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
