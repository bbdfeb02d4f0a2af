"""The server's core: hp_io configuration, data sources and the hub, on one anyio task group.

The core is backend-neutral anyio code. It owns two long-lived tasks:

- the *controller*, which applies InitHpIo reconfigurations: it stops the running data sources
  (scanner, simulation) and starts new ones inside its own task group (R-INIT-6, R-INIT-7);
- the data sources themselves, started and cancelled by the controller.

RPC handlers talk to the core only through the synchronous hub (`subscribe`; uploads reach
`publish` through an `Uploader`), the command channel and `anyio.Event`s they create
themselves, so nothing here depends on which event loop runs grpclib.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import checkpoint

from ..config import HpIoConfig, ServerConfig, SimulateConfig, default_sim_data_dir
from ..errors import SourceError, first_leaf_exception
from ..frames import PanoFrame
from ..products import product_named
from .hub import EndReason, Hub, ReaderLimits, check_source
from .scanner import RunScanner, run_scanner
from .simulation import (
    remove_stale_simulation_dirs,
    run_filesystem_simulation,
    run_uds_simulation,
)

log = logging.getLogger(__name__)

__all__ = ["Reconfigure", "ServerCore", "Uploader"]

# R-INIT-7: a configuration that does not become valid within this time fails.
START_TIMEOUT_S = 10.0
# An upload hands at most this many frames (and at most half a reader queue) to the hub before
# it waits for readers to take them.
UPLOAD_BURST = 64


@dataclass(eq=False)
class Reconfigure:
    """An InitHpIo request on its way to the controller, and its answer."""

    config: HpIoConfig
    done: anyio.Event
    success: bool = False
    error_message: str = ""


class Uploader:
    """One upload's way into the hub (R-UP-4, R-UP-5, R-STREAM-11).

    `put` publishes the frame at once (the hub never waits for a reader), so a handler passes
    on every message that has arrived before it yields. Every `burst` frames, `flush` yields
    once: the readers' wake-ups, queued by the hub as it offered them the frames, run first.
    A reader that keeps up thus never has more than `burst` new frames (half its queue)
    waiting, and never loses one. An upload goes no faster than its handler reads and
    decodes, which HTTP/2 flow control passes on to the client (`server/flow.py`).
    """

    def __init__(
        self,
        publish: Callable[[PanoFrame, str, float, bytes | None], None],
        burst: int,
        source: str = "upload",
    ) -> None:
        check_source(source)
        self._publish = publish
        self._burst = burst
        self._source = source
        self._pending = 0

    async def put(self, frame: PanoFrame, encoded: bytes | None = None) -> None:
        self._publish(frame, self._source, time.monotonic(), encoded)
        self._pending += 1
        if self._pending >= self._burst:
            await self.flush()

    async def flush(self) -> None:
        """Let the readers take what was put so far (every frame put is in the hub)."""
        self._pending = 0
        await checkpoint()


@dataclass(eq=False)
class _Sources:
    config: HpIoConfig
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stopped: anyio.Event = field(default_factory=anyio.Event)


class ServerCore:
    """State shared by the RPC handlers and the core tasks."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        rpc_simulation: Callable[[SimulateConfig], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """`rpc_simulation` runs the simulation's rpc mode, which uploads through UploadImages
        to this very server; the app, which owns the listeners and grpclib's loop, provides it."""
        self.config = config
        self.hub = Hub(
            config.valid_data_products,
            ReaderLimits(
                max_queue=config.max_read_queue_size,
                reader_timeout_s=config.reader_timeout,
                max_enqueue_timeouts=config.max_reader_enqueue_timeouts,
                max_dequeue_timeouts=config.max_reader_dequeue_timeouts,
            ),
        )
        self.products = [product_named(name) for name in config.valid_data_products]
        self.shutting_down = False
        self.hp_io: HpIoConfig | None = None
        self.hp_io_valid = False
        # Why the running configuration's data source stopped for good (R-SRC-1); None while
        # it runs or after a stop that was asked for.
        self.source_failure: str | None = None
        self._rpc_simulation = rpc_simulation
        self._command_send, self._command_receive = anyio.create_memory_object_stream[Reconfigure](
            1
        )
        self._sources: _Sources | None = None

    @property
    def active_streams(self) -> int:
        """StreamImages clients now (R-STREAM-4)."""
        return self.hub.subscriber_count

    def publisher(self, source: str) -> Callable[[PanoFrame], None]:
        """`publish(frame)` for a data source: into the hub, counted under `source`."""
        check_source(source)
        publish = self.hub.publish
        monotonic = time.monotonic

        def publish_from_source(frame: PanoFrame) -> None:
            publish(frame, source, monotonic())

        return publish_from_source

    # -- called from RPC handlers ----------------------------------------------------------
    def uploader(self, source: str = "upload") -> Uploader:
        """A queue into the hub for one UploadImages call (R-UP-4)."""
        burst = max(1, min(UPLOAD_BURST, self.config.max_read_queue_size // 2))
        return Uploader(self.hub.publish, burst, source)

    async def submit(self, config: HpIoConfig) -> Reconfigure:
        """Hand a configuration to the controller; its `done` is set once it is answered."""
        request = Reconfigure(config, anyio.Event())
        try:
            await self._command_send.send(request)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The controller has stopped: answered as it answers what was still queued.
            request.error_message = "server shutting down"
            request.done.set()
        return request

    async def reconfigure(self, config: HpIoConfig) -> Reconfigure:
        """Hand a configuration to the controller and wait for its answer."""
        request = await self.submit(config)
        await request.done.wait()
        return request

    # -- the core's tasks ------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the controller (and the Unix-socket ingest, if enabled) until cancelled."""
        await anyio.to_thread.run_sync(  # R-SRC-2
            remove_stale_simulation_dirs, default_sim_data_dir().parent
        )
        async with anyio.create_task_group() as tg:
            await tg.start(self._controller, tg)
            if self.config.uds_ingest.enabled:
                from .uds_ingest import run_uds_ingest

                await tg.start(
                    run_uds_ingest, self.config.uds_ingest, self.products, self.publisher("socket")
                )
            task_status.started()

    async def _controller(self, tg: TaskGroup, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        async with self._command_receive:
            try:
                async for request in self._command_receive:
                    try:
                        await self._apply(tg, request)
                    finally:
                        request.done.set()
            finally:
                # Nothing is sent once the controller has stopped; a send stream left open
                # would warn when collected, in whichever test or task happens to collect it.
                self._command_send.close()
                self._answer_queued()

    def _answer_queued(self) -> None:
        """The controller stops: answer the requests still queued (their writers wait)."""
        while True:
            try:
                request = self._command_receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return
            request.error_message = "server shutting down"
            request.done.set()

    async def _apply(self, tg: TaskGroup, request: Reconfigure) -> None:
        previous = self._sources.config if self._sources else None
        self.hub.end_all(EndReason.RECONFIGURED, "server reconfigured by InitHpIo (force=true)")
        await self.stop_sources()
        error = await self._start(tg, request.config)
        if error is None:
            request.success = True
            return
        request.error_message = error
        log.warning("hp_io configuration failed: %s", error)
        if previous is not None and await self._start(tg, previous) is None:
            request.error_message += "; the previous configuration was restored"

    async def _start(self, tg: TaskGroup, config: HpIoConfig) -> str | None:
        """Start the sources of `config`; the error message, or None once valid."""
        sources = _Sources(config)
        self.hub.clear()
        try:
            with anyio.fail_after(START_TIMEOUT_S):
                await tg.start(self._run_sources, sources)
        except TimeoutError:
            sources.scope.cancel()
            await sources.stopped.wait()
            return f"hp_io did not become valid within {START_TIMEOUT_S:g} s"
        except Exception as exc:
            log.debug("hp_io start failed", exc_info=True)
            return f"hp_io failed to start: {first_leaf_exception(exc)}"
        self._sources = sources
        self.hp_io = config
        self.hp_io_valid = True
        self.source_failure = None
        log.info(
            "hp_io valid: %s every %g s, modules %s",
            "simulation" if config.simulate_daq else config.data_dir,
            config.update_interval_seconds,
            list(config.module_ids) or "all",
        )
        return None

    async def _run_sources(self, sources: _Sources, *, task_status: TaskStatus[None]) -> None:
        """Run the data sources of one configuration until cancelled (R-STATE-1)."""
        config = sources.config
        started = False
        try:
            with sources.scope:
                async with anyio.create_task_group() as tg:
                    if config.simulate_daq:
                        data_dir = await self._start_simulation(tg)
                    else:
                        data_dir = Path(config.data_dir)
                    if data_dir is not None:
                        scanner = RunScanner(
                            data_dir,
                            config.module_ids,
                            self.products,
                            watch=self.config.scanner_watch,
                            allowed_roots=self._allowed_roots(config),
                        )
                        source = "simulation" if config.simulate_daq else "scanner"
                        await tg.start(
                            run_scanner,
                            scanner,
                            config.update_interval_seconds,
                            self.publisher(source),
                        )
                    task_status.started()
                    started = True
        except Exception as exc:
            if not started:
                raise  # the controller reports it (R-INIT-7)
            # A source failed later: hp_io is no longer valid, the server keeps serving.
            cause = first_leaf_exception(exc)
            if isinstance(cause, SourceError):  # R-SIM-7: one line naming the path, no traceback
                log.error("%s; data source stopped, hp_io is no longer valid", cause)
                self._source_failed(sources, str(cause))
            else:
                log.exception("hp_io data source failed; hp_io is no longer valid")
                self._source_failed(sources, f"the data source failed: {cause!r}")
        else:
            if started and not sources.scope.cancel_called:
                log.error("hp_io data source ended; hp_io is no longer valid")
                self._source_failed(sources, "the data source ended")
        finally:
            sources.stopped.set()

    def _source_failed(self, sources: _Sources, cause: str) -> None:
        """R-SRC-1: hp_io becomes invalid; every open stream ends with UNAVAILABLE naming
        `cause`, and new ones are refused naming it, until the next InitHpIo."""
        if self._sources is not sources:
            return  # a configuration already replaced
        self.hp_io_valid = False
        self.source_failure = cause
        self.hub.end_all(EndReason.SOURCE_FAILED, f"hp_io data source stopped: {cause}")

    def _allowed_roots(self, config: HpIoConfig) -> tuple[Path, ...]:
        """Where the scanner may read (R-INIT-12): the allowed data roots, and the
        simulation's own directory when simulating."""
        if config.simulate_daq:
            return (*self.config.allowed_data_roots, self.config.simulate_daq_cfg.data_dir)
        return self.config.allowed_data_roots

    async def _start_simulation(self, tg: TaskGroup) -> Path | None:
        """Start the simulation (R-INIT-8); the directory to scan, or None in rpc mode."""
        sim = self.config.simulate_daq_cfg
        if sim.simulation_mode == "filesystem":
            await tg.start(run_filesystem_simulation, sim)
            return sim.data_dir
        if sim.simulation_mode == "rpc":
            if self._rpc_simulation is None:
                raise RuntimeError("rpc simulation needs a listener to upload to")
            tg.start_soon(self._run_rpc_simulation, sim)
            return None
        if sim.simulation_mode == "uds":
            if not self.config.uds_ingest.enabled:
                # R-SIM-6
                raise RuntimeError("simulation mode 'uds' needs acquisition_methods.uds enabled")
            template = self.config.uds_ingest.socket_path_template
            await tg.start(run_uds_simulation, sim, template)
            return None
        raise RuntimeError(f"simulation mode {sim.simulation_mode!r} is not available")

    async def _run_rpc_simulation(self, sim: SimulateConfig) -> None:
        """The rpc simulation; after its frame_limit, hp_io stays valid until stopped, as the
        filesystem simulation's run stays (an upload that fails is a failed source, R-SRC-1)."""
        assert self._rpc_simulation is not None
        await self._rpc_simulation(sim)
        await anyio.sleep_forever()

    async def stop_sources(self) -> None:
        """Cancel the running data sources and wait until they are gone (R-INIT-6)."""
        sources, self._sources = self._sources, None
        self.hp_io_valid = False
        if sources is None:
            return
        sources.scope.cancel()
        with anyio.move_on_after(self.config.hp_io_stop_timeout):
            await sources.stopped.wait()
            return
        log.warning("data sources did not stop within %g s", self.config.hp_io_stop_timeout)

    def begin_shutdown(self) -> None:
        """R-STOP-1, R-STREAM-3: refuse new streams and end the active ones."""
        self.shutting_down = True
        self.hub.end_all(EndReason.SHUTDOWN, "server shutting down")
