"""Prometheus metrics for operators: `serve --metrics-port N` serves `/metrics` over HTTP.

The exposition is prometheus-client's text format, which Prometheus, Grafana Agent and
Telegraf/InfluxDB read. Every value is read from the hub's and the core's own counters at scrape
time (the stats file reads the same ones, so the two never disagree). The endpoint runs on the
server's task group, in the thread that changes those counters, so a scrape sees one consistent
moment and needs no locks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .stats import hub_counters

if TYPE_CHECKING:
    from .core import ServerCore

log = logging.getLogger(__name__)

__all__ = ["ServerCollector", "metrics_registry", "serve_metrics"]

_PREFIX = "panoseti_daq"
# A request line and headers larger than this, or slower than this, are not a scrape.
_MAX_REQUEST_BYTES = 16384
_REQUEST_TIMEOUT_S = 10.0


def describe_subscription(client: dict[str, Any]) -> str:
    """A short label for what one client asked for, e.g. "movie+ph every 0.5 s modules 1,3"."""
    wanted = (("movie", client["movie"]), ("ph", client["pulse_height"]))
    kinds = "+".join(name for name, asked in wanted if asked)
    modules = ",".join(str(m) for m in client["module_ids"]) or "all"
    return f"{kinds} every {client['interval_s']:g} s modules {modules}"


class ServerCollector(Collector):
    """The server's own metrics, computed at each scrape from the counters the stats file
    reads (`stats.hub_counters`), so a scrape and a stats line never disagree."""

    def __init__(self, core: ServerCore, started_monotonic: float, tasks: Callable[[], int]):
        self._core = core
        self._started = started_monotonic
        self._tasks = tasks

    def collect(self) -> Iterator[Metric]:
        core = self._core
        hub = core.hub
        now = time.monotonic()
        counters = hub_counters(core, now)
        yield _gauge("up_seconds", "Seconds since the server started.", now - self._started)
        yield _gauge(
            "hp_io_valid", "1 when hp_io is configured and its sources run.", core.hp_io_valid
        )
        yield _gauge("tasks", "Tasks alive in the server's event loops.", self._tasks())

        frames_in = CounterMetricFamily(
            f"{_PREFIX}_frames_in",
            "Frames that entered the hub, per module, data product and source "
            "(scanner, upload, socket, simulation).",
            labels=["module", "product", "source"],
        )
        for entry in counters["frames_in"]:
            labels = [str(entry["module"]), entry["product"], entry["source"]]
            frames_in.add_metric(labels, entry["frames"])
        yield frames_in

        age = GaugeMetricFamily(
            f"{_PREFIX}_newest_frame_age_seconds",
            "Seconds since the newest frame of each module and data product entered the hub.",
            labels=["module", "product"],
        )
        for entry in counters["newest_frame_age_s"]:
            age.add_metric([str(entry["module"]), entry["product"]], max(0.0, entry["age_s"]))
        yield age

        yield _counter("frames_published", "Frames that entered the hub.", hub.published)
        yield _counter(
            "frames_sent",
            "Frames sent to StreamImages clients, ended ones included.",
            hub.frames_sent,
        )
        yield _counter(
            "frames_overrun",
            "Frames dropped for clients whose queue was full, ended ones included.",
            hub.frames_dropped,
        )
        yield _gauge("stream_clients", "Active StreamImages clients.", hub.subscriber_count)
        delay_help = (
            "Seconds each frame waited in the server, from entering the hub until it was written "
            "to the client's connection (a paced client's include its update interval)"
        )
        total_delay = HistogramMetricFamily(
            f"{_PREFIX}_send_delay_seconds", f"{delay_help}; every client, ended ones included."
        )
        _add_delay(total_delay, [], counters["send_delay"])
        yield total_delay

        labels = ["client", "peer", "subscription"]
        sent = CounterMetricFamily(
            f"{_PREFIX}_client_frames_sent", "Frames sent to this client.", labels=labels
        )
        overruns = CounterMetricFamily(
            f"{_PREFIX}_client_overruns",
            "Frames dropped for this client because its queue was full.",
            labels=labels,
        )
        depth = GaugeMetricFamily(
            f"{_PREFIX}_client_queue_depth",
            "Frames waiting in this client's queue.",
            labels=labels,
        )
        delay = HistogramMetricFamily(
            f"{_PREFIX}_client_send_delay_seconds", f"{delay_help}.", labels=labels
        )
        for client in counters["clients"]:
            values = [str(client["client"]), client["peer"], describe_subscription(client)]
            sent.add_metric(values, client["sent"])
            overruns.add_metric(values, client["dropped"])
            depth.add_metric(values, client["queue_depth"])
            _add_delay(delay, values, client["send_delay"])
        yield sent
        yield overruns
        yield depth
        yield delay


def _add_delay(family: HistogramMetricFamily, labels: list[str], delay: dict[str, Any]) -> None:
    """One histogram of `family` from `stats.delay_buckets`' form."""
    family.add_metric(labels, [tuple(bucket) for bucket in delay["buckets"]], delay["sum_s"])


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{_PREFIX}_{name}", documentation, value=float(value))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{_PREFIX}_{name}", documentation, value=float(value))


def metrics_registry(collector: ServerCollector) -> CollectorRegistry:
    """A registry of its own (two servers in one process keep apart): ours plus the process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


async def serve_metrics(
    host: str | None,
    port: int,
    registry: CollectorRegistry,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `GET /metrics` on host:port until cancelled; `task_status` gets the bound port.

    `host` None listens on every interface. A malformed or slow request ends that connection
    only.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound = listener.extra(SocketAttribute.local_port)
        log.info("metrics on http://%s:%d/metrics", host or "[::]", bound)
        task_status.started(bound)

        async def handle(connection: SocketStream) -> None:
            async with connection:
                try:
                    with anyio.fail_after(_REQUEST_TIMEOUT_S):
                        await _answer(connection, registry)
                except (TimeoutError, OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                    log.debug("metrics request ended: %r", exc)

        await listener.serve(handle)


async def _answer(connection: SocketStream, registry: CollectorRegistry) -> None:
    request = b""
    while (end := request.find(b"\r\n\r\n")) < 0 and len(request) <= _MAX_REQUEST_BYTES:
        request += await connection.receive()
    if not 0 <= end <= _MAX_REQUEST_BYTES:
        await _respond(connection, 431, b"request header too large\n")
        return
    request_line = request.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        await _respond(connection, 400, b"not an HTTP request\n")
        return
    method, target, _ = parts
    path = target.split("?", 1)[0]
    if path not in ("/metrics", "/"):
        await _respond(connection, 404, b"not found: the metrics are at /metrics\n")
        return
    if method not in ("GET", "HEAD"):
        await _respond(connection, 405, b"only GET and HEAD\n", allow="GET, HEAD")
        return
    try:
        body = generate_latest(registry)
    except Exception as exc:  # a collector's bug: this scrape fails, the server goes on
        log.exception("metrics collection failed")
        await _respond(connection, 500, f"metrics collection failed: {exc!r}\n".encode())
        return
    await _respond(connection, 200, body, head=method == "HEAD", content_type=CONTENT_TYPE_LATEST)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[431] = "Request Header Fields Too Large"
_REASONS[500] = "Internal Server Error"


async def _respond(
    connection: SocketStream,
    status: int,
    body: bytes,
    *,
    head: bool = False,
    content_type: str = "text/plain; charset=utf-8",
    allow: str | None = None,
) -> None:
    headers = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow:
        headers.append(f"Allow: {allow}")
    await connection.send(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
    if not head:
        await connection.send(body)
