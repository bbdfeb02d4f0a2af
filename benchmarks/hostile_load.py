"""Healthy viewers beside a hostile peer (spec section 15, R-PEER-1 .. R-PEER-5).

    python -m benchmarks.hostile_load [--seconds S] [--viewers N] [--rate HZ]
    python -m benchmarks.hostile_load --attack PORT --seconds S   (the hostile peer itself)

Our server (trio, default limits) gets img16 uploads at `--rate` images/s from the grpcio load
generator (benchmarks/grpcio_load.py); `--viewers` grpcio StreamImages viewers with default
settings (interval 0: every frame) read them. After a calm phase of S seconds, a hostile peer in
its own process (grpcio and raw sockets, not our code) runs for S seconds beside them:
ATTACK_UPLOADERS threads that upload maximum-size messages (a header string filling
`max_message_bytes`, which the server takes in and refuses, R-PEER-2) and messages twice that
size (refused from their length prefix, R-PEER-1) one after the other, and IDLE_CONNECTIONS TCP
connections that never send the HTTP/2 preface, opened again as the server closes them
(R-PEER-3). Scenario:
  h_hostile_load: per phase (calm, attack), the healthy viewers' frames lost (gaps in the
      frame numbers; target 0), their stall p99 and max (the gap between two frames, ms;
      target p99 <= 100 ms), the attacks made; the server's idle RSS, its peak RSS and the
      bound of R-PEER-5 (2 x idle RSS + max_concurrent_rpcs x max_message_bytes).
`make bench` runs 10 s phases; `make soak` runs 120 s phases.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks._process import ROOT
from benchmarks.grpcio_e2e import server
from benchmarks.grpcio_load import pb2, read_reply

SECONDS = 10.0
VIEWERS = 3
RATE_HZ = 1000
ATTACK_UPLOADERS = 4
IDLE_CONNECTIONS = 500
# The server's defaults (config.py): what the bound of R-PEER-5 is computed with.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_CONCURRENT_RPCS = 100
MIB = 1024 * 1024


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


class Viewer:
    """A grpcio viewer with default settings: frame numbers and arrival times, by phase."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.phase = "warmup"
        self.arrivals: dict[str, list[tuple[float, int]]] = {}
        self.error: str | None = None
        self._call: Any = None
        self._closing = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        request = pb2.StreamImagesRequest(
            stream_movie_data=True, stream_pulse_height_data=True, update_interval_seconds=0.0
        ).SerializeToString()
        stream = self.channel.unary_stream("/daqdata.DaqData/StreamImages")
        deadline = time.monotonic() + 120
        while True:  # until InitHpIo (by the load generator) makes hp_io valid
            self._call = stream(request)
            try:
                for data in self._call:
                    _, number, _ = read_reply(data)
                    self.arrivals.setdefault(self.phase, []).append((time.monotonic(), number))
                return
            except grpc.RpcError as exc:
                if self._closing:
                    return
                # During the warm-up: before the load generator's InitHpIo, ended by it
                # (force=true), or idle while it builds its payloads.
                if self.phase != "warmup" or time.monotonic() > deadline:
                    self.error = f"{exc.code().name}: {exc.details()}"
                    return
                time.sleep(0.05)

    def summary(self, phase: str) -> tuple[int, int, list[float]]:
        """(frames, frames lost, gaps in ms) of one phase."""
        seen = self.arrivals.get(phase, [])
        numbers = np.array([n for _, n in seen])
        times = np.array([t for t, _ in seen])
        lost = int(np.clip(np.diff(numbers) - 1, 0, None).sum()) if len(seen) > 1 else 0
        return len(seen), lost, list(np.diff(times) * 1e3)

    def close(self) -> None:
        self._closing = True
        if self._call is not None:
            self._call.cancel()
        self._thread.join(10)
        self.channel.close()


# --- the hostile peer (its own process) -------------------------------------------------------


def _upload_request(message_bytes: int) -> bytes:
    """UploadImageRequest bytes of a ph256 image padded to just under `message_bytes`."""
    image = pb2.PanoImage(
        type=pb2.PanoImage.PULSE_HEIGHT,
        image_array=list(range(256)),
        shape=[16, 16],
        bytes_per_pixel=2,
        module_id=99,
    )
    image.header.update({"padding": ""})
    size = len(pb2.UploadImageRequest(pano_image=image).SerializeToString())
    # Each of the five enclosing lengths grows by a few bytes of varint with the padding.
    image.header.update({"padding": "x" * (message_bytes - size - 5 * 4)})
    data = pb2.UploadImageRequest(pano_image=image).SerializeToString()
    assert message_bytes - 5 * 4 <= len(data) <= message_bytes, len(data)
    return data


def attack(port: int, seconds: float) -> dict[str, Any]:
    """Maximum-size uploads and idle connections against 127.0.0.1:`port` for `seconds`."""
    target = f"127.0.0.1:{port}"
    largest = _upload_request(MAX_MESSAGE_BYTES)
    too_large = _upload_request(2 * MAX_MESSAGE_BYTES)
    assert len(largest) <= MAX_MESSAGE_BYTES < len(too_large)
    end = time.monotonic() + seconds
    counts = {"refused_largest": 0, "refused_too_large": 0, "accepted": 0, "other": 0}
    lock = threading.Lock()

    def uploader() -> None:
        with grpc.insecure_channel(target) as channel:
            upload = channel.stream_unary("/daqdata.DaqData/UploadImages")
            n = 0
            while time.monotonic() < end:
                message = largest if n % 2 == 0 else too_large
                n += 1
                try:
                    upload(iter([message]), timeout=30)
                    key = "accepted"
                except grpc.RpcError as exc:
                    key = {
                        grpc.StatusCode.INVALID_ARGUMENT: "refused_largest",
                        grpc.StatusCode.RESOURCE_EXHAUSTED: "refused_too_large",
                    }.get(exc.code(), "other")
                with lock:
                    counts[key] += 1

    idle: list[socket.socket] = []
    reopened = 0
    threads = [threading.Thread(target=uploader) for _ in range(ATTACK_UPLOADERS)]
    for thread in threads:
        thread.start()
    while time.monotonic() < end:
        for sock in [s for s in idle if _closed(s)]:
            idle.remove(sock)
            sock.close()
            reopened += 1
        while len(idle) < IDLE_CONNECTIONS:
            idle.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.2)
    for thread in threads:
        thread.join()
    for sock in idle:
        sock.close()
    return {**counts, "idle_connections": IDLE_CONNECTIONS, "idle_closed_by_server": reopened}


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# --- the scenario -----------------------------------------------------------------------------


def scenario(seconds: float = SECONDS, viewers: int = VIEWERS, rate: int = RATE_HZ) -> dict:
    with (
        tempfile.TemporaryDirectory(dir="/tmp") as tmp,
        server("ours_trio", Path(tmp)) as (pid, port, data_dir, _metrics),
    ):
        time.sleep(1.0)  # settled after start
        idle_rss_kib = _kib(pid, "VmRSS")
        images = int(rate * (2 * seconds + 20))
        cmd = [sys.executable, "-m", "benchmarks.grpcio_load", "--port", str(port)]
        cmd += ["--images", str(images), "--rate", str(rate), "--no-subscriber"]
        cmd += ["--init-data-dir", data_dir]
        uploader = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
        healthy = [Viewer(f"127.0.0.1:{port}") for _ in range(viewers)]
        try:
            # Until the uploader runs at its rate (it builds every payload first) and every
            # viewer receives: 1 s of frames.
            deadline = time.monotonic() + 120
            while any(len(v.arrivals.get("warmup", [])) < rate for v in healthy):
                if time.monotonic() > deadline:
                    errors = [v.error for v in healthy]
                    raise RuntimeError(f"the viewers get no frames (errors: {errors})")
                time.sleep(0.1)
            for viewer in healthy:
                viewer.phase = "calm"
            time.sleep(seconds)
            calm_peak_kib = _kib(pid, "VmHWM")
            attack_cmd = [sys.executable, "-m", "benchmarks.hostile_load"]
            attack_cmd += ["--attack", str(port), "--seconds", str(seconds)]
            for viewer in healthy:
                viewer.phase = "attack"
            attacker = subprocess.run(
                attack_cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120
            )
            for viewer in healthy:
                viewer.phase = "after"
            if attacker.returncode != 0:
                raise RuntimeError(f"the attacker failed: {attacker.stderr}")
            peak_kib = _kib(pid, "VmHWM")
            time.sleep(2.0)
            after_rss_kib = _kib(pid, "VmRSS")
        finally:
            for viewer in healthy:
                viewer.close()
            uploader.kill()
            uploader.wait()
    result: dict[str, Any] = {
        "scenario": "h_hostile_load",
        "viewers": viewers,
        "rate_hz": rate,
        "seconds_per_phase": seconds,
        "viewer_errors": [v.error for v in healthy if v.error],
        "attacks_made": json.loads(attacker.stdout),
    }
    for phase in ("calm", "attack"):
        frames = lost = 0
        gaps: list[float] = []
        for viewer in healthy:
            seen, missing, phase_gaps = viewer.summary(phase)
            frames, lost, gaps = frames + seen, lost + missing, gaps + phase_gaps
        result[phase] = {
            "frames": frames,
            "frames_lost": lost,
            "stall_p99_ms": float(np.percentile(gaps, 99)) if gaps else None,
            "stall_max_ms": float(max(gaps)) if gaps else None,
        }
    bound_kib = 2 * idle_rss_kib + MAX_CONCURRENT_RPCS * MAX_MESSAGE_BYTES // 1024
    result["server_rss_mb"] = {
        "idle": idle_rss_kib / 1024,
        "peak_calm": calm_peak_kib / 1024,
        "peak": peak_kib / 1024,
        "after": after_rss_kib / 1024,
        "bound": bound_kib / 1024,
    }
    result["stall_p99_attack_vs_calm"] = (
        result["attack"]["stall_p99_ms"] / result["calm"]["stall_p99_ms"]
        if result["calm"]["stall_p99_ms"]
        else None
    )
    return result


def run() -> Iterator[dict[str, Any]]:
    yield scenario()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile_load", description=__doc__)
    parser.add_argument("--seconds", type=float, default=SECONDS, help="per phase")
    parser.add_argument("--viewers", type=int, default=VIEWERS)
    parser.add_argument("--rate", type=int, default=RATE_HZ)
    parser.add_argument("--attack", type=int, metavar="PORT", help="be the hostile peer")
    args = parser.parse_args(argv)
    if args.attack is not None:
        print(json.dumps(attack(args.attack, args.seconds)), flush=True)
        return 0
    print(json.dumps(scenario(args.seconds, args.viewers, args.rate)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
