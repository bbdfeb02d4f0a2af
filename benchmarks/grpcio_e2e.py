"""End to end with the clients users run: a grpcio load generator in its own process.

The load generator (`benchmarks/grpcio_load.py`) uploads protobuf-encoded img16 images with
Hashpipe's header layout and subscribes with a grpcio interval-0 StreamImages client that
decodes with protobuf. Servers: ours on the trio backend (the default), ours on asyncio, and the
grpcio reference server (`benchmarks/_reference_server.py`), one after another in one run, each
a subprocess on loopback TCP with our default configuration (queues of `max_read_queue_size`
frames), except that a reader falling behind is never ended, so that lost frames are counted
rather than streams cut off. The machine is shared and noisy: each server's line is its run with
the median main figure of three taken in turns with the others (every run's is listed). Scenarios:
  e_grpcio_upload_only: uploaded/s with no subscriber, and server CPU per 1000 uploads;
  e_grpcio_client: uploaded/s, delivered/s, lost frames and server CPU per 1000 delivered images
      with one subscriber, with Hashpipe's header and with one extra key (`send_ns`);
  f_saturation: the uploader as fast as it can with `send_ns` stamps: upload-to-receipt p50/p99
      and throughput, ours with its bounded HTTP/2 window (`http2_window_bytes`) beside ours with
      grpclib's default 4 MiB windows; for ours also the server's share (`server_delay_*`: how
      long frames waited in the server, from its send-delay metric), the rest being the
      network and the subscriber's own buffers;
  g_latency_1000: the same at 1,000 images/s.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._process import ROOT, running
from panoseti_daq.server.process import free_port

SERVERS = ("ours_trio", "ours_asyncio", "grpcio")
TARGET_IMG16_PER_S = 10_000
TARGET_SATURATION_P99_MS = 50.0
TARGET_1000_P99_MS = 2.0
GRPCLIB_DEFAULT_WINDOW = 4 * 2**20
REPEATS = 3


@contextlib.contextmanager
def server(
    kind: str, tmp: Path, serve_module: str = "panoseti_daq.serve", **config: Any
) -> Iterator[tuple[int, int, str, int]]:
    """(pid, port, data_dir for InitHpIo or "", metrics port or 0) of a running server of
    `kind`; ours serves its Prometheus metrics, started as `python -m serve_module`."""
    port = free_port()
    data_dir = ""
    metrics_port = 0
    if kind == "grpcio":
        cmd = [sys.executable, "-m", "benchmarks._reference_server", "--port", str(port)]
        # The reference drops for a full queue of this size, like ours by default.
        cmd += ["--queue-size", "50"]
    else:
        run = tmp / "data" / "module_1" / "obs_BENCH"
        run.mkdir(parents=True, exist_ok=True)
        (run / "module_1.daq-active").touch()
        data_dir = str(tmp / "data")
        metrics_port = free_port()
        settings = {
            "allowed_data_roots": [str(tmp)],
            "daq_active_check": ["marker"],
            "max_reader_enqueue_timeouts": 1_000_000,
            "simulate_daq_cfg": {"data_dir": str(tmp / "sim")},
            "metrics_port": metrics_port,
            **config,
        }
        path = tmp / "bench_config.json"
        path.write_text(json.dumps(settings))
        cmd = [sys.executable, "-m", serve_module, "--config", str(path)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--uds", ""]
        cmd += ["--log-level", "warning", "--backend", kind.removeprefix("ours_")]
    with running(cmd, port, kind) as process:
        yield process.pid, port, data_dir, metrics_port


def load(kind: str, *args: str, **config: Any) -> dict[str, Any]:
    """One run of the grpcio load generator against a fresh server of `kind`."""
    with (
        tempfile.TemporaryDirectory(dir="/tmp") as tmp,
        server(kind, Path(tmp), **config) as (pid, port, data_dir, metrics_port),
    ):
        cmd = [sys.executable, "-m", "benchmarks.grpcio_load", "--port", str(port)]
        cmd += ["--server-pid", str(pid), *args]
        if data_dir:
            cmd += ["--init-data-dir", data_dir]
        if metrics_port:
            cmd += ["--metrics-port", str(metrics_port)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise RuntimeError(f"grpcio load generator failed against {kind}: {out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def interleaved(
    kinds: dict[str, dict[str, Any]], metric: str, *args: str, repeats: int = REPEATS
) -> dict[str, dict[str, Any]]:
    """Per kind (name: server config), the run with the median `metric` of `repeats` runs,
    taken in turns (kind A, kind B, ..., A, B, ...) so that the machine's load falls on all
    alike; each result lists every run's `metric` (and delivered/s) under `<name>_runs`."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in kinds}
    for _ in range(repeats):
        for name, config in kinds.items():
            server_kind = config.get("kind", name)
            settings = {k: v for k, v in config.items() if k != "kind"}
            runs[name].append(load(server_kind, *args, **settings))
    out = {}
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r[metric])
        out[name] = ordered[len(ordered) // 2]
        for listed in (metric, "delivered_per_s"):
            if listed in results[0]:
                out[name][f"{listed}_runs"] = [r[listed] for r in results]
    return out


ALL_SERVERS: dict[str, dict[str, Any]] = {kind: {} for kind in SERVERS}


def upload_only(images: int = 20000) -> dict[str, Any]:
    results = interleaved(ALL_SERVERS, "uploaded_per_s", "--images", str(images), "--no-subscriber")
    reference = results["grpcio"]["uploaded_per_s"]
    return {
        "scenario": "e_grpcio_upload_only",
        "product": "img16",
        **results,
        "ratio_trio_vs_grpcio": results["ours_trio"]["uploaded_per_s"] / reference,
        "ratio_trio_vs_asyncio": results["ours_trio"]["uploaded_per_s"]
        / results["ours_asyncio"]["uploaded_per_s"],
    }


def with_subscriber(send_ns: bool, images: int = 20000) -> dict[str, Any]:
    extra = ["--send-ns"] if send_ns else []
    results = interleaved(ALL_SERVERS, "delivered_per_s", "--images", str(images), *extra)
    trio, asyncio_ = results["ours_trio"], results["ours_asyncio"]
    return {
        "scenario": "e_grpcio_client",
        "product": "img16",
        "header": "hashpipe + send_ns" if send_ns else "hashpipe",
        **results,
        "ratio_trio_vs_asyncio_delivered": trio["delivered_per_s"] / asyncio_["delivered_per_s"],
        "ratio_trio_vs_grpcio_delivered": trio["delivered_per_s"]
        / results["grpcio"]["delivered_per_s"],
        "target_trio_lossless_per_s": TARGET_IMG16_PER_S,
    }


def saturation(images: int = 20000) -> dict[str, Any]:
    kinds = {
        "ours_trio": {},
        "ours_trio_grpclib_default_window": {
            "kind": "ours_trio",
            "http2_window_bytes": GRPCLIB_DEFAULT_WINDOW,
        },
        "ours_asyncio": {},
        "grpcio": {},
    }
    results = interleaved(kinds, "p99_ms", "--images", str(images), "--send-ns")
    bounded, default = results["ours_trio"], results["ours_trio_grpclib_default_window"]
    return {
        "scenario": "f_saturation",
        "product": "img16",
        **results,
        "ratio_p99_bounded_vs_default_window": bounded["p99_ms"] / default["p99_ms"],
        "ratio_delivered_bounded_vs_default_window": bounded["delivered_per_s"]
        / default["delivered_per_s"],
        "target_p99_ms": TARGET_SATURATION_P99_MS,
    }


def latency_1000(seconds: float = 5.0) -> dict[str, Any]:
    args = ("--images", str(int(1000 * seconds)), "--rate", "1000", "--send-ns")
    results = interleaved(ALL_SERVERS, "p99_ms", *args)
    return {
        "scenario": "g_latency_1000",
        "product": "img16",
        **results,
        "ratio_p99_trio_vs_grpcio": results["ours_trio"]["p99_ms"] / results["grpcio"]["p99_ms"],
        "target_trio_p99_ms": TARGET_1000_P99_MS,
    }


def run() -> Iterator[dict[str, Any]]:
    """Each scenario's line as soon as it is measured."""
    yield upload_only()
    yield with_subscriber(send_ns=False)
    yield with_subscriber(send_ns=True)
    yield saturation()
    yield latency_1000()


if __name__ == "__main__":
    for line in run():
        print(json.dumps(line))
