"""End-to-end benchmarks: our server against the grpcio reference server, side by side.

Scenarios (issue: benchmarks that prove the service holds under load), each on loopback TCP:
  (a) upload-only images/s;
  (b) 1, 10 and 50 StreamImages subscribers (interval 0) receiving every image while one
      uploader runs as fast as backpressure allows: delivered images/s, server CPU seconds per
      1000 delivered images, server peak RSS;
  (c) upload -> receipt latency p50/p95/p99 at 1,000 images/s with one subscriber;
  (d) our scanner's CPU share for 64 modules x 2 products at a 10 ms interval (inotify), next to
      the same scanner polling (the grpcio reference has no scanner).
Both servers run as subprocesses; the load generator is this process (grpclib with our codec
for uploads; subscribers count bytes without decoding, so the client costs the same for both).
Each scenario prints one JSON line with both figures and their ratio. Our server runs on the
trio backend; `BENCH_BACKEND=asyncio make bench` measures its asyncio backend instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase

from benchmarks._process import running
from panoseti_daq import PanoFrame, pff, product_named
from panoseti_daq._grpclib.codec import DaqCodec
from panoseti_daq.messages import Empty, InitHpIoRequest, InitHpIoResponse, StreamImagesRequest
from panoseti_daq.server.process import free_port
from panoseti_daq.wire.codec import StreamReply, UploadItem, encode_upload_item

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class _Raw:
    """Marker type: bytes go through untouched."""


class RawCodec(CodecBase):
    """Sends pre-encoded bytes and counts replies without decoding them."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message if isinstance(message, bytes) else message.SerializeToString()

    def decode(self, data: bytes, message_type: Any) -> Any:
        return len(data) if message_type is _Raw else message_type.FromString(data)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _frame(number: int) -> PanoFrame:
    product = product_named("img16")
    rng = np.random.default_rng(number)
    header = {
        f"quabo_{q}": {
            "pkt_num": number,
            "pkt_tai": 529,
            "pkt_nsec": 779007488 + number,
            "tv_sec": 1721882092,
            "tv_usec": 779336,
        }
        for q in range(4)
    }
    return PanoFrame.create(product, header, rng.integers(0, 4000, 1024), 1, "bench.pff", number)


@contextlib.contextmanager
def _server(
    kind: str, tmp: Path, *extra: str, scanner_watch: bool = True
) -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    if kind == "ours":
        config = tmp / "bench_config.json"
        config.write_text(
            json.dumps(
                {
                    "allowed_data_roots": [str(tmp)],
                    "daq_active_check": ["marker"],
                    "max_read_queue_size": 5000,
                    "max_reader_enqueue_timeouts": 1000000,
                    "scanner_watch": scanner_watch,
                    "simulate_daq_cfg": {"data_dir": str(tmp / "sim")},
                }
            )
        )
        cmd = [
            sys.executable,
            "-m",
            "panoseti_daq.serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--uds",
            "",
            "--log-level",
            "warning",
            "--backend",
            os.environ.get("BENCH_BACKEND", "trio"),
            *extra,
        ]
    else:
        cmd = [sys.executable, "-m", "benchmarks._reference_server", "--port", str(port)]
    with running(cmd, port, kind) as process:
        yield process, port


def _active_run(tmp: Path) -> Path:
    data_dir = tmp / "data"
    run = data_dir / "module_1" / "obs_BENCH"
    run.mkdir(parents=True, exist_ok=True)
    (run / "module_1.daq-active").touch()
    return data_dir


async def _unary(port: int, method: str, request: Any, reply_type: Any) -> Any:
    channel = Channel("127.0.0.1", port, codec=DaqCodec())
    try:
        async with channel.request(
            f"/daqdata.DaqData/{method}", Cardinality.UNARY_UNARY, type(request), reply_type
        ) as stream:
            await stream.send_message(request, end=True)
            return await stream.recv_message()
    finally:
        channel.close()


async def _init(port: int, data_dir: Path, interval_s: float = 1.0) -> None:
    request = InitHpIoRequest(
        data_dir=str(data_dir), update_interval_seconds=interval_s, force=True
    )
    reply = await _unary(port, "InitHpIo", request, InitHpIoResponse)
    if not reply.success:
        raise RuntimeError(reply.error_message)


async def _upload(port: int, payloads: list[bytes], pace_s: float = 0.0, sent_at=None) -> float:
    channel = Channel("127.0.0.1", port, codec=RawCodec())
    start = time.perf_counter()
    try:
        async with channel.request(
            "/daqdata.DaqData/UploadImages", Cardinality.STREAM_UNARY, _Raw, Empty
        ) as stream:
            for index, payload in enumerate(payloads):
                if pace_s:
                    delay = start + index * pace_s - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if sent_at is not None:
                    sent_at[index] = time.perf_counter()
                await stream.send_message(payload)
            await stream.end()
            await stream.recv_message()
    finally:
        channel.close()
    return time.perf_counter() - start


async def _subscriber(
    port: int, want: int, counts: list[int], slot: int, ready: asyncio.Event, done: asyncio.Event
) -> None:
    channel = Channel("127.0.0.1", port, codec=RawCodec())
    try:
        async with channel.request(
            "/daqdata.DaqData/StreamImages", Cardinality.UNARY_STREAM, StreamImagesRequest, _Raw
        ) as stream:
            await stream.send_message(
                StreamImagesRequest(stream_movie_data=True, stream_pulse_height_data=True),
                end=True,
            )
            await stream.recv_initial_metadata()
            ready.set()
            async for _ in stream:
                counts[slot] += 1
                if counts[slot] >= want:
                    break
            await stream.cancel()
    finally:
        done.set()
        channel.close()


async def _fan_out(port: int, subscribers: int, images: int, pid: int) -> dict[str, float]:
    payloads = [encode_upload_item(UploadItem(_frame(i))) for i in range(64)]
    warmup = 20
    counts = [0] * subscribers
    readies = [asyncio.Event() for _ in range(subscribers)]
    dones = [asyncio.Event() for _ in range(subscribers)]
    async with asyncio.TaskGroup() as tg:
        for slot in range(subscribers):
            tg.create_task(
                _subscriber(port, warmup + images, counts, slot, readies[slot], dones[slot])
            )
        for ready in readies:
            await ready.wait()
        # Warm-up: every subscriber is attached and has received frames.
        await _upload(port, [payloads[i % 64] for i in range(warmup)])
        # The subscribers count in place; a warm-up needs no event per frame.
        while min(counts) < warmup:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        cpu0, start = _cpu_s(pid), time.perf_counter()
        await _upload(port, [payloads[i % 64] for i in range(images)])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(120):
                for done in dones:
                    await done.wait()
        elapsed, cpu = time.perf_counter() - start, _cpu_s(pid) - cpu0
    delivered = sum(min(c, warmup + images) - warmup for c in counts)
    return {
        "delivered_per_s": delivered / elapsed,
        "per_subscriber_per_s": delivered / elapsed / subscribers,
        "lost": subscribers * images - delivered,
        "server_cpu_s_per_1000": 1000 * cpu / max(delivered, 1),
        "server_peak_rss_mb": _peak_rss_mb(pid),
    }


async def _latency(port: int, rate_hz: float, seconds: float) -> dict[str, float]:
    count = int(rate_hz * seconds)
    payloads = [encode_upload_item(UploadItem(_frame(i))) for i in range(count)]
    sent_at = [0.0] * count
    latencies: list[float] = []
    channel = Channel("127.0.0.1", port, codec=DaqCodec())
    try:
        async with channel.request(
            "/daqdata.DaqData/StreamImages",
            Cardinality.UNARY_STREAM,
            StreamImagesRequest,
            StreamReply,
        ) as stream:
            await stream.send_message(StreamImagesRequest(stream_movie_data=True), end=True)
            await stream.recv_initial_metadata()

            async def receive() -> None:
                async for reply in stream:
                    latencies.append(time.perf_counter() - sent_at[reply.frame.frame_number])
                    if len(latencies) == count:
                        return

            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(receive())
                await _upload(port, payloads, 1.0 / rate_hz, sent_at)
                async with asyncio.timeout(30):
                    await task
            await stream.cancel()
    finally:
        channel.close()
    ms = np.array(latencies) * 1000
    return {f"p{p}_ms": float(np.percentile(ms, p)) for p in (50, 95, 99)} | {
        "received": len(latencies)
    }


def _scenario_pair(name: str, fn, **params) -> dict[str, Any]:
    results = {}
    for kind in ("ours", "grpcio"):
        with (
            tempfile.TemporaryDirectory(dir="/tmp") as tmp,
            _server(kind, Path(tmp)) as (
                process,
                port,
            ),
        ):
            results[kind] = asyncio.run(fn(port, process.pid, Path(tmp), **params))
    return {"scenario": name, **params, **results}


async def _upload_only(port: int, pid: int, tmp: Path, images: int) -> dict[str, float]:
    payloads = [encode_upload_item(UploadItem(_frame(i))) for i in range(64)]
    await _upload(port, payloads)
    cpu0 = _cpu_s(pid)
    elapsed = await _upload(port, [payloads[i % 64] for i in range(images)])
    return {
        "images_per_s": images / elapsed,
        "server_cpu_s_per_1000": 1000 * (_cpu_s(pid) - cpu0) / images,
    }


async def _fan_out_scenario(port: int, pid: int, tmp: Path, subscribers: int, images: int):
    await _init(port, _active_run(tmp))
    return await _fan_out(port, subscribers, images, pid)


async def _latency_scenario(port: int, pid: int, tmp: Path, rate_hz: float, seconds: float):
    await _init(port, _active_run(tmp))
    return await _latency(port, rate_hz, seconds)


def _scanner_share(
    modules: int, interval_s: float, seconds: float, scanner_watch: bool
) -> dict[str, float]:
    """Our server's CPU share while its scanner follows modules x 2 growing files."""
    with (
        tempfile.TemporaryDirectory(dir="/tmp") as tmp_name,
        _server("ours", Path(tmp_name), scanner_watch=scanner_watch) as (process, port),
    ):
        tmp = Path(tmp_name)
        data_dir = tmp / "data"
        products = [product_named("img16"), product_named("ph256")]
        files = []
        for module in range(1, modules + 1):
            run = data_dir / f"module_{module}" / "obs_BENCH"
            run.mkdir(parents=True)
            (run / f"module_{module}.daq-active").touch()
            for product in products:
                name = pff.DataFileName(product.name, module, 0, product.bytes_per_pixel, "x")
                pixels = np.zeros(product.shape, product.dtype)
                frame = pff.encode_frame({"pkt_num": 0}, pixels, product)
                path = run / name.format()
                path.write_bytes(frame)
                files.append((open(path, "ab", buffering=0), frame))  # noqa: SIM115
        asyncio.run(_init(port, data_dir, interval_s))
        cpu0, start = _cpu_s(process.pid), time.perf_counter()
        writes = 0
        while time.perf_counter() - start < seconds:  # each file grows by 10 frames/s
            for f, frame in files:
                f.write(frame)
                writes += 1
            time.sleep(0.1)
        share = (_cpu_s(process.pid) - cpu0) / (time.perf_counter() - start)
        for f, _ in files:
            f.close()
    return {"server_cpu_share_of_one_core": share, "frames_written_per_s": writes / seconds}


def _scanner_cpu(modules: int = 64, interval_s: float = 0.01, seconds: float = 10.0) -> dict:
    """(d): the scanner's CPU share; the grpcio reference has no scanner, so the side-by-side
    figure is our own scanner polling (`scanner_watch: false`), as it does without inotify."""
    ours = _scanner_share(modules, interval_s, seconds, scanner_watch=True)
    polling = _scanner_share(modules, interval_s, seconds, scanner_watch=False)
    return {
        "scenario": "d_scanner_cpu",
        "modules": modules,
        "products": 2,
        "interval_s": interval_s,
        "ours": ours,
        "polling": polling,
        "ratio": ours["server_cpu_share_of_one_core"] / polling["server_cpu_share_of_one_core"],
        "target": 0.10,
    }


def run() -> list[dict[str, Any]]:
    results = []
    a = _scenario_pair("a_upload_only", _upload_only, images=5000)
    a["ratio"] = a["ours"]["images_per_s"] / a["grpcio"]["images_per_s"]
    results.append(a)
    for subscribers, images in ((1, 5000), (10, 2000), (50, 1000)):
        b = _scenario_pair("b_fan_out", _fan_out_scenario, subscribers=subscribers, images=images)
        b["ratio"] = b["ours"]["delivered_per_s"] / b["grpcio"]["delivered_per_s"]
        results.append(b)
    c = _scenario_pair("c_latency", _latency_scenario, rate_hz=1000.0, seconds=3.0)
    c["target_p99_ms"] = 5.0
    c["ratio_p99"] = c["ours"]["p99_ms"] / c["grpcio"]["p99_ms"]
    results.append(c)
    results.append(_scanner_cpu())
    return results


if __name__ == "__main__":
    for line in run():
        print(json.dumps(line))
