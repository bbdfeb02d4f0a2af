"""The hub: the stream rules of StreamImages as a sans-IO state machine (spec §5).

No I/O, no clocks, no event loop: every operation that depends on time takes `now`, monotonic
seconds from the caller, and returns what to do. Every frame source (scanner, uploads,
simulation, Unix-socket ingest) calls `Hub.publish`, which never waits for a reader
(R-STREAM-11). Each StreamImages client has a `Subscriber`:

- it keeps only the frames its `Subscription` wants (R-STREAM-6, R-STREAM-7), each once, in the
  hub's sequence order (R-STREAM-8);
- interval 0 (R-STREAM-10): a bounded queue of every wanted frame, in order. A frame that finds
  it full is dropped for that client and counted (an overrun); the next frame queued carries how
  many were lost just before it. Only a reader whose queue stays full while it takes nothing for
  `max_enqueue_timeouts` x `reader_timeout_s` is ended (R-STREAM-11);
- interval > 0 (R-STREAM-9): sample-and-hold, the newest unsent frame of each (module, product),
  handed out at most once per interval; a paced reader never overflows;
- a reader with nothing to send for `max_dequeue_timeouts` x `reader_timeout_s` is ended
  (R-STREAM-12).

The handler that serves a subscriber asks `Subscriber.poll(now)`, which answers `Send`, `Wait`
or `End`; the hub calls the subscriber's `wake` callback (the shell's, e.g. setting an event)
when a subscriber that had nothing to send gets something, and when it is ended.

The hub also keeps the counters operators read (server/stats.py): frames in per (module,
product, source), when the newest frame of each (module, product) entered, and per subscriber
its peer, subscription, frames sent, overruns, queue depth and send delays: how long each frame
waited in the server, from entering the hub until the shell had written it to the client's
connection (`Subscriber.record_sent`), as a histogram.
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass

from ..frames import PanoFrame
from ..products import ImageType
from ..wire.codec import encode_pano_image

__all__ = [
    "SEND_DELAY_BOUNDS_S",
    "SOURCES",
    "DelayHistogram",
    "End",
    "EndReason",
    "Hub",
    "HubEntry",
    "ReaderLimits",
    "Send",
    "Subscriber",
    "Subscription",
    "Wait",
    "check_source",
]

# Where frames come from, as `Hub.publish` and the frames-in counters name it.
SOURCES = frozenset({"scanner", "upload", "socket", "simulation"})

Key = tuple[int, str]  # (module id, product name)

# Upper bounds (seconds) of the send-delay histogram's buckets, as Prometheus buckets: from a
# millisecond (an interval-0 reader that keeps up) to a minute (the longest update interval).
SEND_DELAY_BOUNDS_S = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class DelayHistogram:
    """Counts of delays per bucket of SEND_DELAY_BOUNDS_S (the last bucket: above them all)
    and their sum; a bucket counts the delays up to and including its bound."""

    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(SEND_DELAY_BOUNDS_S) + 1)
        self.sum_s = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, delay_s: float) -> None:
        self.counts[bisect_left(SEND_DELAY_BOUNDS_S, delay_s)] += 1
        self.sum_s += delay_s

    def add(self, other: DelayHistogram) -> None:
        """Add `other`'s counts and sum to these."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum_s += other.sum_s

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, delays up to it) per bucket, the last bound math.inf: Prometheus's
        buckets."""
        total = 0
        out = []
        for bound, count in zip((*SEND_DELAY_BOUNDS_S, math.inf), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class HubEntry:
    """A frame in the hub: its sequence number, when it entered, and (lazily) its wire bytes."""

    __slots__ = ("_encoded", "entered_s", "frame", "seq")

    def __init__(
        self, seq: int, frame: PanoFrame, entered_s: float, encoded: bytes | None = None
    ) -> None:
        self.seq = seq
        self.frame = frame
        self.entered_s = entered_s
        self._encoded = encoded

    @property
    def key(self) -> Key:
        return (self.frame.module_id, self.frame.product.name)

    @property
    def encoded(self) -> bytes:
        if self._encoded is None:
            self._encoded = encode_pano_image(self.frame)
        return self._encoded


@dataclass(frozen=True)
class Subscription:
    """What one client asked for (R-STREAM-6, R-STREAM-7, R-STREAM-9)."""

    movie: bool
    pulse_height: bool
    module_ids: frozenset[int] = frozenset()
    interval_s: float = 0.0

    def label(self) -> str:
        """What was asked for, for operators: "movie+ph every 0.5 s modules 1,3"."""
        kinds = "+".join(
            k for k, asked in (("movie", self.movie), ("ph", self.pulse_height)) if asked
        )
        modules = ",".join(str(m) for m in sorted(self.module_ids)) or "all"
        return f"{kinds} every {self.interval_s:g} s modules {modules}"

    def wants(self, frame: PanoFrame) -> bool:
        if self.module_ids and frame.module_id not in self.module_ids:
            return False
        return self.movie if frame.product.image_type is ImageType.MOVIE else self.pulse_height


@dataclass(frozen=True)
class ReaderLimits:
    """The server's limits for every reader (R-STREAM-10 .. R-STREAM-12)."""

    max_queue: int = 50
    reader_timeout_s: float = 5.0
    max_enqueue_timeouts: int = 2
    max_dequeue_timeouts: int = 3
    batch_limit: int = 64  # frames handed out by one poll

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_enqueue_timeouts", "max_dequeue_timeouts", "batch_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"ReaderLimits.{name} must be >= 1, not {getattr(self, name)}")
        if not self.reader_timeout_s >= 0:
            raise ValueError(
                f"ReaderLimits.reader_timeout_s must be >= 0, not {self.reader_timeout_s}"
            )

    @property
    def too_slow_after_s(self) -> float:
        """R-STREAM-11: seconds a full queue may go without a take."""
        return self.max_enqueue_timeouts * self.reader_timeout_s

    @property
    def idle_after_s(self) -> float:
        """R-STREAM-12: seconds a reader may have nothing to send."""
        return self.max_dequeue_timeouts * self.reader_timeout_s


class EndReason(enum.Enum):
    """Why the hub ended a subscriber; the RPC shell maps it to a gRPC status."""

    RECONFIGURED = "reconfigured"  # R-STREAM-13
    SHUTDOWN = "shutdown"  # R-STREAM-3, R-STOP-1
    TOO_SLOW = "too slow"  # R-STREAM-11
    IDLE = "idle"  # R-STREAM-12
    SOURCE_FAILED = "source failed"  # R-SRC-1


@dataclass(frozen=True, slots=True)
class Send:
    """Send these frames now, in order; each with the frames dropped just before it."""

    frames: list[tuple[HubEntry, int]]


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to send: poll again at `until_s` (monotonic seconds) or when woken."""

    until_s: float


@dataclass(frozen=True, slots=True)
class End:
    """The stream is over: `reason` and a message for the client."""

    reason: EndReason
    message: str


Decision = Send | Wait | End


def _nothing() -> None:
    pass


class Subscriber:
    """One StreamImages client: its frames waiting to be sent, its timers and counters."""

    def __init__(
        self,
        subscription: Subscription,
        limits: ReaderLimits,
        now: float,
        peer: str = "",
        wake: Callable[[], None] | None = None,
        client_id: int = 0,
    ) -> None:
        self.subscription = subscription
        self.limits = limits
        self.peer = peer
        self.client_id = client_id
        self.sent = 0
        self.dropped = 0
        self.send_delay = DelayHistogram()
        self.ended: End | None = None
        self._wake = wake or _nothing
        self._paced = subscription.interval_s > 0
        self._queue: deque[tuple[HubEntry, int]] = deque()  # interval 0
        self._pending: dict[Key, HubEntry] = {}  # paced
        self._unreported = 0  # overruns since the last queued frame
        self._full_since: float | None = None  # the queue filled up then, and nothing was taken
        self._idle_since = now  # the last take (or the subscription)
        self._next_send_s = now  # paced: the earliest next batch

    @property
    def paced(self) -> bool:
        return self._paced

    @property
    def queue_depth(self) -> int:
        """Frames waiting to be sent to this client."""
        return len(self._pending) if self._paced else len(self._queue)

    @property
    def deadline_s(self) -> float:
        """When this subscriber ends by itself if nothing changes (math.inf: never)."""
        if self.ended is not None:
            return math.inf
        if self._full_since is not None:
            return self._full_since + self.limits.too_slow_after_s
        if self.queue_depth == 0:
            return self._idle_since + self.limits.idle_after_s
        return math.inf

    def offer(self, entry: HubEntry, now: float) -> None:
        """Hub side: a wanted frame for this client; never waits."""
        if self.ended is not None:
            return
        # A frame that comes after the idle deadline (R-STREAM-12) but before the handler has
        # looked still counts: the reader is not idle any more.
        if self._paced:
            pending = self._pending
            was_empty = not pending
            pending[entry.key] = entry  # R-STREAM-9: sample-and-hold
            if was_empty:
                self._wake()
            return
        queue = self._queue
        depth = len(queue)
        if depth < self.limits.max_queue:
            queue.append((entry, self._unreported))
            self._unreported = 0
            if depth + 1 == self.limits.max_queue:
                self._full_since = now
            if not depth:
                self._wake()
            return
        if self.expire(now) is None:
            # R-STREAM-11: an overrun; the client hears of it with its next queued frame.
            self.dropped += 1
            self._unreported += 1

    def poll(self, now: float) -> Decision:
        """Handler side: what to do now. A `Send` counts its frames as taken and sent."""
        ended = self.expire(now)
        if ended is not None:
            return ended
        if self._paced:
            pending = self._pending
            if not pending:
                return Wait(self._idle_since + self.limits.idle_after_s)
            if now < self._next_send_s:
                return Wait(self._next_send_s)  # R-STREAM-9: at most once per interval
            frames = [(entry, 0) for entry in sorted(pending.values(), key=_seq)]
            pending.clear()
            self._next_send_s = now + self.subscription.interval_s
        else:
            queue = self._queue
            if not queue:
                return Wait(self._idle_since + self.limits.idle_after_s)
            count = min(len(queue), self.limits.batch_limit)
            frames = [queue.popleft() for _ in range(count)]
            self._full_since = None
        self._idle_since = now
        self.sent += len(frames)
        return Send(frames)

    def record_sent(self, frames: list[tuple[HubEntry, int]], now: float) -> None:
        """Shell side: the frames of a `Send` have been written to the client's connection at
        `now`; count how long each waited since it entered the hub."""
        histogram = self.send_delay
        counts = histogram.counts
        total = 0.0
        for entry, _ in frames:  # DelayHistogram.observe, inlined: this runs for every frame
            delay = now - entry.entered_s
            counts[bisect_left(SEND_DELAY_BOUNDS_S, delay)] += 1
            total += delay
        histogram.sum_s += total

    def expire(self, now: float) -> End | None:
        """Apply the timeouts at `now` (R-STREAM-11, R-STREAM-12); the end, if ended."""
        if self.ended is None and now >= self.deadline_s:
            limits = self.limits
            if self._full_since is not None:
                self.end(
                    EndReason.TOO_SLOW,
                    f"client too slow: no frame taken for {limits.too_slow_after_s:g} s, "
                    f"{self.dropped} frames dropped",
                )
            else:
                self.end(EndReason.IDLE, f"no data for {limits.idle_after_s:g} s: stream ended")
        return self.ended

    def end(self, reason: EndReason, message: str) -> None:
        """End this client's stream (the first end wins); its waiting frames are let go."""
        if self.ended is None:
            self.ended = End(reason, message)
            self._queue.clear()
            self._pending.clear()
            self._wake()


def _seq(entry: HubEntry) -> int:
    return entry.seq


@dataclass(frozen=True)
class SubscriberStats:
    """One StreamImages client as operators see it; `client_id` numbers clients from 1."""

    client_id: int
    peer: str
    subscription: Subscription
    sent: int
    dropped: int
    queue_depth: int
    send_delay: DelayHistogram


class Hub:
    """Newest frame per (module, product), the subscribers, and the counters."""

    def __init__(self, valid_products: Collection[str], limits: ReaderLimits) -> None:
        self.valid_products = frozenset(valid_products)
        self.limits = limits
        self.latest: dict[Key, HubEntry] = {}
        self.published = 0
        # Frames in per (module id, product name, source).
        self.frames_in: dict[tuple[int, str, str], int] = {}
        self._seq = 0
        self._clients = 0  # subscribers so far: the next one's client_id is this + 1
        self._subscribers: set[Subscriber] = set()
        self._when_empty: list[Callable[[], None]] = []
        # Frames sent to and dropped for clients that have gone.
        self._sent_before = 0
        self._dropped_before = 0
        self._send_delay_before = DelayHistogram()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def frames_sent(self) -> int:
        """Frames handed to StreamImages clients since the server started."""
        return self._sent_before + sum(s.sent for s in self._subscribers)

    @property
    def frames_dropped(self) -> int:
        """Overruns of slow clients since the server started (R-STREAM-11)."""
        return self._dropped_before + sum(s.dropped for s in self._subscribers)

    def send_delay(self) -> DelayHistogram:
        """The send delays of every frame sent since the server started, ended clients' too."""
        total = DelayHistogram()
        total.add(self._send_delay_before)
        for subscriber in self._subscribers:
            total.add(subscriber.send_delay)
        return total

    def subscriber_stats(self) -> list[SubscriberStats]:
        """Every current client's peer, subscription and counters."""
        return [
            SubscriberStats(
                s.client_id, s.peer, s.subscription, s.sent, s.dropped, s.queue_depth, s.send_delay
            )
            for s in sorted(self._subscribers, key=lambda s: s.client_id)
        ]

    def newest_entered_s(self) -> dict[Key, float]:
        """When (monotonic seconds, as passed to `publish`) the newest frame of each key entered."""
        return {key: entry.entered_s for key, entry in self.latest.items()}

    def publish(
        self, frame: PanoFrame, source: str, now: float, encoded: bytes | None = None
    ) -> None:
        """Put a frame into the hub and offer it to every interested client; never waits.

        `source` is one of SOURCES; `now` is monotonic seconds. `encoded`, when given, are the
        frame's PanoImage bytes (an upload's, as received).
        """
        check_source(source)
        self._seq += 1
        entry = HubEntry(self._seq, frame, now, encoded)
        key = entry.key
        self.latest[key] = entry
        self.published += 1
        counted = (key[0], key[1], source)
        self.frames_in[counted] = self.frames_in.get(counted, 0) + 1
        for subscriber in self._subscribers:
            if subscriber.subscription.wants(frame):
                subscriber.offer(entry, now)

    def subscribe(
        self,
        subscription: Subscription,
        now: float,
        *,
        peer: str = "",
        wake: Callable[[], None] | None = None,
    ) -> Subscriber:
        """A new client; a paced client starts with the newest frame of each subscribed key."""
        self._clients += 1
        subscriber = Subscriber(subscription, self.limits, now, peer, wake, self._clients)
        self._subscribers.add(subscriber)
        if subscriber.paced:
            for entry in sorted(self.latest.values(), key=_seq):
                if subscription.wants(entry.frame):
                    subscriber.offer(entry, now)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """A client has gone; its counters move into the totals."""
        if subscriber not in self._subscribers:
            return
        self._subscribers.remove(subscriber)
        self._sent_before += subscriber.sent
        self._dropped_before += subscriber.dropped
        self._send_delay_before.add(subscriber.send_delay)
        if not self._subscribers:
            callbacks, self._when_empty = self._when_empty, []
            for callback in callbacks:
                callback()

    def call_when_empty(self, callback: Callable[[], None]) -> None:
        """Call `callback` once no client is subscribed (now, if none is)."""
        if self._subscribers:
            self._when_empty.append(callback)
        else:
            callback()

    def end_all(self, reason: EndReason, message: str) -> None:
        """End every client's stream (reconfiguration, shutdown)."""
        for subscriber in list(self._subscribers):
            subscriber.end(reason, message)

    def clear(self) -> None:
        """Forget the newest frames (a new data source starts)."""
        self.latest.clear()


def check_source(source: str) -> None:
    """ValueError naming the valid sources unless `source` is one of SOURCES."""
    if source not in SOURCES:
        raise ValueError(f"unknown frame source {source!r} (valid: {', '.join(sorted(SOURCES))})")
