"""The DaqData server application: listeners, reflection, health, start-up and shutdown.

Use it from async code (asyncio or trio, through anyio)::

    async with DaqDataServer(config, port=0, uds="/tmp/x.sock") as server:
        print(server.port)           # the bound TCP port
        server.core.publisher("upload")(frame)   # frames from outside, counted as uploads
        await server.serve_until_signalled()

`run(config, backend)` is the blocking entry point of `python -m panoseti_daq.serve`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterable, Collection
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from .._bundled import BUNDLED_CONFIG_DIR
from .._grpclib.bridge import GrpclibLoop, grpclib_loop
from .._grpclib.codec import DaqCodec
from .._grpclib.upload import upload_frames
from ..config import HpIoConfig, ServerConfig, SimulateConfig, load_hp_io_config
from ..errors import ConfigError, PanosetiDaqError, SourceError
from ..frames import PanoFrame
from ..messages import DESCRIPTOR_POOL, SOURCE_METADATA_KEY
from ..ublox.controller import UbloxController
from ..ublox.service import UbloxControlService
from .core import ServerCore
from .flow import connection_guard, grpclib_configuration
from .hp_io_checks import HpIoRefused, check_hp_io
from .metrics import ServerCollector, metrics_registry, serve_metrics
from .service import DaqDataService
from .simulation import run_rpc_simulation
from .sockets import prepare_socket_path
from .stats import server_stats, task_count, write_stats

log = logging.getLogger(__name__)

__all__ = ["SERVICES", "DaqDataServer", "StartupError", "run"]

# What a server may serve: DaqData (images) and UbloxControl (the timing receiver).
SERVICES = ("daqdata", "ublox")


class StartupError(PanosetiDaqError):
    """A start-up resource the server cannot have (R-OPS-1, R-OPS-2): the message names the
    option or key, the path or port, and the reason, in one line."""


def _reason(exc: OSError) -> str:
    """ "address already in use" rather than "[Errno 98] Address already in use"."""
    text = os.strerror(exc.errno) if exc.errno else str(exc)
    return text[:1].lower() + text[1:]


def _tcp_host(host: str) -> str | None:
    """A bind address without brackets; None for every interface ("[::]", "::", "", "*"),
    which `_tcp_listening_socket` binds as one dual-stack socket."""
    if host in ("", "*", "::", "[::]"):
        return None
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _tcp_listening_socket(host: str | None, port: int) -> socket.socket:
    """A bound TCP socket for grpclib's `Server.start(sock=...)`.

    Binding it here lets port 0 take the kernel's free port in the bind itself (no race between
    picking a port and binding it). The wildcard (None) is one dual-stack IPv6 socket, which
    takes IPv4 connections too; an IPv4 socket where the host has no IPv6.
    """
    if host is None:
        if socket.has_ipv6:
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                return _bind(sock, ("::", port), dual_stack=True)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise
                log.debug("no IPv6 listener (%s): listening on IPv4 only", exc)
        return _bind(socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("0.0.0.0", port))
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return _bind(socket.socket(family, kind, proto), address)


def _bind(sock: socket.socket, address: Any, *, dual_stack: bool = False) -> socket.socket:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class DaqDataServer:
    """The server: the core's task group plus grpclib listeners on TCP and a Unix socket."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        host: str | None = None,
        port: int | None = None,
        uds: str | None = None,
        stats_file: str | os.PathLike[str] | None = None,
        stats_interval_s: float = 60.0,
        metrics_port: int | None = None,
        init_hp_io: str | os.PathLike[str] | None = None,
        services: Collection[str] = SERVICES,
    ) -> None:
        unknown = set(services) - set(SERVICES)
        if unknown or not services:
            raise ValueError(f"services must be some of {', '.join(SERVICES)}, not {services!r}")
        self.config = config
        # DaqData, UbloxControl or both on the listeners (R-UBX-SRV-1: a UbloxControl-only
        # server is a second process on the node, on its own port).
        self.serves_daqdata = "daqdata" in services
        self.serves_ublox = "ublox" in services
        # Where each setting came from, for start-up errors: an argument (`serve`'s option)
        # or the config file's key.
        self._given = {"port": port, "uds": uds, "metrics": metrics_port, "init": init_hp_io}
        self.init_hp_io_file = config.init_hp_io if init_hp_io is None else Path(init_hp_io)
        self.requested_metrics_port = config.metrics_port if metrics_port is None else metrics_port
        #: The bound port of the Prometheus endpoint, once listening (None: no endpoint).
        self.metrics_port: int | None = None
        self.stats_file = stats_file
        self.stats_interval_s = stats_interval_s
        self._started = time.monotonic()
        self.host = config.host if host is None else host
        self.requested_port = config.port if port is None else port
        self.uds_path = config.uds_path if uds is None else (uds or None)
        self.core = ServerCore(config, rpc_simulation=self._run_rpc_simulation)
        # The UbloxControl service, beside DaqData on the same listeners (R-UBX-SRV-1).
        self.ublox = UbloxController(config.ublox_control)
        self.hub = self.core.hub
        self.port: int | None = None
        self._servers: list[Server] = []
        # R-PEER-1, R-PEER-3: one set of connection limits over every listener.
        self.guard = connection_guard(config)
        self._uds_bound = False
        self._health = ServiceStatus()
        self._stack: AsyncExitStack | None = None
        self._loop: GrpclibLoop | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        # Cancelled by a second signal (serve_until_signalled): the stop waits no grace period.
        # Made on entering: an anyio scope needs the event loop.
        self._grace: anyio.CancelScope | None = None

    # -- start -----------------------------------------------------------------------------
    async def __aenter__(self) -> DaqDataServer:
        self._grace = anyio.CancelScope()
        # R-OPS-2: what start-up needs is checked before any listener reports "listening".
        self._check_stats_file()
        hp_io = await anyio.to_thread.run_sync(self._checked_init_file)
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._loop = await stack.enter_async_context(grpclib_loop())
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._stop)
            if self.serves_daqdata:
                await self._task_group.start(self.core.run)
            if self.serves_ublox:
                await self._start_ublox()
            if self.requested_metrics_port is not None:
                self.metrics_port = await self._start_metrics()
            await self._loop.run(self._start_listeners)
            if self.stats_file is not None:
                self._task_group.start_soon(
                    write_stats, self.stats_file, self.stats_interval_s, self.stats
                )
            if hp_io is not None:
                await self._init_at_start(hp_io)
            elif self.config.init_from_default and self.serves_daqdata:
                await self._init_from_default()
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    def _where(self, given: str, option: str, key: str) -> str:
        """`option` when the setting was given as an argument, else the config file's key."""
        if self._given[given] is not None:
            return option
        file = self.config.config_file
        return f"{key!r} in {file}" if file else repr(key)

    def _check_stats_file(self) -> None:
        if self.stats_file is None:
            return
        path = Path(self.stats_file)
        if not path.parent.is_dir():
            raise StartupError(f"--stats-file {path}: directory {path.parent} does not exist")
        try:
            with open(path, "a"):
                pass
        except OSError as exc:
            raise StartupError(f"--stats-file {path}: {_reason(exc)}") from None

    def _checked_init_file(self) -> HpIoConfig | None:
        """R-OPS-1: the hp_io configuration to apply at start, loaded and checked as InitHpIo
        checks a request; StartupError naming the file and the reason."""
        path = self.init_hp_io_file
        if path is None:
            return None
        where = self._where("init", f"--init {path}", "init_hp_io")
        if not self.serves_daqdata:
            raise StartupError(
                f"{where}: hp_io belongs to DaqData, which this server does not serve"
            )
        try:
            hp_io = load_hp_io_config(path)
        except ConfigError as exc:
            reason = exc.reason if exc.key == "<file>" else str(exc)
            raise StartupError(f"{where}: {reason}") from None
        data_dir = Path(hp_io.data_dir).expanduser()
        if hp_io.data_dir and not data_dir.is_absolute():
            # As the config file's paths: relative to the file's directory.
            hp_io = dataclasses.replace(hp_io, data_dir=str(Path(path).parent / data_dir))
        try:
            return check_hp_io(hp_io, self.config)
        except HpIoRefused as exc:
            raise StartupError(f"{where}: {exc.message}") from None

    async def _init_at_start(self, hp_io: HpIoConfig) -> None:
        try:
            await self.init_hp_io(hp_io)
        except SourceError as exc:  # "hp_io configuration failed: ..."
            where = self._where("init", f"--init {self.init_hp_io_file}", "init_hp_io")
            raise StartupError(f"{where}: {exc}") from None
        log.info("hp_io initialised from %s: data_dir %s", self.init_hp_io_file, hp_io.data_dir)

    async def _start_metrics(self) -> int:
        assert self._task_group is not None and self.requested_metrics_port is not None
        port = self.requested_metrics_port
        registry = metrics_registry(ServerCollector(self.core, self._started, self._task_count))
        try:
            bound: int = await self._task_group.start(
                serve_metrics, _tcp_host(self.host), port, registry
            )
        except OSError as exc:
            where = self._where("metrics", "--metrics-port", "metrics_port")
            raise StartupError(f"metrics port {port} ({where}): {_reason(exc)}") from None
        return bound

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        return await stack.__aexit__(*exc_info)

    async def _start_ublox(self) -> None:
        """Run the UbloxControl controller on grpclib's loop, where its handlers run."""
        assert self._loop is not None and self._task_group is not None
        ready = anyio.Event()
        self._task_group.start_soon(self._loop.run, self.ublox.run, ready.set)
        await ready.wait()

    def _handlers(self) -> list[Any]:
        services: list[Any] = []
        if self.serves_daqdata:
            services.append(DaqDataService(self.core, self.uds_path))
        if self.serves_ublox:
            services.append(UbloxControlService(self.ublox))
        health = Health({service: [self._health] for service in services})
        # Reflection lists every service, itself included (R-NET-3, R-UBX-SRV-2), and answers
        # from betterproto2's descriptor pool, where our schemas live. `extend` names the
        # services it is given: hand it a first pair of reflection servables for their names,
        # keep the second pair it adds.
        named: list[Any] = [*services, health, *ServerReflection.extend([])]
        reflection = ServerReflection.extend(named, pool=DESCRIPTOR_POOL)[len(named) :]
        return [*services, health, *reflection]

    async def _start_listeners(self) -> None:
        handlers = self._handlers()
        listening = []
        if self.requested_port is not None and self.requested_port >= 0:
            try:
                sock = _tcp_listening_socket(_tcp_host(self.host), self.requested_port)
            except OSError as exc:
                where = self._where("port", "--port", "port")
                raise StartupError(
                    f"gRPC port {self.requested_port} on {self.host} ({where}): {_reason(exc)}"
                ) from None
            server = Server(handlers, codec=DaqCodec(), config=grpclib_configuration(self.config))
            self.guard.install(server)
            try:
                await server.start(sock=sock)
            except BaseException:
                sock.close()
                raise
            self._servers.append(server)
            self.port = sock.getsockname()[1]
            listening.append(f"{self.host}:{self.port}")
        if self.uds_path:
            key = "unix_domain_socket"  # `serve` checks --uds itself before this
            prepare_socket_path(self.uds_path, key)
            server = Server(handlers, codec=DaqCodec(), config=grpclib_configuration(self.config))
            self.guard.install(server)
            try:
                await server.start(path=self.uds_path)
            except OSError as exc:
                raise StartupError(f"{key} {self.uds_path}: {_reason(exc)}") from None
            self._servers.append(server)
            self._uds_bound = True
            listening.append(f"unix://{self.uds_path}")
        for address in listening:
            log.info("listening on %s", address)
        self._health.set(True)

    async def _run_rpc_simulation(self, sim: SimulateConfig) -> None:
        """The simulation's rpc mode: upload to this server through a grpclib channel."""
        if self._loop is None or not self._servers:
            raise RuntimeError("rpc simulation needs a listener to upload to")

        async def upload(frames: AsyncIterable[PanoFrame]) -> None:
            channel = self._channel_to_self()
            try:
                # Metadata: the frames are counted as the simulation's, not an upload's.
                await upload_frames(channel, frames, {SOURCE_METADATA_KEY: "simulation"})
            finally:
                channel.close()

        await self._loop.run(run_rpc_simulation, sim, upload)

    def _channel_to_self(self) -> Any:
        from grpclib.client import Channel

        if self.uds_path:
            return Channel(path=self.uds_path, codec=DaqCodec())
        host = _tcp_host(self.host)
        return Channel(
            host if host not in (None, "0.0.0.0") else "127.0.0.1", self.port, codec=DaqCodec()
        )

    async def _init_from_default(self) -> None:
        path = self.config.default_hp_io_config_path()
        hp_io = load_hp_io_config(path)
        await self.init_hp_io(hp_io)

    async def init_hp_io(self, hp_io: HpIoConfig) -> None:
        """Configure hp_io from the server's side (init_from_default, `serve --init-sim`)."""
        result = await self.core.reconfigure(hp_io)
        if not result.success:
            raise SourceError(f"hp_io configuration failed: {result.error_message}")

    def _task_count(self) -> int:
        return task_count(self._loop.loop if self._loop else None)

    def stats(self) -> dict[str, Any]:
        """Counters and resources now (see stats.py); call it from the server's event loop."""
        stats = server_stats(self.core, self._started, self._loop.loop if self._loop else None)
        return {**stats, "connections": self.guard.counters()}  # R-PEER-1, R-PEER-3

    # -- stop ------------------------------------------------------------------------------
    async def _stop(self) -> None:
        """R-STOP-1: refuse new calls, end streams with a status, stop sources, close."""
        assert self._loop is not None and self._task_group is not None
        assert self._grace is not None
        with anyio.CancelScope(shield=True):
            self.core.begin_shutdown()
            self.ublox.begin_shutdown()  # R-UBX-SRV-3: its streams end UNAVAILABLE at once
            self._health.set(False)
            streams_ended = anyio.Event()
            self.hub.call_when_empty(streams_ended.set)
            ublox_streams_ended = anyio.Event()
            self.ublox.call_when_no_streams(ublox_streams_ended.set)
            grace = self.config.shutdown_grace_period
            with self._grace, anyio.move_on_after(grace):
                await streams_ended.wait()
            with anyio.move_on_after(self.config.ublox_control.shutdown_grace_period):
                await ublox_streams_ended.wait()
            for server in self._servers:
                server.close()
            if self._grace.cancel_called:
                grace = 0.0  # hurried: the listeners get the minimum, below
            with anyio.move_on_after(max(0.5, grace)):
                for server in self._servers:
                    await self._loop.run(server.wait_closed)
            self._servers.clear()
            if self.serves_ublox:
                with anyio.move_on_after(self.config.ublox_control.shutdown_grace_period):
                    await self._loop.run(self.ublox.stop)
            await self.core.stop_sources()
            if self._uds_bound and self.uds_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.uds_path)
        self._task_group.cancel_scope.cancel()

    async def serve_until_signalled(self) -> None:
        """Serve until SIGINT or SIGTERM; leaving the server's `async with` then stops it.

        The signals stay caught until the stop is over: another SIGINT or SIGTERM meanwhile
        (Ctrl+C twice, or a terminal's Ctrl+C reaching both a supervisor and its server, which
        then signals the server too) ends the grace period of the streams at once; the rest of
        the stop (sources, simulation directories, the socket file) still runs. Without this a
        second signal interrupted the stop wherever it was, with a traceback.
        """
        assert self._task_group is not None, "serve inside `async with DaqDataServer(...)`"
        first = anyio.Event()
        await self._task_group.start(self._catch_signals, first)
        await first.wait()

    async def _catch_signals(self, first: anyio.Event, *, task_status: TaskStatus[None]) -> None:
        """Until the stop cancels the task group: set `first` on the first signal, hurry the
        stop on any later one."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not first.is_set():
                    log.info("%s received: shutting down", name)
                    first.set()
                else:
                    log.warning("%s received again: ending the streams now", name)
                    assert self._grace is not None
                    self._grace.cancel()


def freeze_startup_objects() -> None:
    """Take what start-up made (modules, descriptors, configuration) out of the garbage
    collector's passes: collect once, then `gc.freeze()`.

    A serving process allocates mostly short-lived objects, but every collection of the older
    generations walks every object they hold: after start-up ~90,000 (imports, descriptor
    pools), 15-60 ms per pass on a 2-core machine, a stall of every stream at that moment. The
    first such pass came a few seconds after start; frozen, those objects are never walked
    again. `python -m panoseti_daq.serve` only: it is a process-wide setting.
    """
    gc.collect()
    gc.freeze()


async def _serve(config: ServerConfig, init_sim: bool, **listeners_and_stats: Any) -> None:
    async with DaqDataServer(config, **listeners_and_stats) as server:
        if init_sim:
            await server.init_hp_io(
                load_hp_io_config(BUNDLED_CONFIG_DIR / "hp_io_config_simulate.json")
            )
        freeze_startup_objects()
        await server.serve_until_signalled()


def run(
    config: ServerConfig,
    backend: str = "trio",
    *,
    host: str | None = None,
    port: int | None = None,
    uds: str | None = None,
    init_sim: bool = False,
    stats_file: str | None = None,
    stats_interval_s: float = 60.0,
    metrics_port: int | None = None,
    init_hp_io: str | None = None,
    services: Collection[str] = SERVICES,
) -> None:
    """Run the server until SIGINT/SIGTERM; returns after a graceful shutdown."""
    serve = functools.partial(
        _serve,
        config,
        init_sim,
        host=host,
        port=port,
        uds=uds,
        stats_file=stats_file,
        stats_interval_s=stats_interval_s,
        metrics_port=metrics_port,
        init_hp_io=init_hp_io,
        services=services,
    )
    anyio.run(serve, backend=backend)
