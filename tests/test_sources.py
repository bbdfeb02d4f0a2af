"""Data sources that misbehave, callers whose deadline runs out waiting for a writer, writers
that go away mid-reconfiguration (R-STATE-1, R-STATE-2, R-STATE-3, R-INIT-7,
`hp_io_stop_timeout`), on both backends.

The scanner a configuration starts is replaced by a stand-in that runs the real scanner for
the usual data_dir and, for a few named directories, behaves as the case needs: it becomes
valid only when the test lets it (two such directories), never, fails after it started, or
ignores cancellation. The test controls each through anyio events, never by sleeping.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
import pytest
from grpclib.const import Cardinality

from panoseti_daq.messages import InitHpIoRequest, InitHpIoResponse, StreamImagesRequest
from panoseti_daq.server import core as server_core
from panoseti_daq.server import hp_io_checks
from tests.helpers import (
    channel,
    h2_unary_call,
    init_hp_io,
    movie_frame,
    next_reply,
    open_stream,
    raw_call,
    upload,
    wait_until,
)

pytestmark = pytest.mark.anyio

UNAVAILABLE, FAILED_PRECONDITION = 14, 9


class Sources:
    """The stand-in scanner and the events that steer it."""

    def __init__(self) -> None:
        self.gated = anyio.Event()  # "gated" is starting
        self.valid = anyio.Event()  # "gated" becomes valid
        self.second = anyio.Event()  # "second" is starting
        self.second_valid = anyio.Event()  # "second" becomes valid
        self.fail = anyio.Event()  # "failing" raises
        self.release = anyio.Event()  # "stubborn" stops
        self.stubborn_stopped = False
        self.real = server_core.run_scanner

    async def run(self, scanner, interval_s, publish, *, task_status):
        name = scanner.data_dir.name
        if name == "gated":
            self.gated.set()
            await self.valid.wait()
        elif name == "second":
            self.second.set()
            await self.second_valid.wait()
        elif name == "never":
            await anyio.sleep_forever()
        elif name == "failing":
            task_status.started()
            await self.fail.wait()
            raise RuntimeError("the disk went away")
        elif name == "stubborn":
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await self.release.wait()
                self.stubborn_stopped = True
        else:
            await self.real(scanner, interval_s, publish, task_status=task_status)
            return
        task_status.started()
        await anyio.sleep_forever()


@pytest.fixture
def sources(monkeypatch):
    stand_in = Sources()
    monkeypatch.setattr(server_core, "run_scanner", stand_in.run)
    return stand_in


def data_dir(run_dir, name):
    """A data_dir next to run_dir that passes InitHpIo's checks (R-INIT-2 .. R-INIT-4)."""
    path = run_dir.parent / name
    (path / "module_1" / "obs_X").mkdir(parents=True)
    (path / "module_1" / "obs_X" / "module_1.daq-active").touch()
    return path


def call_with_deadline(server, method, request, timeout="300m"):
    """(status, message) of a call sending `grpc-timeout`, answered by the server itself."""
    return anyio.to_thread.run_sync(
        h2_unary_call, server.port, f"/daqdata.DaqData/{method}", bytes(request), timeout
    )


async def test_deadline_runs_out_waiting_for_a_writer(make_server, run_dir, sources):
    """R-STATE-2, R-STATE-3: while a writer reconfigures, a reader and a second writer wait
    within their deadlines and then get UNAVAILABLE; the writer then completes."""
    gated = data_dir(run_dir, "gated")
    async with make_server() as server, anyio.create_task_group() as tg:
        replies = []

        async def writer():
            replies.append(await init_hp_io(server, gated))

        tg.start_soon(writer)
        with anyio.fail_after(10):
            await sources.gated.wait()  # the writer holds the lock: it is starting sources
            reader = await call_with_deadline(
                server, "StreamImages", StreamImagesRequest(stream_movie_data=True)
            )
            second = await call_with_deadline(
                server,
                "InitHpIo",
                InitHpIoRequest(data_dir=str(run_dir), update_interval_seconds=0.05, force=True),
            )
        assert reader == (
            UNAVAILABLE,
            "hp_io is being reconfigured and the deadline expired waiting",
        )
        assert second == (UNAVAILABLE, "another InitHpIo is in progress")
        assert not replies  # the writer was still at work: the others did wait for it
        sources.valid.set()
        await wait_until(lambda: replies)
        # The next writer keeps the next reader waiting the same way.
        tg.start_soon(writer_to, server, data_dir(run_dir, "second"), replies)
        with anyio.fail_after(10):
            await sources.second.wait()
            again = await call_with_deadline(
                server, "StreamImages", StreamImagesRequest(stream_movie_data=True)
            )
        sources.second_valid.set()
    assert again == reader
    assert replies[0].success and replies[1].success
    assert server.core.hp_io.data_dir == str((run_dir.parent / "second").resolve())


async def writer_to(server, path, replies):
    replies.append(await init_hp_io(server, path))


async def test_reader_waits_for_a_writer_then_proceeds(make_server, run_dir, sources):
    """R-STATE-3: a reader arriving while a writer reconfigures waits, then streams (never
    FAILED_PRECONDITION)."""
    gated = data_dir(run_dir, "gated")
    async with make_server() as server, anyio.create_task_group() as tg:
        tg.start_soon(init_hp_io, server, gated)
        received = []

        async def reader(task_status=anyio.TASK_STATUS_IGNORED):
            async with open_stream(server, ph=False, subscribed=False) as stream:
                task_status.started()
                received.append(await next_reply(stream))

        with anyio.fail_after(10):
            await sources.gated.wait()  # the writer holds the lock
            await tg.start(reader)  # the reader's call is on its way
            sources.valid.set()
            await wait_until(lambda: server.core.active_streams == 1)
            await upload(server, [movie_frame(1, 3)])
    assert received[0].frame.frame_number == 3


async def test_configuration_that_never_becomes_valid(make_server, run_dir, sources, monkeypatch):
    """R-INIT-7: a configuration not valid within the limit (START_TIMEOUT_S, 10 s; 0.3 s
    here) answers success=false naming the limit, and the previous one is restored."""
    monkeypatch.setattr(server_core, "START_TIMEOUT_S", 0.3)
    never = data_dir(run_dir, "never")
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        with anyio.fail_after(5):
            reply = await init_hp_io(server, never)
        assert not reply.success
        assert reply.error_message == (
            "hp_io did not become valid within 0.3 s; the previous configuration was restored"
        )
        assert server.core.hp_io.data_dir == str(run_dir.resolve())
        async with open_stream(server, ph=False) as stream:  # hp_io is valid again
            await upload(server, [movie_frame(1, 5)])
            assert (await next_reply(stream)).frame.frame_number == 5


async def test_never_valid_without_a_previous_configuration(make_server, run_dir, sources):
    """R-INIT-7, R-STREAM-2: with nothing to restore, hp_io stays invalid."""
    server_core_limit = server_core.START_TIMEOUT_S
    server_core.START_TIMEOUT_S = 0.3
    try:
        async with make_server() as server:
            reply = await init_hp_io(server, data_dir(run_dir, "never"))
            assert not reply.success and "restored" not in reply.error_message
            assert server.core.hp_io_valid is False
            status, message = await call_with_deadline(
                server, "StreamImages", StreamImagesRequest(stream_movie_data=True)
            )
            assert status == FAILED_PRECONDITION and "not initialized" in message
    finally:
        server_core.START_TIMEOUT_S = server_core_limit


async def test_source_that_fails_after_it_started(make_server, run_dir, sources):
    """R-STATE-1: a data source failing after start makes hp_io invalid (new streams get
    FAILED_PRECONDITION); the server keeps serving and a new InitHpIo makes it valid again."""
    async with make_server() as server:
        assert (await init_hp_io(server, data_dir(run_dir, "failing"))).success
        sources.fail.set()
        await wait_until(lambda: server.core.hp_io_valid is False, timeout_s=5)
        status, message = await call_with_deadline(
            server, "StreamImages", StreamImagesRequest(stream_movie_data=True)
        )
        # R-SRC-1: the refusal names the cause.
        assert status == FAILED_PRECONDITION and "not valid: the data source failed" in message
        assert (await init_hp_io(server, run_dir)).success
        async with open_stream(server, ph=False) as stream:
            await upload(server, [movie_frame(1, 8)])
            assert (await next_reply(stream)).frame.frame_number == 8


async def test_source_that_ignores_cancellation(make_server, run_dir, sources):
    """`hp_io_stop_timeout`: a reconfiguration waits that long for the old sources to stop,
    then goes on without them; the new configuration is valid while the old source still
    runs."""
    async with make_server(hp_io_stop_timeout=0.2) as server:
        assert (await init_hp_io(server, data_dir(run_dir, "stubborn"))).success
        try:
            with anyio.fail_after(5):
                reply = await init_hp_io(server, run_dir)
            assert reply.success and not sources.stubborn_stopped
            assert server.core.hp_io.data_dir == str(run_dir.resolve())
        finally:
            sources.release.set()  # also when the test fails: the server can then stop
        await wait_until(lambda: sources.stubborn_stopped, timeout_s=5)


async def test_readers_wait_for_a_second_writer_too(make_server, run_dir, sources, monkeypatch):
    """R-STATE-2, R-STATE-3: a writer that arrives while another reconfigures waits, and counts
    as a writer from its request on: a reader waits during the first, and once the first is
    done and the second reconfigures, a reader still waits (UNAVAILABLE when its deadline runs
    out, not FAILED_PRECONDITION); once both are done a reader streams at once."""
    first, second = data_dir(run_dir, "gated"), data_dir(run_dir, "second")
    checked = []  # data_dirs whose InitHpIo checks ran: each writer counted itself before
    daq_is_active = hp_io_checks.daq_is_active

    def recording(path, checks):
        checked.append(path.name)
        return daq_is_active(path, checks)

    monkeypatch.setattr(hp_io_checks, "daq_is_active", recording)
    async with make_server() as server:
        replies = {}

        async def writer(path):
            replies[path.name] = await init_hp_io(server, path)

        async with anyio.create_task_group() as tg:
            with anyio.fail_after(10):
                tg.start_soon(writer, first)
                await sources.gated.wait()  # the first writer holds the lock
                early = await call_with_deadline(
                    server, "StreamImages", StreamImagesRequest(stream_movie_data=True)
                )
                tg.start_soon(writer, second)
                await wait_until(lambda: "second" in checked)  # it waits for the lock
                sources.valid.set()
                await sources.second.wait()  # the first is done, the second reconfigures
                reader = await call_with_deadline(
                    server, "StreamImages", StreamImagesRequest(stream_movie_data=True)
                )
                sources.second_valid.set()
        assert (
            early
            == reader
            == (
                UNAVAILABLE,
                "hp_io is being reconfigured and the deadline expired waiting",
            )
        )
        assert replies["gated"].success and replies["second"].success
        with anyio.fail_after(5):
            async with open_stream(server, ph=False) as stream:
                await upload(server, [movie_frame(1, 4)])
                assert (await next_reply(stream)).frame.frame_number == 4


@contextlib.asynccontextmanager
async def init_hp_io_call(server, data_dir):
    """An InitHpIo call on its way (no answer read); leaving resets it, as a caller that goes
    away does."""
    request = InitHpIoRequest(data_dir=str(data_dir), update_interval_seconds=0.05, force=True)
    async with raw_call(
        lambda: channel(server),
        "InitHpIo",
        Cardinality.UNARY_UNARY,
        InitHpIoRequest,
        InitHpIoResponse,
        request,
    ):
        yield


async def test_writer_gone_mid_reconfiguration(make_server, run_dir, sources, caplog):
    """R-STATE-2, R-STATE-3, R-INIT-6: a caller that goes away (resets its InitHpIo call, as
    its deadline running out does too) while the server reconfigures does not cut the
    reconfiguration short: readers wait until it has finished (UNAVAILABLE at their deadline,
    not FAILED_PRECONDITION), and it ends valid with the new configuration. The handler then
    ends as cancelled, with no error in the server's log."""
    gated = data_dir(run_dir, "gated")
    caplog.set_level(logging.INFO)
    async with make_server() as server:
        assert (await init_hp_io(server, run_dir)).success
        with anyio.fail_after(10):
            async with init_hp_io_call(server, gated):
                await sources.gated.wait()  # it reconfigures: the old sources are stopped
            reader = await call_with_deadline(
                server, "StreamImages", StreamImagesRequest(stream_movie_data=True)
            )
            assert reader == (
                UNAVAILABLE,
                "hp_io is being reconfigured and the deadline expired waiting",
            )
            sources.valid.set()
            await wait_until(lambda: server.core.hp_io_valid)
        assert server.core.hp_io.data_dir == str(gated.resolve())
        with anyio.fail_after(5):
            async with open_stream(server, ph=False) as stream:
                await upload(server, [movie_frame(1, 6)])
                assert (await next_reply(stream)).frame.frame_number == 6
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_configuration_queued_at_stop_is_answered(make_server, run_dir, sources):
    """R-STOP-1: a configuration still queued for the controller when the server stops is
    answered (success false, "server shutting down"): its writer does not wait forever."""
    from panoseti_daq.config import HpIoConfig

    answers = {}

    async def reconfigure(server, name, path):
        answers[name] = await server.core.reconfigure(HpIoConfig(data_dir=str(path)))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            async with make_server() as server:
                tg.start_soon(reconfigure, server, "first", data_dir(run_dir, "gated"))
                await sources.gated.wait()  # the controller applies the first
                tg.start_soon(reconfigure, server, "queued", run_dir)
                await wait_until(lambda: server.core._command_send.statistics().current_buffer_used)
    assert not answers["queued"].success
    assert answers["queued"].error_message == "server shutting down"


def test_start_limit_is_ten_seconds():
    """R-INIT-7: the limit the README and the spec name (the tests above shorten it)."""
    assert server_core.START_TIMEOUT_S == 10.0
