"""The cache and the subscribers' queues, loop-free (R-UBX-CAP-3, R-UBX-CAP-6, R-UBX-CAP-7)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from panoseti_daq.ublox.fanout import Delivery, Ending, Fanout, Notice, Subscriber
from panoseti_daq.ublox.protocol import Received, compile_patterns

NAMES = ["TIM-TP", "NAV-TIMEUTC", "TIM-SVIN", "MON-VER"]


def received(name: str, n: int) -> Received:
    return Received(name, bytes([n % 256]), n, None)


class Bell:
    def __init__(self) -> None:
        self.rings = 0

    def __call__(self) -> None:
        self.rings += 1


@given(
    st.lists(st.sampled_from(NAMES), max_size=40),
    st.integers(0, 40),
    st.lists(st.sampled_from(["TIM", "NAV", "TIM-TP$", "MON"]), max_size=2),
)
def test_snapshot_then_live_loses_and_repeats_nothing(names, split, patterns):
    """R-UBX-CAP-3: newest per matching name in first-seen order, then every later match."""
    fanout = Fanout()
    messages = [received(name, i) for i, name in enumerate(names)]
    split = min(split, len(messages))
    for message in messages[:split]:
        fanout.publish(message)
    compiled = compile_patterns(patterns)
    subscriber = Subscriber(compiled, limit=1000, wake=Bell())
    fanout.subscribe(subscriber)
    for message in messages[split:]:
        fanout.publish(message)
    got = [item.received for item in subscriber.take() if isinstance(item, Delivery)]
    newest: dict[str, Received] = {}
    for message in messages[:split]:
        newest[message.name] = message
    snapshot = [m for m in newest.values() if compiled.matches(m.name)]
    live = [m for m in messages[split:] if compiled.matches(m.name)]
    assert got == snapshot + live


def test_full_queue_drops_for_that_subscriber_only_and_counts():
    """R-UBX-CAP-6: drops are counted, and the next delivery carries the count."""
    fanout = Fanout()
    slow = Subscriber(compile_patterns([]), limit=2, wake=Bell())
    fast = Subscriber(compile_patterns([]), limit=100, wake=Bell())
    fanout.subscribe(slow)
    fanout.subscribe(fast)
    for i in range(5):
        fanout.publish(received("TIM-TP", i))
    assert [item.dropped for item in slow.take()] == [0, 0]
    fanout.publish(received("TIM-TP", 5))
    (item,) = slow.take()
    assert isinstance(item, Delivery) and item.dropped == 3 and item.received.t_ns == 5
    assert len(fast.take()) == 6


def test_notices_endings_and_when_empty():
    """R-UBX-CAP-7 notices reach every stream; R-UBX-CAP-8 endings clear the queue; the
    callback waits for the last subscriber to leave."""
    fanout = Fanout()
    bell = Bell()
    subscriber = Subscriber(compile_patterns(["TIM"]), limit=5, wake=bell)
    fanout.subscribe(subscriber)
    fanout.notify_all(Notice("no UBX message from /dev/x for 5 s"))
    assert subscriber.take() == [Notice("no UBX message from /dev/x for 5 s")]
    left = []
    fanout.call_when_empty(lambda: left.append(True))
    fanout.publish(received("TIM-TP", 1))
    assert fanout.end_all(Ending("UNAVAILABLE", "server shutting down")) == 1
    assert subscriber.take() == [] and subscriber.ended == Ending(
        "UNAVAILABLE", "server shutting down"
    )
    assert fanout.active == 0 and not left
    fanout.unsubscribe(subscriber)
    assert left == [True]
    assert bell.rings >= 3
