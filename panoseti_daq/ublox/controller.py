"""The UbloxControl state machine: IDLE, INITIALISING, STREAMING (spec sections 3 to 6).

One controller serves at most one device (R-UBX-STATE-1). It lives on grpclib's loop with the
handlers that call it (the app crosses into that loop once to run it, once to stop it), so its
state is plain attributes and its waits are anyio primitives of that loop. Its task group holds
the port owner (port.py) and the silence watcher while a port is open; an InitF9t runs in its
handler's task and talks to the chip through the owner, which it starts right after opening
(the device steps, in order: init_steps.py).

Failures are `UbloxError`s (a status name and details); the service turns them into statuses.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..config import UbloxServerConfig
from .errors import UbloxError
from .fanout import Ending, Fanout, Notice, Subscriber
from .init_steps import ack_for, apply_settings, identify_model, identify_uid, verify_settings
from .port import Expectation, PortOwner, baud_constant, check_device, open_port
from .protocol import (
    PatternError,
    Received,
    class_and_id,
    compile_patterns,
    poll_candidates,
    poll_frame,
)
from .settings import F9tPlan, F9tSettingsError, plan_init

log = logging.getLogger(__name__)

__all__ = ["InitResult", "PollEntry", "State", "UbloxController"]

NOT_STREAMING = "F9T is not initialized or I/O is not running."  # the original's words
POLL_SPACING_S = 0.01  # R-UBX-POLL-4


class State(enum.Enum):
    IDLE = "IDLE"
    INITIALISING = "INITIALISING"
    STREAMING = "STREAMING"


@dataclass(frozen=True)
class InitResult:
    """A successful InitF9t: the reply's message and the accepted config (R-UBX-INIT-10)."""

    message: str
    accepted_config: dict[str, Any]


@dataclass(frozen=True)
class PollEntry:
    """One candidate of a PollMessage: its answer, or why there is none (R-UBX-POLL-5)."""

    name: str
    answer: Received | None
    problem: str = ""


class UbloxController:
    """The service's state and the device procedures; see the module docstring."""

    def __init__(self, config: UbloxServerConfig) -> None:
        self.config = config
        self.state = State.IDLE
        self.fanout = Fanout()
        self.shutting_down = False
        self._tg: TaskGroup | None = None
        self._owner: PortOwner | None = None
        self._port_scope: anyio.CancelScope | None = None
        self._port_stopped: anyio.Event | None = None
        self._caching = False
        self._seen: set[str] = set()
        self._news: anyio.Event | None = None
        self._init_lock: anyio.Lock | None = None
        self._poll_lock: anyio.Lock | None = None
        self._init_over: anyio.Event | None = None
        self._poll_scope: anyio.CancelScope | None = None
        self._poll_ending: UbloxError | None = None

    # -- life ------------------------------------------------------------------------------
    async def run(self, ready: Callable[[], None]) -> None:
        """Hold the controller's task group until cancelled; `ready()` once it is open."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                ready()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            if self._owner is not None:
                self._owner.port.close()

    def begin_shutdown(self) -> None:
        """R-UBX-SRV-3, R-UBX-CAP-8: refuse new calls, end every stream and a poll in flight."""
        self.shutting_down = True
        ending = Ending("UNAVAILABLE", "server shutting down")
        self.fanout.end_all(ending)
        self._end_poll(UbloxError(ending.status, ending.details))

    async def stop(self) -> None:
        """Stop the port owner and close the port (R-UBX-SRV-3)."""
        await self._teardown()

    def call_when_no_streams(self, callback: Callable[[], None]) -> None:
        self.fanout.call_when_empty(callback)

    @property
    def active_streams(self) -> int:
        return self.fanout.active

    # -- waiting out an InitF9t (R-UBX-STATE-3) ----------------------------------------------
    async def _wait_for_init(self, timeout_s: float, what: str) -> None:
        over = self._init_over
        if over is None:
            return
        with anyio.move_on_after(timeout_s):
            await over.wait()
            return
        raise UbloxError(
            "DEADLINE_EXCEEDED", f"{what} waited for an InitF9t in progress until its deadline"
        )

    async def _acquire(self, lock: anyio.Lock, timeout_s: float, what: str) -> None:
        with anyio.move_on_after(timeout_s):
            await lock.acquire()
            return
        raise UbloxError("DEADLINE_EXCEEDED", f"{what} in progress; the deadline expired waiting")

    # -- InitF9t ---------------------------------------------------------------------------
    def validate(self, f9t_config: dict[str, Any]) -> tuple[F9tPlan, str]:
        """R-UBX-INIT-1 and the path checks of R-UBX-INIT-4: no I/O, no state change."""
        try:
            plan = plan_init(f9t_config)
        except F9tSettingsError as exc:
            raise UbloxError("INVALID_ARGUMENT", "; ".join(exc.problems)) from None
        baud_constant(plan.baud)
        resolved = check_device(plan.device, self.config.allowed_devices)
        return plan, resolved

    async def init_f9t(
        self, f9t_config: dict[str, Any], force: bool, peer: str, timeout_s: float
    ) -> InitResult:
        plan, resolved = self.validate(f9t_config)
        if self.shutting_down:
            raise UbloxError("UNAVAILABLE", "server shutting down")
        if self._init_lock is None:
            self._init_lock = anyio.Lock()
        started = time.monotonic()
        await self._acquire(self._init_lock, timeout_s, "another InitF9t is")
        try:
            # R-UBX-INIT-2
            active = self.fanout.active
            if active and not force:
                raise UbloxError(
                    "FAILED_PRECONDITION",
                    f"{active} CaptureUblox stream(s) active; set force_init to re-initialise "
                    "the F9T anyway (their streams end)",
                )
            self._init_over = anyio.Event()
            if force:
                reason = f"F9T re-initialised by InitF9t(force_init) from {peer}"
                ended = self.fanout.end_all(Ending("CANCELLED", reason))
                self._end_poll(UbloxError("CANCELLED", reason))
                if ended:
                    log.info("InitF9t(force_init) from %s ended %d stream(s)", peer, ended)
            if self._poll_lock is None:
                self._poll_lock = anyio.Lock()
            remaining = timeout_s - (time.monotonic() - started)
            await self._acquire(self._poll_lock, remaining, "a PollMessage is")
            try:
                await self._teardown()  # R-UBX-INIT-3
                self.state = State.INITIALISING
                # R-UBX-INIT-11: the caller's deadline bounds the device I/O.
                with anyio.move_on_after(timeout_s - (time.monotonic() - started)):
                    return await self._initialise(plan, resolved)
                raise UbloxError(
                    "DEADLINE_EXCEEDED",
                    f"the deadline passed during InitF9t on {plan.device}; the port is closed"
                    + self._partial_note(plan),
                )
            finally:
                self._poll_lock.release()
        finally:
            if self._init_over is not None:
                self._init_over.set()
                self._init_over = None
            self._init_lock.release()

    async def _initialise(self, plan: F9tPlan, resolved: str) -> InitResult:
        applying = False
        timeout_s = self.config.command_timeout_s
        try:
            port = open_port(plan.device, resolved, plan.baud, self.config.allowed_devices)
            owner = PortOwner(port, self._on_frame)
            await self._start_owner(owner)
            version = await identify_model(owner, plan, timeout_s)
            uid = await identify_uid(owner, plan, timeout_s)
            applying = True
            applied = await apply_settings(
                owner, plan, version, timeout_s, self.config.signal_settle_s
            )
            await verify_settings(owner, plan, timeout_s)
            self._caching = True
            await self._check_dataflow(owner, plan)
        except BaseException as exc:
            self._teardown_now()  # R-UBX-INIT-11
            if isinstance(exc, UbloxError) and applying:
                raise UbloxError(exc.status, exc.details + self._partial_note(plan)) from None
            raise
        self.state = State.STREAMING
        lines = [
            "F9T initialized, configured, and verified successfully.",
            f"Model {version.model}, firmware {version.fwver or version.sw_version}"
            f" (protocol {version.protver or 'unknown'}), hardware {version.hw_version}",
            f"UID {uid}",
            f"{applied} key(s) applied to {', '.join(plan.layers)} and verified on "
            f"{plan.verify_layer}",
        ]
        if plan.ignored_keys:
            lines.append(f"Ignored request keys: {', '.join(plan.ignored_keys)}")
        message = "\n".join(lines)
        log.info("InitF9t on %s: %s", plan.device, " | ".join(lines))
        return InitResult(message, dict(plan.accepted_config))

    def _partial_note(self, plan: F9tPlan) -> str:
        note = "; the chip may hold part of the new settings"
        if plan.link_cutting_keys:
            note += (
                f"; these keys may cut the server's link to it: {', '.join(plan.link_cutting_keys)}"
            )
        return note

    async def _start_owner(self, owner: PortOwner) -> None:
        if self._tg is None:
            owner.port.close()
            raise UbloxError("UNAVAILABLE", "server shutting down")
        self._seen = set()
        self._owner = owner
        stopped = anyio.Event()
        self._port_stopped = stopped
        await self._tg.start(self._run_owner, owner, stopped)

    async def _run_owner(
        self, owner: PortOwner, stopped: anyio.Event, *, task_status: TaskStatus[None]
    ) -> None:
        try:
            with anyio.CancelScope() as scope:
                self._port_scope = scope
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch_silence, owner)
                    await owner.run(task_status=task_status)
                    tg.cancel_scope.cancel()
            if self._news is not None:
                self._news.set()  # a data-flow check in progress learns of a loss at once
            if owner.lost is not None and self._owner is owner and self.state is State.STREAMING:
                # R-UBX-INIT-12: once, no automatic re-init.
                self.fanout.end_all(Ending("UNAVAILABLE", owner.lost))
                self._end_poll(UbloxError("UNAVAILABLE", owner.lost))
                self._forget(owner)
        finally:
            owner.port.close()
            stopped.set()

    def _forget(self, owner: PortOwner) -> None:
        if self._owner is owner:
            self._reset()

    def _reset(self) -> None:
        """No owner, nothing cached, IDLE."""
        self._owner = None
        self._caching = False
        self.fanout.cache.clear()
        self.state = State.IDLE

    def _teardown_now(self) -> None:
        """Stop the owner (it closes the port as it ends); IDLE, cache empty, at once."""
        if self._port_scope is not None:
            self._port_scope.cancel()
            self._port_scope = None
        self._reset()

    async def _teardown(self) -> None:
        """R-UBX-INIT-3: as `_teardown_now`, then wait until the port is closed."""
        self._teardown_now()
        if self._port_stopped is not None:
            await self._port_stopped.wait()

    def _on_frame(self, received: Received) -> None:
        self._seen.add(received.name)
        if self._caching:
            self.fanout.publish(received)
        if self._news is not None:
            self._news.set()

    async def _check_dataflow(self, owner: PortOwner, plan: F9tPlan) -> None:
        """R-UBX-INIT-9: every enabled message arrives within dataflow_timeout_s."""
        timeout_s = self.config.dataflow_timeout_s
        wanted = set(plan.dataflow_names)
        if not wanted or timeout_s <= 0:
            return
        deadline = time.monotonic() + timeout_s
        while not wanted <= self._seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = ", ".join(sorted(wanted - self._seen))
                raise UbloxError(
                    "FAILED_PRECONDITION",
                    f"no {missing} from {plan.device} within {timeout_s:g} s "
                    "(output enabled on this port?)",
                )
            self._news = anyio.Event()
            with anyio.move_on_after(remaining):
                await self._news.wait()
            owner.raise_if_lost()
        self._news = None

    # -- silence (R-UBX-CAP-7) -----------------------------------------------------------------
    async def _watch_silence(self, owner: PortOwner) -> None:
        period = self.config.silence_warning_s
        noticed_at = -math.inf
        while True:
            now = time.monotonic()
            due = max(owner.last_frame_monotonic, noticed_at) + period
            if now < due:
                await anyio.sleep(due - now)
                continue
            if self.state is State.STREAMING:
                silent_s = now - owner.last_frame_monotonic
                self.fanout.notify_all(
                    Notice(f"no UBX message from {owner.port.device} for {silent_s:.3g} s")
                )
            noticed_at = now

    # -- CaptureUblox ----------------------------------------------------------------------
    async def subscribe(
        self, patterns: Sequence[str], wake: Callable[[], None], timeout_s: float
    ) -> Subscriber:
        """R-UBX-CAP-1 checks in order, then the atomic snapshot and subscription (CAP-3)."""
        await self._wait_for_init(timeout_s, "CaptureUblox")
        if self.shutting_down:
            raise UbloxError("UNAVAILABLE", "server shutting down")
        if self.state is not State.STREAMING:
            raise UbloxError("FAILED_PRECONDITION", NOT_STREAMING)
        try:
            compiled = compile_patterns(patterns)
        except PatternError as exc:
            raise UbloxError("INVALID_ARGUMENT", str(exc)) from None
        limit = self.config.max_capture_clients
        if self.fanout.active >= limit:
            raise UbloxError(
                "RESOURCE_EXHAUSTED",
                f"too many CaptureUblox streams: the limit is {limit} (max_capture_clients)",
            )
        subscriber = Subscriber(compiled, self.config.max_read_queue_size, wake)
        self.fanout.subscribe(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.fanout.unsubscribe(subscriber)

    # -- PollMessage -----------------------------------------------------------------------
    def _end_poll(self, error: UbloxError) -> None:
        if self._poll_scope is not None and self._poll_ending is None:
            self._poll_ending = error
            self._poll_scope.cancel()

    async def poll(self, patterns: Sequence[str], timeout_s: float) -> list[PollEntry]:
        """R-UBX-POLL-2 .. POLL-6."""
        await self._wait_for_init(timeout_s, "PollMessage")
        if self.shutting_down:
            raise UbloxError("UNAVAILABLE", "server shutting down")
        if self.state is not State.STREAMING:
            raise UbloxError("FAILED_PRECONDITION", NOT_STREAMING)
        if not patterns:
            raise UbloxError("INVALID_ARGUMENT", "no pattern: name the messages to poll")
        try:
            compiled = compile_patterns(patterns)
        except PatternError as exc:
            raise UbloxError("INVALID_ARGUMENT", str(exc)) from None
        candidates = poll_candidates(compiled)
        if not candidates:
            raise UbloxError(
                "INVALID_ARGUMENT", f"no pollable message matches {', '.join(patterns)}"
            )
        limit = self.config.max_poll_messages
        if len(candidates) > limit:
            raise UbloxError(
                "INVALID_ARGUMENT",
                f"{len(candidates)} pollable messages match {', '.join(patterns)}; the limit is "
                f"{limit} (max_poll_messages)",
            )
        if self._poll_lock is None:
            self._poll_lock = anyio.Lock()
        await self._acquire(self._poll_lock, timeout_s, "another PollMessage is")
        try:
            owner = self._owner
            if owner is None or self.state is not State.STREAMING:
                raise UbloxError("FAILED_PRECONDITION", NOT_STREAMING)
            self._poll_ending = None
            with anyio.CancelScope() as scope:
                self._poll_scope = scope
                entries = await self._poll(owner, candidates)
            if self._poll_ending is not None:
                raise self._poll_ending
            return entries
        finally:
            self._poll_scope = None
            self._poll_ending = None
            self._poll_lock.release()

    async def _poll(self, owner: PortOwner, candidates: list[str]) -> list[PollEntry]:
        timeout_s = self.config.poll_timeout_s
        with ExitStack() as stack:
            waits: list[tuple[str, Expectation]] = []
            for name in candidates:
                command = class_and_id(name)

                def answers(r: Received, name: str = name, command: Any = command) -> bool:
                    return r.name == name or (
                        name.startswith("CFG-") and ack_for(r, command) is False
                    )

                waits.append((name, stack.enter_context(owner.expect(answers))))
            for index, name in enumerate(candidates):
                if index:
                    await anyio.sleep(POLL_SPACING_S)
                await owner.write(poll_frame(name))
            deadline = time.monotonic() + timeout_s
            entries = []
            for name, expectation in waits:
                received = await expectation.wait(deadline - time.monotonic())
                if received is None:
                    entries.append(PollEntry(name, None, f"no answer within {timeout_s:g} s"))
                elif received.name != name:
                    entries.append(PollEntry(name, None, "NAK"))
                else:
                    entries.append(PollEntry(name, received))
            return entries
