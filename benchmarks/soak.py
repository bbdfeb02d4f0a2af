"""`make soak`: our server under sustained load for minutes, checking that nothing grows.

An uploader sends img16 frames at a fixed rate while one subscriber (interval 0) receives them.
Every minute, and at the start and the end, it prints one JSON line with the server's resident
memory, task count (trio's and asyncio's), open file descriptors and threads, as the server's
own `--stats-file` reports them, and the frames uploaded and delivered. Not part of
`make bench` or the tests.

    python -m benchmarks.soak [--minutes 10] [--rate 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from grpclib.client import Channel
from grpclib.const import Cardinality

from benchmarks.e2e import RawCodec, _active_run, _frame, _init, _Raw, _server
from panoseti_daq.messages import Empty, StreamImagesRequest
from panoseti_daq.wire.codec import UploadItem, encode_upload_item


def _server_stats(path: Path) -> dict[str, float]:
    """The server's newest stats line (serve --stats-file): its resources and counters."""
    try:
        last = json.loads(path.read_text().splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return {}
    return {
        "server_rss_mb": last["rss_mb"],
        "server_fds": last["open_fds"],
        "server_threads": last["threads"],
        "server_tasks": last["tasks"],
        "server_published": last["frames_published"],
        "server_sent": last["frames_sent"],
        "server_dropped": last["frames_dropped"],
    }


async def soak(port: int, minutes: float, rate: float, stats: Path) -> None:
    payloads = [encode_upload_item(UploadItem(_frame(i))) for i in range(64)]
    counts = {"uploaded": 0, "delivered": 0}
    await asyncio.sleep(2 * STATS_INTERVAL_S)  # a stats line written after InitHpIo
    start = time.monotonic()
    deadline = start + minutes * 60

    def report(stage: str) -> None:
        elapsed = time.monotonic() - start
        print(
            json.dumps(
                {
                    "soak": stage,
                    "elapsed_s": round(elapsed, 1),
                    **counts,
                    "upload_rate": counts["uploaded"] / max(elapsed, 1e-9),
                    **_server_stats(stats),
                }
            ),
            flush=True,
        )

    async def subscriber() -> None:
        channel = Channel("127.0.0.1", port, codec=RawCodec())
        try:
            async with channel.request(
                "/daqdata.DaqData/StreamImages",
                Cardinality.UNARY_STREAM,
                StreamImagesRequest,
                _Raw,
            ) as stream:
                await stream.send_message(StreamImagesRequest(stream_movie_data=True), end=True)
                await stream.recv_initial_metadata()
                subscribed.set()
                async for _ in stream:
                    counts["delivered"] += 1
        finally:
            channel.close()

    async def uploader() -> None:
        channel = Channel("127.0.0.1", port, codec=RawCodec())
        try:
            async with channel.request(
                "/daqdata.DaqData/UploadImages", Cardinality.STREAM_UNARY, _Raw, Empty
            ) as stream:
                while time.monotonic() < deadline:
                    due = int((time.monotonic() - start) * rate) - counts["uploaded"]
                    for _ in range(max(due, 0)):
                        await stream.send_message(payloads[counts["uploaded"] % 64])
                        counts["uploaded"] += 1
                    await asyncio.sleep(0.005)
                await stream.end()
                await stream.recv_message()
        finally:
            channel.close()

    subscribed = asyncio.Event()
    report("start")
    async with asyncio.TaskGroup() as tg:
        sub = tg.create_task(subscriber())
        await subscribed.wait()
        start = time.monotonic()
        deadline = start + minutes * 60
        up = tg.create_task(uploader())
        while not up.done():
            await asyncio.sleep(min(60.0, max(deadline - time.monotonic(), 0.1)))
            if not up.done():
                report("running")
        await asyncio.sleep(1.0)  # the last frames arrive
        sub.cancel()
    await asyncio.sleep(2 * STATS_INTERVAL_S)  # the server's stats line catches up
    report("end")


STATS_INTERVAL_S = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5000.0, help="images per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        stats = Path(tmp) / "stats.jsonl"
        extra = ("--stats-file", str(stats), "--stats-interval", str(STATS_INTERVAL_S))
        with _server("ours", Path(tmp), *extra) as (_process, port):
            asyncio.run(_init(port, _active_run(Path(tmp))))
            asyncio.run(soak(port, args.minutes, args.rate, stats))


if __name__ == "__main__":
    main()
