"""The message cache and the CaptureUblox subscribers' queues: loop-free (R-UBX-CAP-3, CAP-6).

`Fanout.publish` keeps the newest message of each name and offers it to every subscriber whose
patterns match; `subscribe` takes the snapshot and adds the subscriber in one synchronous step,
so no message is both in the snapshot and live, and none falls between. A subscriber's queue is
bounded: a message finding it full is dropped for that subscriber only and counted, and the next
message it gets carries the count. Nothing here waits: a subscriber's `wake` callback tells its
handler that there is news.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .protocol import Received

__all__ = ["Delivery", "Ending", "Fanout", "Notice", "Subscriber"]


class Patterns(Protocol):
    def matches(self, name: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message for one subscriber; `dropped` messages were lost to its full queue before it."""

    received: Received
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class Notice:
    """A notice for every subscriber (R-UBX-CAP-7: silence)."""

    message: str


@dataclass(frozen=True, slots=True)
class Ending:
    """How the server ends a stream: a gRPC status name and its details (R-UBX-CAP-8)."""

    status: str
    details: str


class Subscriber:
    """One CaptureUblox stream's queue."""

    def __init__(self, patterns: Patterns, limit: int, wake: Callable[[], None]) -> None:
        self.patterns = patterns
        self.limit = limit
        self._wake = wake
        self._queue: deque[Delivery | Notice] = deque()
        self._dropped = 0
        self.dropped_total = 0
        self.ended: Ending | None = None

    def offer(self, received: Received) -> None:
        if self.ended is not None or not self.patterns.matches(received.name):
            return
        if len(self._queue) >= self.limit:
            self._dropped += 1
            self.dropped_total += 1
            return
        self._queue.append(Delivery(received, self._dropped))
        self._dropped = 0
        self._wake()

    def notify(self, notice: Notice) -> None:
        if self.ended is None:
            self._queue.append(notice)
            self._wake()

    def end(self, ending: Ending) -> None:
        """End the stream at once with `ending`; what is still queued is not sent."""
        if self.ended is None:
            self.ended = ending
            self._queue.clear()
            self._wake()

    def seed(self, snapshot: list[Received]) -> None:
        """Queue the snapshot, ignoring the limit (Fanout.subscribe)."""
        self._queue.extend(Delivery(received) for received in snapshot)
        if self._queue:
            self._wake()

    def take(self) -> list[Delivery | Notice]:
        """Everything queued, oldest first."""
        items = list(self._queue)
        self._queue.clear()
        return items


class Fanout:
    """The cache of the newest message per name, and the subscribers."""

    def __init__(self) -> None:
        self.cache: dict[str, Received] = {}  # in the order the names were first seen
        self.subscribers: set[Subscriber] = set()
        self._when_empty: list[Callable[[], None]] = []

    def publish(self, received: Received) -> None:
        self.cache[received.name] = received
        for subscriber in self.subscribers:
            subscriber.offer(received)

    def subscribe(self, subscriber: Subscriber) -> None:
        """Queue the snapshot (the newest cached message of each matching name, in first-seen
        order) and add the subscriber, in one step; the snapshot ignores the queue's limit."""
        matches = subscriber.patterns.matches
        subscriber.seed([r for r in self.cache.values() if matches(r.name)])
        self.subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        if not self.subscribers:
            callbacks, self._when_empty = self._when_empty, []
            for callback in callbacks:
                callback()

    def notify_all(self, notice: Notice) -> None:
        for subscriber in self.subscribers:
            subscriber.notify(notice)

    def end_all(self, ending: Ending) -> int:
        """End every subscriber's stream; the number ended."""
        for subscriber in self.subscribers:
            subscriber.end(ending)
        return len(self.subscribers)

    def call_when_empty(self, callback: Callable[[], None]) -> None:
        """Call `callback` once no subscriber is left (at once when there is none)."""
        if not self.subscribers:
            callback()
        else:
            self._when_empty.append(callback)

    @property
    def active(self) -> int:
        return sum(1 for s in self.subscribers if s.ended is None)
