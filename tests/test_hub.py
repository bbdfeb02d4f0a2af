"""The hub's stream rules as a pure state machine (server/hub.py), against a reference model.

No sockets, no event loop, no clock: time is a number the test advances. Hypothesis drives
random sequences of publish / take / advance-time / end operations; after every step each
subscriber's state is compared with a simple model of the rules (R-STREAM-6 .. R-STREAM-12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from panoseti_daq.server.hub import (
    SEND_DELAY_BOUNDS_S,
    SOURCES,
    DelayHistogram,
    End,
    EndReason,
    Hub,
    ReaderLimits,
    Send,
    Subscriber,
    Subscription,
    Wait,
)
from tests.conftest import examples
from tests.helpers import movie_frame, ph_frame

PRODUCTS = ("img16", "img8", "ph256", "ph1024")
# A few frames made once: the hub never looks at pixels.
FRAMES = {
    (module, kind): (movie_frame(module, 0) if kind == "movie" else ph_frame(module, 0))
    for module in (1, 2)
    for kind in ("movie", "ph")
}
DELAYS = st.sampled_from([0.0, 0.01, 0.1, 0.3, 0.5, 1.0, 1.7, 2.5])


@dataclass
class QueueModel:
    """What an interval-0 reader should see: every wanted frame unless its queue was full."""

    subscriber: Subscriber
    wake_count: int = 0
    depth: int = 0
    dropped: int = 0
    full_since: float | None = None
    idle_since: float = 0.0
    ended: EndReason | None = None
    wanted: list[int] = field(default_factory=list)  # seqs offered while not ended
    received: list[int] = field(default_factory=list)
    reported: int = 0  # the sum of dropped_before of the frames received


@dataclass
class PacedModel:
    """What a paced reader should see: per interval, the newest unsent frame of each key."""

    subscriber: Subscriber
    newest: dict[tuple[int, str], int] = field(default_factory=dict)  # key -> newest seq
    sent_seqs: set[int] = field(default_factory=set)
    last_sent: dict[tuple[int, str], int] = field(default_factory=dict)
    last_send_s: float = -math.inf
    idle_since: float = 0.0
    ended: EndReason | None = None


class HubMachine(RuleBasedStateMachine):
    @initialize(
        max_queue=st.integers(1, 5),
        batch_limit=st.integers(1, 4),
        interval_s=st.sampled_from([0.2, 0.5, 1.0]),
        enqueue=st.integers(1, 3),
        dequeue=st.integers(1, 3),
    )
    def start(self, max_queue, batch_limit, interval_s, enqueue, dequeue):
        self.now = 100.0
        self.limits = ReaderLimits(
            max_queue=max_queue,
            reader_timeout_s=1.0,
            max_enqueue_timeouts=enqueue,
            max_dequeue_timeouts=dequeue,
            batch_limit=batch_limit,
        )
        self.hub = Hub(PRODUCTS, self.limits)
        self.seq = 0
        self.queues: dict[str, QueueModel] = {}
        for name, subscription in {
            "all": Subscription(movie=True, pulse_height=True),
            "movie_of_1": Subscription(movie=True, pulse_height=False, module_ids=frozenset({1})),
            "ph": Subscription(movie=False, pulse_height=True),
        }.items():
            model = QueueModel(None, idle_since=self.now)  # type: ignore[arg-type]

            def wake(model: QueueModel = model) -> None:
                model.wake_count += 1

            model.subscriber = self.hub.subscribe(subscription, self.now, peer=name, wake=wake)
            self.queues[name] = model
        # A reader that takes whatever it is given right after every publish.
        self.keeper = QueueModel(
            self.hub.subscribe(Subscription(True, True), self.now, peer="keeper"),
            idle_since=self.now,
        )
        self.paced = PacedModel(
            self.hub.subscribe(
                Subscription(True, True, interval_s=interval_s), self.now, peer="paced"
            ),
            idle_since=self.now,
        )

    # -- the model's rules -----------------------------------------------------------------
    def _due(self, model: QueueModel) -> EndReason | None:
        """The end R-STREAM-11 or R-STREAM-12 says is due at self.now, if any."""
        if model.full_since is not None:
            if self.now >= model.full_since + self.limits.too_slow_after_s:
                return EndReason.TOO_SLOW
        elif model.depth == 0 and self.now >= model.idle_since + self.limits.idle_after_s:
            return EndReason.IDLE
        return None

    def _expire(self, model: QueueModel) -> None:
        """The reader looks (polls): a due end happens."""
        if model.ended is None:
            model.ended = self._due(model)

    def _offer(self, model: QueueModel, seq: int) -> None:
        # A frame overdue for an idle reader still counts until the reader has looked; an
        # overrun applies R-STREAM-11 on the spot.
        if model.ended is None and model.depth == self.limits.max_queue:
            self._expire(model)
        if model.ended is not None:
            return
        model.wanted.append(seq)
        if model.depth < self.limits.max_queue:
            model.depth += 1
            if model.depth == self.limits.max_queue:
                model.full_since = self.now
        else:
            model.dropped += 1

    def _take(self, model: QueueModel) -> None:
        """Poll the subscriber and check its answer against the model."""
        self._expire(model)
        decision = model.subscriber.poll(self.now)
        if model.ended is not None:
            assert decision == model.subscriber.ended
            assert isinstance(decision, End) and decision.reason is model.ended
            return
        if model.depth == 0:
            assert decision == Wait(model.idle_since + self.limits.idle_after_s)
            return
        assert isinstance(decision, Send)
        assert len(decision.frames) == min(model.depth, self.limits.batch_limit)
        for entry, dropped_before in decision.frames:
            previous = model.received[-1] if model.received else 0
            # R-STREAM-8, R-STREAM-10: in order, each once; R-STREAM-11: the notice counts
            # exactly the wanted frames lost since the previous one sent.
            assert entry.seq > previous
            assert dropped_before == sum(1 for s in model.wanted if previous < s < entry.seq)
            model.received.append(entry.seq)
            model.reported += dropped_before
        model.depth -= len(decision.frames)
        model.full_since = None
        model.idle_since = self.now

    # -- operations ------------------------------------------------------------------------
    @rule(module=st.sampled_from([1, 2]), kind=st.sampled_from(["movie", "ph"]))
    def publish(self, module, kind):
        frame = FRAMES[(module, kind)]
        self.seq += 1
        for model in [*self.queues.values(), self.keeper]:
            if model.subscriber.subscription.wants(frame):
                self._offer(model, self.seq)
        self._paced_offer(frame)
        self.hub.publish(frame, "upload", self.now)
        assert self.hub.latest[(module, frame.product.name)].seq == self.seq
        self._take(self.keeper)

    def _paced_offer(self, frame) -> None:
        paced = self.paced
        if paced.ended is None:
            paced.newest[(frame.module_id, frame.product.name)] = self.seq

    def _paced_pending(self) -> dict[tuple[int, str], int]:
        paced = self.paced
        return {k: s for k, s in paced.newest.items() if paced.last_sent.get(k, 0) < s}

    def _paced_due(self) -> bool:
        paced = self.paced
        return (
            paced.ended is None
            and not self._paced_pending()
            and self.now >= paced.idle_since + self.limits.idle_after_s
        )

    def _paced_expire(self) -> None:
        if self._paced_due():
            self.paced.ended = EndReason.IDLE

    @rule(name=st.sampled_from(["all", "movie_of_1", "ph"]))
    def take(self, name):
        self._take(self.queues[name])

    @rule()
    def take_paced(self):
        paced = self.paced
        self._paced_expire()
        decision = paced.subscriber.poll(self.now)
        if paced.ended is not None:
            assert isinstance(decision, End) and decision.reason is paced.ended
            return
        pending = self._paced_pending()
        interval_s = paced.subscriber.subscription.interval_s
        if not pending:
            assert decision == Wait(paced.idle_since + self.limits.idle_after_s)
            return
        if self.now < paced.last_send_s + interval_s:
            # R-STREAM-9: at most one batch per interval.
            assert decision == Wait(paced.last_send_s + interval_s)
            return
        assert isinstance(decision, Send)
        seqs = [entry.seq for entry, _ in decision.frames]
        # The newest unsent frame of every key with one, each once, oldest first.
        assert seqs == sorted(pending.values())
        assert not paced.sent_seqs & set(seqs)
        assert all(dropped == 0 for _, dropped in decision.frames)
        paced.sent_seqs.update(seqs)
        paced.last_sent.update(pending)
        paced.last_send_s = self.now
        paced.idle_since = self.now

    @rule(dt=DELAYS)
    def advance(self, dt):
        self.now += dt

    @precondition(lambda self: not self.queues["all"].ended)
    @rule(reason=st.sampled_from([EndReason.RECONFIGURED, EndReason.SHUTDOWN]))
    def end_one(self, reason):
        """A reconfiguration or shutdown ends a subscriber at once (R-STREAM-13, R-STREAM-3)."""
        model = self.queues["all"]
        if model.ended is None:
            model.subscriber.end(reason, "bye")
            model.ended = reason
            model.depth = 0
            model.full_since = None

    # -- after every step ------------------------------------------------------------------
    @invariant()
    def subscribers_match_the_model(self):
        for model in [*self.queues.values(), self.keeper]:
            subscriber = model.subscriber
            # Ended, or would end at the next look (the hub applies the timeouts lazily).
            over = subscriber.ended is not None or self.now >= subscriber.deadline_s
            assert over == (model.ended is not None or self._due(model) is not None)
            assert (subscriber.ended.reason if subscriber.ended else None) is model.ended
            if model.ended is None:
                # R-STREAM-11: bounded memory; drops counted exactly.
                assert subscriber.queue_depth == model.depth <= self.limits.max_queue
            assert subscriber.dropped == model.dropped
            assert subscriber.sent == len(model.received)
            if model.ended is None:
                # Every wanted frame is received, queued, or dropped and counted.
                assert len(model.wanted) == len(model.received) + model.depth + model.dropped
        paced = self.paced.subscriber
        over = paced.ended is not None or self.now >= paced.deadline_s
        assert over == (self.paced.ended is not None or self._paced_due())
        assert (paced.ended.reason if paced.ended else None) is self.paced.ended

    @invariant()
    def a_reader_that_keeps_up_gets_everything(self):
        keeper = self.keeper
        assert keeper.dropped == 0 and keeper.reported == 0
        assert keeper.ended in (None, EndReason.IDLE)
        if keeper.ended is None:
            assert keeper.received == keeper.wanted

    @invariant()
    def counters_add_up(self):
        assert self.hub.published == self.seq
        assert sum(self.hub.frames_in.values()) == self.seq
        stats = {s.peer: s for s in self.hub.subscriber_stats()}
        assert stats["all"].dropped == self.queues["all"].dropped
        assert self.hub.frames_dropped == sum(m.dropped for m in self.queues.values())


# 200 runs of up to 60 steps: ~5 s alone, twice that on a busy host.
TestHubMachine = pytest.mark.timeout(60)(HubMachine.TestCase)
TestHubMachine.settings = settings(
    max_examples=examples(200), stateful_step_count=60, deadline=None
)


def test_overrun_notice_goes_with_the_next_frame_queued():
    """R-STREAM-11: a full queue drops the frame and the next frame queued carries the count."""
    hub = Hub(PRODUCTS, ReaderLimits(max_queue=2, reader_timeout_s=1.0))
    subscriber = hub.subscribe(Subscription(True, True), 0.0)
    for seq in range(1, 6):  # 1, 2 queued; 3, 4, 5 dropped
        hub.publish(movie_frame(1, seq), "scanner", 0.1)
    first = subscriber.poll(0.2)
    assert isinstance(first, Send)
    assert [(e.frame.frame_number, d) for e, d in first.frames] == [(1, 0), (2, 0)]
    hub.publish(movie_frame(1, 6), "scanner", 0.3)
    second = subscriber.poll(0.4)
    assert isinstance(second, Send)
    assert [(e.frame.frame_number, d) for e, d in second.frames] == [(6, 3)]
    assert subscriber.dropped == 3 and hub.frames_dropped == 3


def test_full_queue_untaken_ends_the_reader_exactly_on_time():
    """R-STREAM-11: ended with TOO_SLOW when the queue has stayed full, untaken, for
    max_reader_enqueue_timeouts x reader_timeout; not a moment before."""
    hub = Hub(PRODUCTS, ReaderLimits(max_queue=2, reader_timeout_s=0.5, max_enqueue_timeouts=3))
    woken = []
    subscriber = hub.subscribe(Subscription(True, True), 0.0, wake=lambda: woken.append(1))
    hub.publish(movie_frame(1, 1), "socket", 1.0)
    hub.publish(movie_frame(1, 2), "socket", 1.0)  # full at t = 1.0
    hub.publish(movie_frame(1, 3), "socket", 2.4)
    assert subscriber.ended is None and subscriber.deadline_s == 2.5
    hub.publish(movie_frame(1, 4), "socket", 2.5)
    assert subscriber.ended == End(
        EndReason.TOO_SLOW, "client too slow: no frame taken for 1.5 s, 1 frames dropped"
    )
    assert subscriber.poll(2.6) == subscriber.ended
    assert subscriber.queue_depth == 0  # its frames are let go
    assert len(woken) == 2  # the first frame, and the end


def test_a_slow_reader_that_takes_is_never_ended():
    """R-STREAM-11: a reader that keeps taking frames, however slowly, keeps streaming."""
    hub = Hub(PRODUCTS, ReaderLimits(max_queue=3, reader_timeout_s=1.0, max_enqueue_timeouts=1))
    subscriber = hub.subscribe(Subscription(True, True), 0.0)
    now, received, notices = 0.0, 0, 0
    for number in range(1, 1001):
        now += 0.01
        hub.publish(movie_frame(1, number), "upload", now)
        if number % 90 == 0:  # takes once every 0.9 s
            decision = subscriber.poll(now)
            assert isinstance(decision, Send)
            received += len(decision.frames)
            notices += sum(d for _, d in decision.frames)
    assert subscriber.ended is None
    for number in (None, 1001):  # drain, then one more frame to carry the last notice
        if number is not None:
            hub.publish(movie_frame(1, number), "upload", now)
        decision = subscriber.poll(now)
        assert isinstance(decision, Send)
        received += len(decision.frames)
        notices += sum(d for _, d in decision.frames)
    assert subscriber.ended is None and subscriber.dropped > 800
    assert notices == subscriber.dropped and received + notices == 1001


def test_idle_reader_ends_after_the_dequeue_timeouts():
    """R-STREAM-12: nothing to send for max_reader_dequeue_timeouts x reader_timeout."""
    hub = Hub(PRODUCTS, ReaderLimits(reader_timeout_s=0.5, max_dequeue_timeouts=3))
    subscriber = hub.subscribe(Subscription(True, False), 10.0)
    assert subscriber.poll(10.0) == Wait(11.5)
    hub.publish(ph_frame(1, 1), "scanner", 11.0)  # not wanted: no reset
    assert subscriber.poll(11.49) == Wait(11.5)
    assert subscriber.poll(11.5) == End(EndReason.IDLE, "no data for 1.5 s: stream ended")


def test_paced_subscriber_starts_with_the_newest_frames():
    """R-STREAM-9: a paced client's first batch is the newest frame of each subscribed key."""
    hub = Hub(PRODUCTS, ReaderLimits())
    for number in range(3):
        hub.publish(movie_frame(1, number), "scanner", 1.0)
        hub.publish(movie_frame(2, number), "scanner", 1.0)
        hub.publish(ph_frame(1, number), "scanner", 1.0)
    subscriber = hub.subscribe(Subscription(True, False, interval_s=1.0), 2.0)
    first = subscriber.poll(2.0)
    assert isinstance(first, Send)
    assert [(e.frame.module_id, e.frame.frame_number) for e, _ in first.frames] == [(1, 2), (2, 2)]
    hub.publish(movie_frame(1, 3), "scanner", 2.1)
    assert subscriber.poll(2.5) == Wait(3.0)


def test_counters_for_operators():
    """Per (module, product, source) frames in, newest entry times, per-client counters."""
    hub = Hub(PRODUCTS, ReaderLimits(max_queue=1))
    client = hub.subscribe(Subscription(True, True), 0.0, peer="127.0.0.1:5000")
    for source, now in zip(sorted(SOURCES), (1.0, 2.0, 3.0, 4.0), strict=True):
        hub.publish(movie_frame(1, 0), source, now)
    hub.publish(ph_frame(2, 0), "socket", 5.0)
    assert hub.frames_in == {
        (1, "img16", "scanner"): 1,
        (1, "img16", "simulation"): 1,
        (1, "img16", "socket"): 1,
        (1, "img16", "upload"): 1,
        (2, "ph256", "socket"): 1,
    }
    assert hub.newest_entered_s() == {(1, "img16"): 4.0, (2, "ph256"): 5.0}
    (stats,) = hub.subscriber_stats()
    assert (stats.peer, stats.sent, stats.dropped, stats.queue_depth) == ("127.0.0.1:5000", 0, 4, 1)
    sent = client.poll(5.0)
    assert isinstance(sent, Send) and [e.seq for e, _ in sent.frames] == [1]
    assert hub.frames_sent == 1
    with pytest.raises(
        ValueError,
        match=r"unknown frame source 'disk' \(valid: scanner, simulation, socket, upload\)",
    ):
        hub.publish(movie_frame(1, 0), "disk", 6.0)

    # Clients are numbered from 1 in the order they came, numbers never reused; the stats name
    # each one's subscription.
    paced = Subscription(False, True, frozenset({2}), 0.5)
    second = hub.subscribe(paced, 6.0, peer="unix:/tmp/s.sock")
    assert [(s.client_id, s.peer, s.subscription) for s in hub.subscriber_stats()] == [
        (1, "127.0.0.1:5000", Subscription(True, True)),
        (2, "unix:/tmp/s.sock", paced),
    ]
    hub.unsubscribe(second)
    assert hub.subscribe(paced, 7.0).client_id == 3


def test_unsubscribe_keeps_totals_and_calls_when_empty():
    hub = Hub(PRODUCTS, ReaderLimits(max_queue=1))
    calls = []
    hub.call_when_empty(lambda: calls.append("at once"))
    one = hub.subscribe(Subscription(True, True), 0.0)
    hub.call_when_empty(lambda: calls.append("later"))
    hub.publish(movie_frame(1, 0), "upload", 0.0)
    hub.publish(movie_frame(1, 1), "upload", 0.0)
    assert isinstance(one.poll(0.0), Send)
    assert calls == ["at once"]
    hub.unsubscribe(one)
    assert calls == ["at once", "later"]
    assert (hub.subscriber_count, hub.frames_sent, hub.frames_dropped) == (0, 1, 1)
    # A second client's counters add to the first's, once it has gone too.
    two = hub.subscribe(Subscription(True, True), 1.0)
    hub.publish(movie_frame(1, 2), "upload", 1.0)
    assert isinstance(two.poll(1.0), Send)
    hub.unsubscribe(two)
    assert (hub.frames_sent, hub.frames_dropped) == (2, 1)


@pytest.mark.parametrize("interval_s", [0.0, 0.5])
def test_wake_rings_when_a_subscriber_with_nothing_to_send_gets_a_frame(interval_s):
    """R-STREAM-9, R-STREAM-10: the hub wakes the shell when a subscriber that had nothing to
    send gets a frame (once, not per frame), so a waiting handler sends at once."""
    rings: list[float] = []
    hub = Hub(PRODUCTS, ReaderLimits(max_queue=4))
    subscriber = hub.subscribe(
        Subscription(True, True, interval_s=interval_s), 0.0, wake=lambda: rings.append(0)
    )
    assert rings == []
    hub.publish(movie_frame(1, 0), "upload", 0.0)
    assert len(rings) == 1
    hub.publish(movie_frame(1, 1), "upload", 0.0)
    hub.publish(movie_frame(2, 0), "upload", 0.0)
    assert len(rings) == 1
    assert isinstance(subscriber.poll(1.0), Send)
    hub.publish(movie_frame(1, 2), "upload", 1.0)
    assert len(rings) == 2


@given(
    max_queue=st.integers(0, 3),
    timeout=st.floats(min_value=-1, max_value=1) | st.just(math.nan),
)
def test_reader_limits_are_validated(max_queue, timeout):
    if max_queue >= 1 and timeout >= 0:
        ReaderLimits(max_queue=max_queue, reader_timeout_s=timeout)
    else:
        with pytest.raises(ValueError, match="ReaderLimits"):
            ReaderLimits(max_queue=max_queue, reader_timeout_s=timeout)


def test_send_delays_are_counted_per_client_and_kept_when_it_goes():
    """Each frame's send delay (hub entry to written) lands in the bucket of the smallest bound
    at or above it, per client; an ended client's delays stay in the hub's total."""
    hub = Hub(PRODUCTS, ReaderLimits(max_queue=8))
    fast = hub.subscribe(Subscription(True, True), 0.0)
    paced = hub.subscribe(Subscription(True, True, interval_s=0.5), 0.0)
    start = 2**-10  # times and delays exact in binary, so a delay can sit on a bound
    hub.publish(movie_frame(1, 0), "upload", start)
    hub.publish(movie_frame(2, 0), "upload", start + 2**-10)
    sent = fast.poll(start + 2**-10)
    assert isinstance(sent, Send)
    fast.record_sent(sent.frames, start + 2**-10 + 2**-11)  # waited 1.46 ms and 0.49 ms
    held = paced.poll(0.25)
    assert isinstance(held, Send)
    paced.record_sent(held.frames, start + 0.5)  # held: 0.5 s (on a bound) and 0.499 s

    def buckets(histogram: DelayHistogram) -> dict[float, int]:
        return dict(histogram.cumulative())

    fast_sum = 2**-10 + 2**-11 + 2**-11
    assert buckets(fast.send_delay)[0.001] == 1 and buckets(fast.send_delay)[0.002] == 2
    assert fast.send_delay.count == 2 and fast.send_delay.sum_s == fast_sum
    hub.publish(movie_frame(1, 1), "upload", 1.0)  # a second batch adds to the first
    again = fast.poll(1.0)
    assert isinstance(again, Send)
    fast.record_sent(again.frames, 1.0 + 2**-12)
    fast_sum += 2**-12
    assert fast.send_delay.count == 3 and fast.send_delay.sum_s == fast_sum
    assert buckets(paced.send_delay)[0.2] == 0 and buckets(paced.send_delay)[0.5] == 2
    assert buckets(paced.send_delay)[math.inf] == 2
    hub.unsubscribe(fast)
    total = hub.send_delay()
    assert total.count == 5 and total.sum_s == fast_sum + 0.5 + 0.5 - 2**-10
    assert buckets(total)[0.002] == 3 and buckets(total)[0.5] == 5
    (stats,) = hub.subscriber_stats()
    assert stats.send_delay is paced.send_delay


@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), max_size=40))
def test_delay_histogram_buckets_are_cumulative_counts_up_to_each_bound(delays):
    """The histogram's buckets are Prometheus's: at each bound, the delays <= it; the last
    (+Inf) and `count` are all of them, `sum_s` their sum; adding two adds both."""
    histogram, twice = DelayHistogram(), DelayHistogram()
    for delay in delays:
        histogram.observe(delay)
    twice.add(histogram)
    twice.add(histogram)
    bounds = [*SEND_DELAY_BOUNDS_S, math.inf]
    assert histogram.cumulative() == [(b, sum(d <= b for d in delays)) for b in bounds]
    assert twice.cumulative() == [(b, 2 * sum(d <= b for d in delays)) for b in bounds]
    assert histogram.count == len(delays) and histogram.sum_s == pytest.approx(sum(delays))
    assert twice.sum_s == pytest.approx(2 * sum(delays))
