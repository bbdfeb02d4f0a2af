"""A load generator like PANOSETI's clients: grpcio built from schema/, protobuf-encoded.

    python -m benchmarks.grpcio_load --port N [--images N] [--rate HZ] [--product img16|ph256]
        [--send-ns] [--no-subscriber] [--init-data-dir DIR] [--server-pid PID]
        [--metrics-port PORT] [--uds-feed SOCKET]

One grpcio client uploads `--images` images (after `--warmup` more) in one UploadImages call,
protobuf-encoded with Hashpipe's header layout (img16: `quabo_0..3` sub-structs; ph256: flat
keys), as fast as flow control allows (`--rate 0`) or at `--rate` images/s. With `--send-ns` each
header carries one extra key, `send_ns`, the wall-clock send time, stamped into the protobuf bytes
just before grpcio takes the message. One grpcio StreamImages subscriber (interval 0) reads
the fields it needs from every reply (message, frame_number, send_ns: a lightweight viewer, so
that the load generator is not the bottleneck) and counts frames, overrun notices
("dropped N frames", R-STREAM-11) and, with `--send-ns`, upload-to-receipt latency. It prints one
JSON line: uploaded/s, delivered/s, lost frames, latency percentiles and, with `--server-pid`, the
server's CPU seconds per 1000 delivered (or uploaded) images over the measured part, and with
`--metrics-port` (our server's Prometheus endpoint) the server's share of the latency over the
measured part: the send-delay histogram's (`panoseti_daq_send_delay_seconds`) mean and the
bucket bound under which 99 % of the frames were sent.

With `--uds-feed SOCKET` the images come from Hashpipe's side instead of an uploader: PFF frames
(a 2-byte module id, the JSON header, the pixels), written to the server's Unix-socket ingest
for the product at `--rate` frames/s on one connection, as Hashpipe hands them over (R-UDS-2).

Runs in its own process, so that the server under test shares the machine, not the interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from panoseti_daq import PanoFrame, product_named
from panoseti_daq._bundled import NGC7331_PH256
from panoseti_daq.pff import iter_frames
from panoseti_daq.synthetic import synthetic_movie_frames
from tests.reference import modules

pb2, _ = modules()

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_STAMP_SENTINEL = 1234567.890625  # exactly representable; found once in the serialised bytes
_DROPPED = re.compile(r"dropped (\d+) frames?")
_PRODUCTS = {
    # name: (type, shape, bytes_per_pixel)
    "img16": (pb2.PanoImage.MOVIE, (32, 32), 2),
    "ph256": (pb2.PanoImage.PULSE_HEIGHT, (16, 16), 2),
}


def send_delays(metrics_port: int) -> dict[str, float]:
    """The server's send-delay histogram (all clients): "+Inf" and each bucket bound (as text)
    -> frames sent within it, and "sum" -> their total delay in seconds."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "panoseti_daq_send_delay_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    out[sample.labels["le"]] = sample.value
                elif sample.name.endswith("_sum"):
                    out["sum"] = sample.value
    if not out:
        raise RuntimeError(f"no panoseti_daq_send_delay_seconds at {url}")
    return out


def server_share(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The send delays between two scrapes: their mean and the smallest bucket bound at or
    under which 99 % of them lie (ms)."""
    frames = after["+Inf"] - before["+Inf"]
    bounds = sorted((float(le), after[le] - before[le]) for le in after if le not in ("sum",))
    p99 = next(bound for bound, count in bounds if count >= 0.99 * frames)
    return {
        "server_delay_mean_ms": 1e3 * (after["sum"] - before["sum"]) / max(frames, 1),
        "server_delay_p99_le_ms": 1e3 * p99,
    }


def server_user_system_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS


@contextlib.contextmanager
def counting_syscalls(pid: int, out: dict):
    """Count the system calls and context switches of process `pid` (all its threads) with
    `perf stat` while the block runs; into `out` as "syscalls" and "context_switches". Nothing
    where perf is missing or may not count them (it needs the right to trace `pid`)."""
    events = {"raw_syscalls:sys_enter": "syscalls", "context-switches": "context_switches"}
    try:
        perf = subprocess.Popen(
            ["perf", "stat", "-x,", "-e", ",".join(events), "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    except OSError:
        yield
        return
    time.sleep(0.2)  # perf attaches
    try:
        yield
    finally:
        perf.send_signal(signal.SIGINT)
        report = perf.communicate(timeout=10)[1]
    for line in report.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in events and fields[0].isdigit():
            out[events[fields[2]]] = int(fields[0])


def hashpipe_header(product: str, number: int) -> dict:
    """A header in Hashpipe's layout: img16 one object per quabo, ph256 flat."""
    fields = {
        "pkt_num": number,
        "pkt_tai": 529,
        "pkt_nsec": 779007488 + number,
        "tv_sec": 1721882092,
        "tv_usec": 779336,
    }
    if product == "ph256":
        return {"quabo_num": 0, **fields}
    return {f"quabo_{q}": dict(fields) for q in range(4)}


@functools.cache
def _pixel_sources(product: str) -> tuple[list[int], ...]:
    """Realistic wire pixels: the synthetic sky for img16 (pedestal, noise, a star), the
    bundled real NGC 7331 pulse heights for ph256."""
    if product == "ph256":
        frames = itertools.islice(iter_frames(NGC7331_PH256, product_named("ph256")), 64)
        return tuple(PanoFrame.create("ph256", h, p, 1).wire_pixels().tolist() for h, p in frames)
    return tuple(f.wire_pixels().tolist() for f in synthetic_movie_frames(product, count=64))


def upload_request(product: str, number: int, module_id: int, send_ns: bool) -> bytes:
    """UploadImageRequest bytes as protobuf writes them; with `send_ns`, the extra key holds
    the sentinel double, which the request stream replaces with the send time."""
    image_type, shape, bytes_per_pixel = _PRODUCTS[product]
    sources = _pixel_sources(product)
    image = pb2.PanoImage(
        type=image_type,
        image_array=sources[number % len(sources)],
        shape=shape,
        bytes_per_pixel=bytes_per_pixel,
        file=f"start_bench.dp_{product}.bpp_2.module_{module_id}.seqno_0.pff",
        frame_number=number,
        module_id=module_id,
    )
    header = hashpipe_header(product, number)
    if send_ns:
        header["send_ns"] = _STAMP_SENTINEL
    image.header.update(header)
    return pb2.UploadImageRequest(pano_image=image).SerializeToString()


def stamp_offset(data: bytes) -> int:
    offset = data.find(struct.pack("<d", _STAMP_SENTINEL))
    if offset < 0 or data.find(struct.pack("<d", _STAMP_SENTINEL), offset + 1) >= 0:
        raise RuntimeError("send_ns sentinel not found exactly once in the request")
    return offset


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int):
    """(number, value or (start, end)) of the varint and length-delimited fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        if key & 7 == 0:
            value, pos = _varint(buf, pos)
            yield key >> 3, value
        elif key & 7 == 2:
            length, pos = _varint(buf, pos)
            yield key >> 3, (pos, pos + length)
            pos += length
        else:
            raise ValueError(f"unexpected wire type {key & 7} in a StreamImagesResponse")


_SEND_NS_ENTRY = b"\x07send_ns\x12\x09\x11"  # the key, then Value{number_value: <8 bytes>}


def read_reply(data: bytes) -> tuple[str, int, int | None]:
    """(message, frame_number, send_ns or None) of StreamImagesResponse bytes.

    Reads only what the subscriber needs, as a lightweight viewer would, so that the load
    generator spends its CPU on gRPC rather than on building every pixel as a Python int.
    """
    message = ""
    number = 0
    send_ns = None
    for field, value in _fields(data, 0, len(data)):
        if field == 3:
            message = data[value[0] : value[1]].decode()
        elif field == 4:
            for inner, item in _fields(data, *value):
                if inner == 7:
                    number = item
                elif inner == 2:
                    at = data.find(_SEND_NS_ENTRY, item[0], item[1])
                    if at >= 0:
                        send_ns = int(struct.unpack_from("<d", data, at + len(_SEND_NS_ENTRY))[0])
    return message, number, send_ns


class Subscriber(threading.Thread):
    """One grpcio interval-0 StreamImages client: counts frames, overrun notices, latency."""

    def __init__(self, channel: grpc.Channel, warmup: int, want: int) -> None:
        super().__init__(daemon=True)
        self.call = channel.unary_stream(
            "/daqdata.DaqData/StreamImages",
            request_serializer=pb2.StreamImagesRequest.SerializeToString,
            response_deserializer=None,
        )(pb2.StreamImagesRequest(stream_movie_data=True, stream_pulse_height_data=True))
        self.warmup = warmup
        self.want = want
        self.received = 0  # frames numbered >= warmup
        self.dropped_notices = 0
        self.latencies_ns: list[int] = []
        self.warm = threading.Event()  # a warm-up frame (or a later one) has arrived
        self.last_warmup_frame_s = 0.0  # monotonic
        self.done = threading.Event()
        self.error = ""

    def wait_warm(self, quiet_s: float = 0.1) -> None:
        """Return once the warm-up frames have drained: one has arrived, and none for quiet_s.

        Not "once the last warm-up frame has arrived": a subscriber that falls behind may miss
        it (an overrun, R-STREAM-11), and its notice comes only with the next frame."""
        if not self.warm.wait(30):
            raise RuntimeError(f"the subscriber got no warm-up frame ({self.error})")
        while time.monotonic() - self.last_warmup_frame_s < quiet_s:
            time.sleep(quiet_s / 5)

    def run(self) -> None:
        try:
            for data in self.call:
                now = time.time_ns()
                message, number, send_ns = read_reply(data)
                if message:
                    found = _DROPPED.search(message)
                    if found:
                        self.dropped_notices += int(found.group(1))
                if number < self.warmup:
                    self.last_warmup_frame_s = time.monotonic()
                    self.warm.set()
                    continue
                self.warm.set()
                self.received += 1
                if send_ns is not None:
                    self.latencies_ns.append(now - send_ns)
                if self.received >= self.want or number == self.warmup + self.want - 1:
                    break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{exc.code().name}: {exc.details()}"
        finally:
            self.done.set()
            self.call.cancel()


def pff_frames(product: str, count: int, module_id: int) -> list[bytes]:
    """`count` frames in the Unix-socket ingest's framing (module id, PFF frame), all of one
    size (a fixed-width header), with the pixels the uploads carry."""
    from panoseti_daq import pff

    target = product_named(product)
    sources = _pixel_sources(product)
    prefix = module_id.to_bytes(2, "big")
    frames = []
    for number in range(count):
        pixels = np.array(sources[number % len(sources)], dtype=np.uint32)
        frame = PanoFrame.create(target, {}, pixels.astype(np.uint16).view(target.dtype), 1)
        header = hashpipe_header(product, number)
        frames.append(prefix + pff.encode_frame(header, frame.pixels, target, header_width=600))
    return frames


def feed_socket(sock, frames, first, count, rate_hz):
    """Write frames[first:first+count] to the ingest socket, paced at rate_hz."""
    for data in requests(frames, None, first, count, rate_hz):
        sock.sendall(data)


def requests(payloads, offset, first, count, rate_hz):
    """The request stream: payloads in turn, stamped with the send time, paced at rate_hz."""
    start = time.perf_counter()
    period = 1.0 / rate_hz if rate_hz else 0.0
    for index in range(count):
        if period:
            delay = start + index * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        data = payloads[(first + index) % len(payloads)]
        if offset is not None:
            data = data[:offset] + struct.pack("<d", float(time.time_ns())) + data[offset + 8 :]
        yield data


def measure(args: argparse.Namespace) -> dict:
    with contextlib.ExitStack() as stack:
        return _measure(args, stack)


def _measure(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict:
    channel = grpc.insecure_channel(f"127.0.0.1:{args.port}")
    viewer_channel = None
    try:
        if args.init_data_dir:
            init = channel.unary_unary(
                "/daqdata.DaqData/InitHpIo",
                request_serializer=pb2.InitHpIoRequest.SerializeToString,
                response_deserializer=pb2.InitHpIoResponse.FromString,
            )
            reply = init(
                pb2.InitHpIoRequest(
                    data_dir=args.init_data_dir,
                    update_interval_seconds=args.init_interval,
                    force=True,
                ),
                timeout=20,
            )
            if not reply.success:
                raise RuntimeError(f"InitHpIo failed: {reply.error_message}")
        # Frame numbers must be unique (they identify frames at the subscriber): one payload
        # per image, built before the clock starts.
        total = args.warmup + args.images
        payloads = [
            upload_request(args.product, number, args.module_id, args.send_ns)
            for number in range(total)
        ]
        offset = stamp_offset(payloads[0]) if args.send_ns else None
        upload = channel.stream_unary(
            "/daqdata.DaqData/UploadImages", request_serializer=None, response_deserializer=None
        )
        if args.uds_feed:
            feed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            feed.connect(args.uds_feed)
            stack.callback(feed.close)
            frames = pff_frames(args.product, total, args.module_id)

            def send(first: int, count: int, timeout: float) -> None:
                feed_socket(feed, frames, first, count, args.rate)

        else:

            def send(first: int, count: int, timeout: float) -> None:
                upload(requests(payloads, offset, first, count, args.rate), timeout=timeout)

        subscriber = None
        if args.subscriber:
            # The viewer is another client than the producer: a connection of its own.
            viewer_channel = grpc.insecure_channel(
                f"127.0.0.1:{args.port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            subscriber = Subscriber(viewer_channel, args.warmup, args.images)
            subscriber.start()
            subscriber.call.initial_metadata()  # subscribed before the first upload
        if args.warmup:
            send(0, args.warmup, 120)
            if subscriber is not None:
                subscriber.wait_warm()
        counts: dict[str, int] = {}
        counting = stack.enter_context(contextlib.ExitStack())
        if args.count_syscalls and args.server_pid:
            counting.enter_context(counting_syscalls(args.server_pid, counts))
        cpu0 = server_user_system_s(args.server_pid) if args.server_pid else (0.0, 0.0)
        if args.announce:
            print("measuring", flush=True)
        delays0 = send_delays(args.metrics_port) if args.metrics_port else None
        start = time.perf_counter()
        send(args.warmup, args.images, 300)
        upload_s = time.perf_counter() - start
        result: dict = {
            "product": args.product,
            "send_ns_key": args.send_ns,
            "rate_hz": args.rate,
            "images": args.images,
            "uploaded_per_s": args.images / upload_s,
        }
        counted = args.images
        if subscriber is not None:
            # The last frames are in flight: wait until they arrive or nothing more comes.
            seen = -1
            while not subscriber.done.wait(1.0) and subscriber.received != seen:
                seen = subscriber.received
            elapsed = time.perf_counter() - start
            subscriber.call.cancel()
            subscriber.join(5)
            counted = subscriber.received
            result |= {
                "delivered_per_s": subscriber.received / elapsed,
                "lost": args.images - subscriber.received,
                "dropped_notices": subscriber.dropped_notices,
            }
            if subscriber.error:
                result["stream_error"] = subscriber.error
            if subscriber.latencies_ns:
                ms = np.array(subscriber.latencies_ns) / 1e6
                result |= {f"p{p}_ms": float(np.percentile(ms, p)) for p in (50, 99)}
                result["max_ms"] = float(ms.max())
        if delays0 is not None:
            result |= server_share(delays0, send_delays(args.metrics_port))
        if args.server_pid:
            user, system = server_user_system_s(args.server_pid)
            per_1000 = 1000 / max(counted, 1)
            result["server_cpu_s_per_1000"] = (user - cpu0[0] + system - cpu0[1]) * per_1000
            result["server_system_s_per_1000"] = (system - cpu0[1]) * per_1000
        if args.count_syscalls:
            counting.close()  # perf stops counting: its figures are in `counts`
            for name, value in counts.items():
                result[f"server_{name}_per_frame"] = value / max(counted, 1)
        return result
    finally:
        channel.close()
        if viewer_channel is not None:
            viewer_channel.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpcio_load", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--rate", type=float, default=0.0, help="images/s; 0: as fast as it can")
    parser.add_argument("--product", choices=sorted(_PRODUCTS), default="img16")
    parser.add_argument("--module-id", type=int, default=1)
    parser.add_argument("--send-ns", action="store_true", help="stamp an extra header key")
    parser.add_argument("--no-subscriber", dest="subscriber", action="store_false")
    parser.add_argument("--init-data-dir", default="", help="InitHpIo with this data_dir first")
    parser.add_argument("--init-interval", type=float, default=1.0, help="its scan interval")
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--metrics-port", type=int, default=0, help="ours: its /metrics port")
    parser.add_argument(
        "--announce", action="store_true", help='print "measuring" as the measured part begins'
    )
    parser.add_argument(
        "--count-syscalls",
        action="store_true",
        help="with --server-pid: the server's system calls per frame (perf stat)",
    )
    parser.add_argument(
        "--uds-feed", default="", help="feed PFF frames to this ingest socket instead of uploading"
    )
    args = parser.parse_args(argv)
    if args.images < 1 or args.warmup < 0 or args.rate < 0:
        parser.error("--images must be >= 1, --warmup and --rate >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(measure(parse_args(argv))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
