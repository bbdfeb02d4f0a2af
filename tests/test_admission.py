"""The admission rules of StreamImages and InitHpIo as pure functions, without a server.

The same rules over real sockets are in test_server_stream.py and test_server_init.py; here
every branch and the order between them is checked directly, with hypothesis over the state.
"""

from __future__ import annotations

import dataclasses
import errno
import math
from pathlib import Path

from grpclib.const import Status
from hypothesis import given
from hypothesis import strategies as st

from panoseti_daq.config import HpIoConfig
from panoseti_daq.messages import StreamImagesRequest
from panoseti_daq.server.admission import (
    WAIT_FOR_WRITER,
    DataDirFacts,
    HpIoGate,
    Refusal,
    StreamGate,
    admit_hp_io,
    admit_stream,
    hp_io_interval_ok,
    stream_interval_ok,
    within_roots,
)
from panoseti_daq.server.hub import Subscription

OPEN = StreamGate(
    writer_busy=False,
    hp_io_valid=True,
    source_failure=None,
    shutting_down=False,
    active_streams=0,
    max_streams=10,
    peer_host="127.0.0.1",
    peer_streams=0,
    streams_per_peer=5,
    max_interval_s=60.0,
)


def _request(movie=True, ph=True, interval=1.0, modules=()):
    return StreamImagesRequest(
        stream_movie_data=movie,
        stream_pulse_height_data=ph,
        update_interval_seconds=interval,
        module_ids=list(modules),
    )


def test_an_open_server_admits_what_was_asked_for():
    """R-STREAM-6, R-STREAM-7, R-STREAM-9: the subscription carries the request's choices."""
    decision = admit_stream(_request(movie=False, interval=0.5, modules=(3, 1, 3)), OPEN)
    assert decision == Subscription(
        movie=False, pulse_height=True, module_ids=frozenset({1, 3}), interval_s=0.5
    )


def test_nothing_to_stream_is_refused_before_waiting_for_a_writer():
    """R-STREAM-1 comes before R-STREAM-2: no wait for a request that can never be served."""
    busy = dataclasses.replace(OPEN, writer_busy=True, hp_io_valid=False)
    decision = admit_stream(_request(movie=False, ph=False), busy)
    assert decision == Refusal(
        Status.INVALID_ARGUMENT,
        "stream_movie_data and stream_pulse_height_data are both false: nothing to stream",
    )
    assert admit_stream(_request(), busy) is WAIT_FOR_WRITER


def test_not_initialised_and_failed_sources_are_failed_precondition():
    """R-STREAM-3, R-SRC-1: the refusal says whether hp_io was never set or its source failed."""
    never = admit_stream(_request(), dataclasses.replace(OPEN, hp_io_valid=False))
    assert never == Refusal(
        Status.FAILED_PRECONDITION, "hp_io is not initialized: call InitHpIo first"
    )
    failed = dataclasses.replace(OPEN, hp_io_valid=False, source_failure="disk full")
    assert admit_stream(_request(), failed) == Refusal(
        Status.FAILED_PRECONDITION, "hp_io is not valid: disk full; call InitHpIo again"
    )


def test_limits_name_themselves():
    """R-STREAM-4, R-PEER-4, R-STREAM-5, and a server shutting down."""
    full = dataclasses.replace(OPEN, active_streams=10)
    assert admit_stream(_request(), full) == Refusal(
        Status.RESOURCE_EXHAUSTED, "too many StreamImages clients: the limit is 10"
    )
    greedy = dataclasses.replace(OPEN, peer_streams=5)
    refusal = admit_stream(_request(), greedy)
    assert isinstance(refusal, Refusal) and refusal.status is Status.RESOURCE_EXHAUSTED
    assert "from 127.0.0.1" in refusal.message and "max_streams_per_peer" in refusal.message
    stopping = admit_stream(_request(), dataclasses.replace(OPEN, shutting_down=True))
    assert stopping == Refusal(Status.UNAVAILABLE, "server shutting down")
    for interval in (-1.0, 60.5, math.nan, math.inf):
        refusal = admit_stream(_request(interval=interval), OPEN)
        assert isinstance(refusal, Refusal) and refusal.status is Status.INVALID_ARGUMENT
        assert f"between 0 and 60, not {interval}" in refusal.message


def test_interval_bounds_are_inclusive():
    """R-STREAM-5 and R-INIT-1: the bounds themselves are valid; beyond them or NaN are not."""
    assert stream_interval_ok(0.0, 60.0) and stream_interval_ok(60.0, 60.0)
    assert not stream_interval_ok(60.000001, 60.0)
    assert not stream_interval_ok(-1e-9, 60.0) and not stream_interval_ok(math.nan, 60.0)
    assert hp_io_interval_ok(0.01, 0.01) and hp_io_interval_ok(0.02, 0.01)
    assert not hp_io_interval_ok(0.009, 0.01) and not hp_io_interval_ok(math.nan, 0.01)


_GATES = st.builds(
    StreamGate,
    writer_busy=st.booleans(),
    hp_io_valid=st.booleans(),
    source_failure=st.none() | st.just("disk full"),
    shutting_down=st.booleans(),
    active_streams=st.integers(0, 12),
    max_streams=st.integers(1, 10),
    peer_host=st.just("::1"),
    peer_streams=st.integers(0, 6),
    streams_per_peer=st.integers(1, 5),
    max_interval_s=st.sampled_from([0.0, 1.0, 60.0]),
)
_REQUESTS = st.builds(
    _request,
    movie=st.booleans(),
    ph=st.booleans(),
    interval=st.floats(allow_nan=True, allow_infinity=True, width=32) | st.just(0.0),
    modules=st.lists(st.integers(0, 0xFFFF), max_size=4),
)


@given(_REQUESTS, _GATES)
def test_a_stream_is_admitted_exactly_when_every_rule_allows_it(request, gate):
    """R-STREAM-1 .. R-STREAM-5, R-PEER-4: admitted iff every condition holds; otherwise the
    refusal is the first failing rule's, in the spec's order."""
    decision = admit_stream(request, gate)
    interval = request.update_interval_seconds
    checks = [
        (request.stream_movie_data or request.stream_pulse_height_data, Status.INVALID_ARGUMENT),
        (not gate.writer_busy, None),
        (gate.hp_io_valid, Status.FAILED_PRECONDITION),
        (not gate.shutting_down, Status.UNAVAILABLE),
        (gate.active_streams < gate.max_streams, Status.RESOURCE_EXHAUSTED),
        (gate.peer_streams < gate.streams_per_peer, Status.RESOURCE_EXHAUSTED),
        (0 <= interval <= gate.max_interval_s, Status.INVALID_ARGUMENT),
    ]
    failing = [status for ok, status in checks if not ok]
    if not failing:
        assert isinstance(decision, Subscription)
        assert decision.module_ids == frozenset(request.module_ids)
    elif failing[0] is None:
        assert decision is WAIT_FOR_WRITER
    else:
        assert isinstance(decision, Refusal) and decision.status is failing[0]


# --- InitHpIo ---------------------------------------------------------------------------------

ROOT = Path("/srv/panoseti")
ACTIVE = DataDirFacts(resolved=ROOT / "run", daq_active=True)
GATE = HpIoGate(
    min_interval_s=0.01,
    max_interval_s=60.0,
    allowed_roots=(ROOT,),
    daq_checks=("marker",),
    data_dir=ACTIVE,
)


def test_a_valid_request_is_applied_with_its_data_dir_resolved():
    """R-INIT-2 .. R-INIT-4: the configuration applied names the directory's real path."""
    decision = admit_hp_io(HpIoConfig(data_dir="run", update_interval_seconds=0.5), GATE)
    assert decision == HpIoConfig(data_dir=str(ROOT / "run"), update_interval_seconds=0.5)


def test_the_request_is_checked_before_the_servers_state():
    """R-INIT-1 before R-STATE-2: a bad interval is refused without waiting for the writer."""
    waiting = dataclasses.replace(GATE, holds_writer_lock=False, active_streams=3)
    refusal = admit_hp_io(HpIoConfig(data_dir="run", update_interval_seconds=0.001), waiting)
    assert refusal == Refusal(
        Status.INVALID_ARGUMENT, "update_interval_seconds must be >= 0.01, not 0.001"
    )
    assert admit_hp_io(HpIoConfig(data_dir="run"), waiting) is WAIT_FOR_WRITER


def test_intervals_beyond_the_client_maximum_are_refused():
    """R-INIT-10: inf and values above max_client_update_interval_seconds are refused."""
    for interval in (math.inf, 61.0):
        refusal = admit_hp_io(HpIoConfig(data_dir="run", update_interval_seconds=interval), GATE)
        assert isinstance(refusal, Refusal) and refusal.status is Status.INVALID_ARGUMENT
        assert "max_client_update_interval_seconds" in refusal.message


def test_data_dir_problems_map_to_their_statuses():
    """R-INIT-2, R-INIT-3, R-INIT-4, R-INIT-11: each problem its status, never UNKNOWN."""
    cases = [
        (DataDirFacts(error=FileNotFoundError(errno.ENOENT, "x")), Status.INVALID_ARGUMENT),
        (DataDirFacts(error=NotADirectoryError(errno.ENOTDIR, "x")), Status.INVALID_ARGUMENT),
        (DataDirFacts(error=PermissionError(errno.EACCES, "denied")), Status.PERMISSION_DENIED),
        (DataDirFacts(error=OSError(errno.ENAMETOOLONG, "long")), Status.INVALID_ARGUMENT),
        (DataDirFacts(error=ValueError("embedded null byte")), Status.INVALID_ARGUMENT),
        (DataDirFacts(resolved=Path("/etc")), Status.PERMISSION_DENIED),
        (DataDirFacts(resolved=ROOT, daq_active=False, inactive_details="no marker"), None),
    ]
    for facts, status in cases:
        refusal = admit_hp_io(HpIoConfig(data_dir="d"), dataclasses.replace(GATE, data_dir=facts))
        assert isinstance(refusal, Refusal)
        assert refusal.status is (status or Status.FAILED_PRECONDITION)
        assert "'d'" in refusal.message
    assert refusal.message.endswith("(checked: marker): no marker")


def test_simulation_ignores_data_dir_and_an_empty_one_is_refused():
    """R-INIT-8: a simulation needs no data_dir; otherwise an empty one does not exist."""
    uninspected = dataclasses.replace(GATE, data_dir=None)
    assert admit_hp_io(HpIoConfig(simulate_daq=True), uninspected) == HpIoConfig(simulate_daq=True)
    assert admit_hp_io(HpIoConfig(), uninspected) == Refusal(
        Status.INVALID_ARGUMENT, "data_dir '' does not exist"
    )


def test_active_streams_need_force_and_shutdown_refuses():
    """R-INIT-5 and a server shutting down."""
    streaming = dataclasses.replace(GATE, active_streams=2)
    refusal = admit_hp_io(HpIoConfig(data_dir="run"), streaming)
    assert refusal == Refusal(
        Status.FAILED_PRECONDITION,
        "2 StreamImages client(s) active; use force=true to reconfigure anyway",
    )
    assert isinstance(admit_hp_io(HpIoConfig(data_dir="run", force=True), streaming), HpIoConfig)
    stopping = dataclasses.replace(GATE, shutting_down=True, holds_writer_lock=False)
    assert admit_hp_io(HpIoConfig(data_dir="run"), stopping) == Refusal(
        Status.UNAVAILABLE, "server shutting down"
    )


def test_within_roots_compares_whole_path_components():
    """R-INIT-3: /srv/panoseti-other is not under /srv/panoseti."""
    assert within_roots(ROOT, (ROOT,)) and within_roots(ROOT / "a" / "b", (ROOT,))
    assert not within_roots(Path("/srv/panoseti-other"), (ROOT,))
    assert not within_roots(Path("/srv"), (ROOT,))


def test_a_home_directory_that_does_not_exist_is_a_refusal_not_an_error():
    """R-INIT-11: "~nosuchuser/run" cannot be expanded (RuntimeError inside pathlib): the facts
    carry the error and the answer is INVALID_ARGUMENT naming the path, never UNKNOWN."""
    from panoseti_daq.server.hp_io_checks import inspect_data_dir

    facts = inspect_data_dir("~nosuchuser-pdaq/run", (ROOT,), ("marker",))
    assert isinstance(facts.error, RuntimeError)
    refusal = admit_hp_io(
        HpIoConfig(data_dir="~nosuchuser-pdaq/run"), dataclasses.replace(GATE, data_dir=facts)
    )
    assert isinstance(refusal, Refusal) and refusal.status is Status.INVALID_ARGUMENT
    assert "'~nosuchuser-pdaq/run' cannot be used" in refusal.message


def test_a_refused_interval_is_answered_without_looking_at_the_file_system(tmp_path):
    """R-INIT-1, R-INIT-10 come first: with an interval refused, hp_io_gate does not inspect
    data_dir (no stat, no DAQ check); with a valid one it does."""
    from panoseti_daq.config import ServerConfig
    from panoseti_daq.server.hp_io_checks import hp_io_gate

    config = ServerConfig.defaults().replace(allowed_data_roots=(tmp_path,))
    bad = HpIoConfig(data_dir=str(tmp_path), update_interval_seconds=math.nan)
    assert hp_io_gate(config, bad).data_dir is None
    good = HpIoConfig(data_dir=str(tmp_path), update_interval_seconds=1.0)
    facts = hp_io_gate(config, good).data_dir
    assert facts is not None and facts.resolved == tmp_path.resolve()
    assert facts.daq_active is False and facts.inactive_details
