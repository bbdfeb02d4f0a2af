"""A viewer slower than the data, on our blocking client: how old are the frames it sees?

A grpcio load generator (benchmarks/grpcio_load.py) uploads img16 images at 3,000/s with a
`send_ns` header key to our server on trio; a `DaqClient` interval-0 viewer takes 2 ms per
frame (~450 frames/s: a live plot), and reads each frame's age (receipt time - `send_ns`) and
the "dropped N frames" notices. The viewer's HTTP/2 receive window (`http2_window_bytes`) is
ours by default (256 KiB) beside grpclib's default (4 MiB), run in turns. Scenario:
  h_slow_viewer: per window, the age of the frames seen (p50 and max over the last 3 s of 8,
      once the backlog has settled), frames seen per second and frames announced dropped.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._process import ROOT
from benchmarks.grpcio_e2e import GRPCLIB_DEFAULT_WINDOW, server
from panoseti_daq import DaqClient

UPLOAD_RATE_HZ = 3000
VIEWER_SECONDS_PER_FRAME = 0.002
SECONDS = 8.0
SETTLED_AFTER_S = 5.0
REPEATS = 2


def view(window_bytes: int) -> dict[str, Any]:
    """One run: a fresh server, the uploader, and the slow viewer with `window_bytes`."""
    images = int(UPLOAD_RATE_HZ * (SECONDS + 10))
    with (
        tempfile.TemporaryDirectory(dir="/tmp") as tmp,
        server("ours_trio", Path(tmp)) as (_pid, port, data_dir, _metrics),
    ):
        cmd = [sys.executable, "-m", "benchmarks.grpcio_load", "--port", str(port)]
        cmd += ["--images", str(images), "--rate", str(UPLOAD_RATE_HZ), "--send-ns"]
        cmd += ["--no-subscriber", "--init-data-dir", data_dir]
        uploader = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
        try:
            node = {"daq_nodes": [{"ip_addr": f"127.0.0.1:{port}"}]}
            ages: list[tuple[float, float]] = []
            dropped = 0
            with (
                DaqClient(node, http2_window_bytes=window_bytes) as client,
                client.stream_images(update_interval_seconds=0.0, wait_for_ready=True) as stream,
            ):
                start = None
                for frame in stream:
                    sent_ns = frame["header"].get("send_ns")
                    if sent_ns is None:
                        continue
                    now = time.monotonic()
                    start = now if start is None else start
                    if now - start > SECONDS:
                        break
                    ages.append((now - start, (time.time_ns() - sent_ns) / 1e6))
                    dropped += frame["dropped_before"]
                    time.sleep(VIEWER_SECONDS_PER_FRAME)
        finally:
            uploader.kill()
            uploader.wait()
    settled = np.array([age for at, age in ages if at >= SETTLED_AFTER_S])
    return {
        "http2_window_bytes": window_bytes,
        "age_p50_ms": float(np.percentile(settled, 50)),
        "age_max_ms": float(settled.max()),
        "seen_per_s": len(ages) / SECONDS,
        "dropped_announced": dropped,
    }


def run() -> Iterator[dict[str, Any]]:
    windows = {"ours_default": 256 * 1024, "grpclib_default": GRPCLIB_DEFAULT_WINDOW}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in windows}
    for _ in range(REPEATS):
        for name, window in windows.items():
            runs[name].append(view(window))
    result: dict[str, Any] = {"scenario": "h_slow_viewer", "product": "img16"}
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r["age_p50_ms"])
        result[name] = ordered[len(ordered) // 2] | {
            "age_p50_ms_runs": [r["age_p50_ms"] for r in results]
        }
    result["ratio_age_p50_ours_vs_grpclib_default"] = (
        result["ours_default"]["age_p50_ms"] / result["grpclib_default"]["age_p50_ms"]
    )
    yield result
