"""The hub: the newest frame of every (module, product) and one bounded queue per reader (§5).

Every frame source (scanner, uploads, simulation, Unix-socket ingest) calls `Hub.publish`,
which is synchronous and never waits for a reader (R-STREAM-11). Each StreamImages client has a
`Subscriber`:

- interval 0 (R-STREAM-10): a bounded anyio memory object stream of every matching frame, in
  order. A frame that finds it full is dropped for that client and counted; after
  `max_enqueue_timeouts` in a row the hub ends that client alone with RESOURCE_EXHAUSTED.
- interval > 0 (R-STREAM-9): sample-and-hold. The subscriber keeps only the newest unsent frame
  of each (module, product), so a paced client never falls behind and never overflows; a
  one-slot stream rings its handler when something new arrives.

Frames get a server-wide increasing sequence number on entering the hub (R-STREAM-8); each frame
is encoded once, lazily, and the bytes are shared by every client.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection
from dataclasses import dataclass, field

import anyio
from grpclib.const import Status

from ..codec import encode_pano_image
from ..frames import PanoFrame
from ..products import ImageType

__all__ = ["Hub", "HubEntry", "Subscriber", "SubscriberEnded", "Subscription"]


class HubEntry:
    """A frame in the hub with its sequence number and (lazily) its wire bytes."""

    __slots__ = ("_encoded", "frame", "seq")

    def __init__(self, seq: int, frame: PanoFrame, encoded: bytes | None = None) -> None:
        self.seq = seq
        self.frame = frame
        self._encoded = encoded

    @property
    def key(self) -> tuple[int, str]:
        return (self.frame.module_id, self.frame.product.name)

    @property
    def encoded(self) -> bytes:
        if self._encoded is None:
            self._encoded = encode_pano_image(self.frame)
        return self._encoded


@dataclass(frozen=True)
class Subscription:
    """What one client asked for (R-STREAM-6, R-STREAM-7)."""

    movie: bool
    pulse_height: bool
    module_ids: frozenset[int] = frozenset()
    interval_s: float = 0.0

    def wants(self, frame: PanoFrame) -> bool:
        if self.module_ids and frame.module_id not in self.module_ids:
            return False
        return self.movie if frame.product.image_type is ImageType.MOVIE else self.pulse_height


class SubscriberEnded(Exception):
    """The hub ended this subscriber; `status` and `message` say why."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False)
class Subscriber:
    """One StreamImages client's queue and counters."""

    subscription: Subscription
    max_queue: int
    max_enqueue_timeouts: int
    enqueue_timeouts: int = 0
    dropped: int = 0
    sent: int = 0
    ended: SubscriberEnded | None = None
    _pending: dict[tuple[int, str], HubEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        size = 1 if self.paced else self.max_queue
        self._send, self._receive = anyio.create_memory_object_stream[HubEntry | None](size)

    @property
    def paced(self) -> bool:
        return self.subscription.interval_s > 0

    def offer(self, entry: HubEntry) -> None:
        """Hub side: hand a frame to this client without waiting."""
        if self.ended is not None:
            return
        if self.paced:
            self._pending[entry.key] = entry
            with contextlib.suppress(anyio.WouldBlock):  # the bell may be ringing already
                self._send.send_nowait(None)
            return
        try:
            self._send.send_nowait(entry)
        except anyio.WouldBlock:
            self.dropped += 1
            self.enqueue_timeouts += 1
            if self.enqueue_timeouts >= self.max_enqueue_timeouts:
                self.end(
                    Status.RESOURCE_EXHAUSTED,
                    f"client too slow: {self.dropped} frames dropped "
                    f"(queue of {self.max_queue} full {self.enqueue_timeouts} times in a row)",
                )
        else:
            self.enqueue_timeouts = 0

    def end(self, status: Status, message: str) -> None:
        """Hub side: end this client's stream with a status."""
        if self.ended is None:
            self.ended = SubscriberEnded(status, message)
            self._send.close()

    async def next_batch(self, timeout_s: float, limit: int = 64) -> list[HubEntry]:
        """Handler side: the next frames to send, [] after `timeout_s` without any.

        Raises SubscriberEnded once the hub has ended this client.
        """
        receive = self._receive
        try:
            try:
                first = receive.receive_nowait()
            except anyio.WouldBlock:
                with anyio.move_on_after(timeout_s) as waited:
                    first = await receive.receive()
                if waited.cancelled_caught:
                    if self.ended is not None:
                        raise self.ended from None
                    return []
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise self.ended or SubscriberEnded(Status.CANCELLED, "stream closed") from None
        return self._batch(first, limit)

    def _batch(self, first: HubEntry | None, limit: int) -> list[HubEntry]:
        if self.paced:
            batch = sorted(self._pending.values(), key=lambda e: e.seq)
            self._pending.clear()
            return batch
        batch = [first] if first is not None else []
        receive = self._receive
        while len(batch) < limit:
            try:
                item = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            if item is not None:
                batch.append(item)
        return batch

    def close(self) -> None:
        self._send.close()
        self._receive.close()


class Hub:
    """Newest frame per (module, product) and the subscribers that receive new frames."""

    def __init__(self, valid_products: Collection[str]) -> None:
        self.valid_products = frozenset(valid_products)
        self.latest: dict[tuple[int, str], HubEntry] = {}
        self.published = 0
        self._seq = 0
        self._subscribers: set[Subscriber] = set()
        # Frames sent to and dropped for clients that have gone.
        self._sent_before = 0
        self._dropped_before = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def frames_sent(self) -> int:
        """Frames sent to StreamImages clients since the server started."""
        return self._sent_before + sum(s.sent for s in self._subscribers)

    @property
    def frames_dropped(self) -> int:
        """Frames dropped for slow clients since the server started (R-STREAM-11)."""
        return self._dropped_before + sum(s.dropped for s in self._subscribers)

    def publish(self, frame: PanoFrame, encoded: bytes | None = None) -> None:
        """Put a frame into the hub and offer it to every interested client; never waits.

        `encoded`, when given, are the frame's PanoImage bytes (an upload's, as received).
        """
        self._seq += 1
        entry = HubEntry(self._seq, frame, encoded)
        self.latest[entry.key] = entry
        self.published += 1
        for subscriber in self._subscribers:
            if subscriber.subscription.wants(frame):
                subscriber.offer(entry)

    def subscribe(
        self, subscription: Subscription, max_queue: int, max_enqueue_timeouts: int
    ) -> Subscriber:
        """A new client; a paced client starts with the newest frame of each subscribed key."""
        subscriber = Subscriber(subscription, max_queue, max_enqueue_timeouts)
        self._subscribers.add(subscriber)
        if subscriber.paced:
            for entry in sorted(self.latest.values(), key=lambda e: e.seq):
                if subscription.wants(entry.frame):
                    subscriber.offer(entry)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
            self._sent_before += subscriber.sent
            self._dropped_before += subscriber.dropped
        subscriber.close()

    def end_all(self, status: Status, message: str) -> None:
        """End every client's stream (reconfiguration, shutdown)."""
        for subscriber in list(self._subscribers):
            subscriber.end(status, message)

    def clear(self) -> None:
        """Forget the newest frames (a new data source starts)."""
        self.latest.clear()


def valid_interval(interval_s: float, maximum_s: float) -> bool:
    """R-STREAM-5: 0 <= interval <= maximum, not NaN."""
    return not math.isnan(interval_s) and 0.0 <= interval_s <= maximum_s
