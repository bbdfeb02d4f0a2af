"""What a running server is doing, as one JSON object: for operators, monitoring and `make soak`.

`python -m panoseti_daq.serve --stats-file PATH [--stats-interval S]` appends one line per
interval (JSON Lines); `DaqDataServer.stats()` returns the same dict in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import sniffio
from prometheus_client.utils import floatToGoString

from .hub import DelayHistogram

if TYPE_CHECKING:
    from .core import ServerCore

__all__ = [
    "delay_buckets",
    "hub_counters",
    "process_stats",
    "server_stats",
    "task_count",
    "write_stats",
]


def task_count(grpclib_loop: Any = None) -> int:
    """Tasks alive in this event loop: trio's (under trio) plus asyncio's on grpclib's loop."""
    if sniffio.current_async_library() == "trio":
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

        root = trio.lowlevel.current_root_task()
        trio_tasks = count(root) if root is not None else 0
        return trio_tasks + (len(asyncio.all_tasks(grpclib_loop)) if grpclib_loop else 0)
    return len(asyncio.all_tasks())


def process_stats() -> dict[str, Any]:
    """This process: resident memory, open file descriptors, threads (Linux /proc)."""
    stats: dict[str, Any] = {"threads": threading.active_count()}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                stats["rss_mb"] = round(int(line.split()[1]) / 1024, 1)
        stats["open_fds"] = len(os.listdir("/proc/self/fd"))
    except OSError:
        pass  # not Linux: threads only
    return stats


def hub_counters(core: ServerCore, now: float) -> dict[str, Any]:
    """The hub's counters per source, per (module, product) and per client (`now`: monotonic).

    `frames_in`: frames that entered the hub per module, product and source (scanner, upload,
    socket, simulation); `newest_frame_age_s`: seconds since the newest frame of each (module,
    product) entered; `clients`: every StreamImages client's peer, subscription, frames sent,
    overruns (`dropped`, R-STREAM-11), frames waiting (`queue_depth`) and how long its frames
    waited in the server (`send_delay`, see `delay_buckets`); `send_delay`: the same over every
    frame sent since the server started.
    """
    hub = core.hub
    return {
        "frames_in": [
            {"module": module, "product": product, "source": source, "frames": count}
            for (module, product, source), count in sorted(hub.frames_in.items())
        ],
        "newest_frame_age_s": [
            {"module": module, "product": product, "age_s": round(now - entered_s, 6)}
            for (module, product), entered_s in sorted(hub.newest_entered_s().items())
        ],
        "clients": [
            {
                "client": client.client_id,
                "peer": client.peer,
                "movie": client.subscription.movie,
                "pulse_height": client.subscription.pulse_height,
                "module_ids": sorted(client.subscription.module_ids),
                "interval_s": client.subscription.interval_s,
                "sent": client.sent,
                "dropped": client.dropped,
                "queue_depth": client.queue_depth,
                "send_delay": delay_buckets(client.send_delay),
            }
            for client in hub.subscriber_stats()
        ],
        "send_delay": delay_buckets(hub.send_delay()),
    }


def delay_buckets(histogram: DelayHistogram) -> dict[str, Any]:
    """A send-delay histogram as JSON: cumulative counts per upper bound ("le", in seconds, as
    Prometheus writes it, the last "+Inf"), and the sum of the delays."""
    return {
        "buckets": [[floatToGoString(bound), count] for bound, count in histogram.cumulative()],
        "sum_s": round(histogram.sum_s, 6),
    }


def server_stats(core: ServerCore, started: float, grpclib_loop: Any = None) -> dict[str, Any]:
    """The server's counters and its process's resources, JSON-serialisable."""
    hub = core.hub
    hp_io = core.hp_io
    now = time.monotonic()
    return {
        "time_ns": time.time_ns(),
        "uptime_s": round(now - started, 3),
        "hp_io_valid": core.hp_io_valid,
        "hp_io": None
        if hp_io is None
        else ("simulation" if hp_io.simulate_daq else hp_io.data_dir),
        "frames_published": hub.published,
        "stream_clients": core.active_streams,
        "frames_sent": hub.frames_sent,
        "frames_dropped": hub.frames_dropped,
        "tasks": task_count(grpclib_loop),
        **hub_counters(core, now),
        **process_stats(),
    }


async def write_stats(path: str | os.PathLike[str], interval_s: float, stats: Any) -> None:
    """Append `stats()` as one JSON line to `path` now, every `interval_s`, and when cancelled."""
    file = Path(path)
    try:
        while True:
            await anyio.to_thread.run_sync(_append, file, json.dumps(stats()) + "\n")
            await anyio.sleep(interval_s)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_append, file, json.dumps(stats()) + "\n")


def _append(file: Path, line: str) -> None:
    with open(file, "a", encoding="utf-8") as f:
        f.write(line)
