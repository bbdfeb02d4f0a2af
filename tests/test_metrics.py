"""The Prometheus endpoint (`serve --metrics-port`), scraped over HTTP while streams run.

Scrapes are parsed with prometheus-client's own parser, as Prometheus would read them.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import anyio
import anyio.lowlevel
import pytest
from prometheus_client.parser import text_string_to_metric_families

from panoseti_daq.config import server_config_from_dict
from panoseti_daq.errors import ConfigError
from panoseti_daq.messages import StreamImagesRequest
from panoseti_daq.server import metrics as server_metrics
from panoseti_daq.server.process import free_port
from tests.helpers import (
    fill_flow_control_window,
    init_hp_io,
    ipv6_loopback,
    movie_frame,
    next_reply,
    open_stream,
    server_process,
    stalled_stream_client,
    upload,
    wait_until,
)

pytestmark = pytest.mark.anyio


def scrape(port: int, path: str = "/metrics") -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value}, from one GET over HTTP."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def only(samples: dict[tuple, float]) -> float:
    assert len(samples) == 1, samples
    return next(iter(samples.values()))


async def test_scrape_while_streaming_counts_frames_clients_and_process(make_server, run_dir):
    """Frames in per (module, product, source), the newest frame's age, per-client sent,
    overruns (R-STREAM-11) and queue depth, server totals and process metrics; the stats
    record agrees with the scrape."""
    before_start = time.monotonic()
    async with make_server(metrics_port=0) as server:
        assert server.metrics_port
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server, ph=False, module_ids=[7]) as stream:
            before_upload = time.monotonic()
            await upload(server, [movie_frame(7, i) for i in range(20)])
            await upload(server, [movie_frame(8, i) for i in range(3)])
            for _ in range(20):
                await next_reply(stream)
            metrics = await anyio.to_thread.run_sync(scrape, server.metrics_port)
            scraped = time.monotonic()
            stats = server.stats()

            # Ages and uptime are bounded by what this test saw pass, not by a window.
            assert 0 <= only(metrics["panoseti_daq_up_seconds"]) <= scraped - before_start
            assert only(metrics["panoseti_daq_tasks"]) >= 1
            frames_in = metrics["panoseti_daq_frames_in_total"]
            key7 = (("module", "7"), ("product", "img16"), ("source", "upload"))
            key8 = (("module", "8"), ("product", "img16"), ("source", "upload"))
            assert frames_in[key7] == 20
            assert frames_in[key8] == 3
            ages = metrics["panoseti_daq_newest_frame_age_seconds"]
            assert 0 <= ages[(("module", "7"), ("product", "img16"))] <= scraped - before_upload

            (labels,) = metrics["panoseti_daq_client_frames_sent_total"]
            client = dict(labels)
            assert client["peer"].startswith("127.0.0.1")
            assert client["subscription"] == "movie every 0 s modules 7"
            assert metrics["panoseti_daq_client_frames_sent_total"][labels] == 20
            assert metrics["panoseti_daq_client_overruns_total"][labels] == 0
            assert metrics["panoseti_daq_client_queue_depth"][labels] == 0
            # Each frame's wait in the server, as a histogram: every frame sent is counted.
            assert metrics["panoseti_daq_client_send_delay_seconds_count"][labels] == 20
            buckets = {
                float(dict(key)["le"]): count
                for key, count in metrics["panoseti_daq_client_send_delay_seconds_bucket"].items()
            }
            assert buckets[float("inf")] == 20
            counts = [buckets[bound] for bound in sorted(buckets)]
            assert counts == sorted(counts)  # cumulative
            assert 0 < metrics["panoseti_daq_client_send_delay_seconds_sum"][labels] < 60
            assert stats["send_delay"]["buckets"][-1] == ["+Inf", 20]

            assert only(metrics["panoseti_daq_stream_clients"]) == 1
            assert only(metrics["panoseti_daq_frames_published_total"]) == 23
            assert only(metrics["panoseti_daq_frames_sent_total"]) == stats["frames_sent"] == 20
            assert only(metrics["panoseti_daq_frames_overrun_total"]) == stats["frames_dropped"]
            assert only(metrics["panoseti_daq_hp_io_valid"]) == 1
            assert only(metrics["process_resident_memory_bytes"]) > 1e6
            assert only(metrics["process_open_fds"]) > 0
            assert "python_info" in metrics  # the platform collector, in our own registry

        # The client has gone: its series go, the totals keep what it was sent.
        await wait_until(lambda: server.hub.subscriber_count == 0)
        metrics = await anyio.to_thread.run_sync(scrape, server.metrics_port)
        assert "panoseti_daq_client_frames_sent_total" not in metrics
        assert only(metrics["panoseti_daq_frames_sent_total"]) == 20
        assert only(metrics["panoseti_daq_send_delay_seconds_count"]) == 20


async def test_each_client_has_its_own_series_an_overrunning_one_its_own_overruns(
    make_server, run_dir
):
    """R-STREAM-11 per client: a client that keeps up and one that stopped reading (a real
    HTTP/2 client whose window the server has filled) each have series labelled with their own
    client number, address and subscription; the stalled one's overruns, queue depth and frames
    sent are its own, all different, and the fast one has no overrun."""
    queue = 4
    async with make_server(
        metrics_port=0,
        max_read_queue_size=queue,
        reader_timeout=60.0,  # the stalled client is not ended during the test
        max_reader_enqueue_timeouts=2,
    ) as server:
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server, ph=False, module_ids=[7, 9]) as fast:
            await wait_until(lambda: server.hub.subscriber_count == 1)
            request = StreamImagesRequest(stream_movie_data=True, stream_pulse_height_data=True)
            with stalled_stream_client(server.port, request) as (sock, _):
                await wait_until(lambda: server.hub.subscriber_count == 2)
                # More than a 64 KiB window: its handler blocks in a send, its queue fills.
                await upload(server, [movie_frame(8, i) for i in range(60)])
                await anyio.to_thread.run_sync(fill_flow_control_window, sock)
                publish = server.core.publisher("upload")
                for number in range(60, 70):  # its queue is full: these 10 overrun
                    publish(movie_frame(8, number))
                for number in range(3):  # for both clients: these 3 overrun for it too
                    publish(movie_frame(7, number))
                for _ in range(3):
                    await next_reply(fast)
                await wait_until(lambda: server.hub.subscriber_stats()[0].sent == 3)
                metrics = await anyio.to_thread.run_sync(scrape, server.metrics_port)
                stalled_peer = f"127.0.0.1:{sock.getsockname()[1]}"
                _, stalled = server.hub.subscriber_stats()

    sent = metrics["panoseti_daq_client_frames_sent_total"]
    by_client = {dict(labels)["client"]: dict(labels) for labels in sent}
    assert sorted(by_client) == ["1", "2"]
    assert by_client["1"]["peer"].startswith("127.0.0.1:")
    assert by_client["1"]["peer"] != stalled_peer
    assert by_client["1"]["subscription"] == "movie every 0 s modules 7,9"
    assert by_client["2"]["peer"] == stalled_peer
    assert by_client["2"]["subscription"] == "movie+ph every 0 s modules all"

    def series(name: str, client: str) -> float:
        return metrics[name][tuple(sorted(by_client[client].items()))]

    assert series("panoseti_daq_client_frames_sent_total", "1") == 3
    assert series("panoseti_daq_client_overruns_total", "1") == 0
    assert series("panoseti_daq_client_queue_depth", "1") == 0
    assert series("panoseti_daq_client_send_delay_seconds_count", "1") == 3
    # The stalled client: every frame it was offered was taken (sent or stuck in its window),
    # is waiting, or overran; at least the 13 after its queue filled overran.
    overruns = series("panoseti_daq_client_overruns_total", "2")
    taken = series("panoseti_daq_client_frames_sent_total", "2")
    assert series("panoseti_daq_client_queue_depth", "2") == queue
    assert overruns >= 13 and taken > 0
    assert taken + queue + overruns == 73
    assert (taken, overruns) == (stalled.sent, stalled.dropped)
    assert len({taken, queue, overruns}) == 3  # a field read for another would show
    assert only(metrics["panoseti_daq_frames_overrun_total"]) == overruns
    assert only(metrics["panoseti_daq_stream_clients"]) == 2


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_bad_requests_get_http_errors_and_the_endpoint_keeps_serving(make_server):
    """A wrong path, method or a request that is not HTTP ends that request only."""
    async with make_server(metrics_port=0) as server:
        port = server.metrics_port
        with pytest.raises(urllib.error.HTTPError) as info:
            await anyio.to_thread.run_sync(scrape, port, "/nothing")
        assert info.value.code == 404
        answer = await anyio.to_thread.run_sync(
            raw_http, port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 405 ")
        answer = await anyio.to_thread.run_sync(raw_http, port, b"\x16\x03\x01garbage\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        answer = await anyio.to_thread.run_sync(
            raw_http, port, b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 431 ")
        head = await anyio.to_thread.run_sync(
            raw_http, port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        metrics = await anyio.to_thread.run_sync(scrape, port)
        assert only(metrics["panoseti_daq_stream_clients"]) == 0


class _BrokenCollector:
    """A collector with a bug: it raises on every collection after the first `good` ones."""

    def __init__(self, good: int) -> None:
        self.calls = 0
        self.good = good

    def collect(self):
        self.calls += 1
        if self.calls > self.good:
            raise ZeroDivisionError("a collector's bug")
        yield from ()


async def test_a_collector_that_raises_fails_that_scrape_only(caplog):
    """A bug in a collector (not input) answers that scrape 500 naming the error and logs it; the
    endpoint goes on serving the next scrape (the server must not end with it)."""
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    Counter("probe", "a counter that is always there", registry=registry).inc()
    broken = _BrokenCollector(good=0)
    registry.register(broken)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server_metrics.serve_metrics, "127.0.0.1", 0, registry)
        with pytest.raises(urllib.error.HTTPError) as info:
            await anyio.to_thread.run_sync(scrape, port)
        assert info.value.code == 500
        assert "ZeroDivisionError" in info.value.read().decode()
        registry.unregister(broken)
        assert only((await anyio.to_thread.run_sync(scrape, port))["probe_total"]) == 1
        tg.cancel_scope.cancel()
    assert any("metrics collection failed" in r.getMessage() for r in caplog.records)


async def test_endpoint_listens_on_the_servers_host_and_port_and_says_where(make_server, caplog):
    """`metrics_port` N: the endpoint listens on N, on the server's own host only (here
    127.0.0.1: ::1 is refused), and one log line gives its URL."""
    caplog.set_level(logging.INFO, logger="panoseti_daq.server.metrics")
    port = free_port()
    async with make_server(metrics_port=port) as server:
        assert server.metrics_port == port
        metrics = await anyio.to_thread.run_sync(scrape, port)
        assert only(metrics["panoseti_daq_stream_clients"]) == 0
        if ipv6_loopback():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("::1", port), timeout=5).close()
    assert f"metrics on http://127.0.0.1:{port}/metrics" in caplog.messages


def silent_client(port: int) -> bytes:
    """Connect, send nothing, and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return sock.recv(1024)  # TimeoutError if the server keeps it open


async def test_a_client_that_sends_nothing_is_closed_and_others_are_served(
    make_server, monkeypatch
):
    """A connection that sends no request within the request timeout (10 s; 0.3 s here) is
    closed without an answer, and scrapes meanwhile are answered."""
    monkeypatch.setattr(server_metrics, "_REQUEST_TIMEOUT_S", 0.3)
    async with make_server(metrics_port=0) as server, anyio.create_task_group() as tg:
        answers: list[bytes] = []

        async def idle() -> None:
            answers.append(await anyio.to_thread.run_sync(silent_client, server.metrics_port))

        tg.start_soon(idle)
        metrics = await anyio.to_thread.run_sync(scrape, server.metrics_port)
        assert only(metrics["panoseti_daq_stream_clients"]) == 0
    assert answers == [b""]  # closed by the server, before the client's own 5 s


def request_in_pieces(port: int, pieces: list[bytes]) -> bytes:
    """Send a request in several writes (each its own TCP segment), then read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.02)  # a slow client's pause: the server reads each piece alone
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_a_request_that_comes_in_pieces_is_answered(make_server):
    """A request line and headers split over several writes (a slow or hand-typed client),
    with a query string, are read whole and answered."""
    async with make_server(metrics_port=0) as server:
        pieces = [b"GET /metrics?x=1 HT", b"TP/1.1\r\nHost: x\r\n", b"\r", b"\n"]
        answer = await anyio.to_thread.run_sync(request_in_pieces, server.metrics_port, pieces)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"panoseti_daq_stream_clients 0.0" in body


def test_metrics_port_config_key_is_validated(tmp_path):
    """R-CFG-1: metrics_port is an integer 0..65535 or null (off)."""
    file = tmp_path / "daq_data_server_config.json"
    assert server_config_from_dict({"metrics_port": None}, file).metrics_port is None
    assert server_config_from_dict({"metrics_port": 9100}, file).metrics_port == 9100
    for bad in (70000, -1, "9100", True):
        with pytest.raises(ConfigError) as info:
            server_config_from_dict({"metrics_port": bad}, file)
        assert "metrics_port" in str(info.value) and str(file) in str(info.value)


def test_serve_metrics_port_option_serves_metrics(tmp_path):
    """`python -m panoseti_daq.serve --metrics-port N`, scraped from outside the process."""
    port = free_port()
    with server_process(tmp_path, "--metrics-port", str(port), "--init-sim"):
        # The endpoint starts right after the gRPC listener that server_process waits for, and
        # the simulation becomes valid after both: poll the other process until it has.
        deadline = time.monotonic() + 15
        while True:
            try:
                metrics = scrape(port)
                if only(metrics["panoseti_daq_hp_io_valid"]) == 1:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "no scrape with hp_io valid within 15 s"
            time.sleep(0.05)
        assert only(metrics["panoseti_daq_up_seconds"]) >= 0
        assert only(metrics["panoseti_daq_hp_io_valid"]) == 1
        assert "process_cpu_seconds_total" in metrics


def test_serve_rejects_metrics_port_out_of_range():
    """One line naming the option, exit code 2 (R-CFG-1 for the command line)."""
    result = subprocess.run(
        [sys.executable, "-m", "panoseti_daq.serve", "--metrics-port", "70000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--metrics-port must be between 0 and 65535" in result.stderr
