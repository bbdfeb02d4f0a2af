"""The DaqData server application: listeners, reflection, health, start-up and shutdown.

Use it from async code (asyncio or trio, through anyio)::

    async with DaqDataServer(config, port=0, uds="/tmp/x.sock") as server:
        print(server.port)           # the bound TCP port
        server.hub.publish(frame)    # frames from any source
        await server.serve_until_signalled()

`run(config, backend)` is the blocking entry point of `python -m panoseti_daq.serve`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from ..bridge import GrpclibLoop, grpclib_loop
from ..codec import DaqCodec
from ..config import HpIoConfig, ServerConfig, load_hp_io_config
from ..messages import DESCRIPTOR_POOL
from .core import ServerCore
from .flow import grpclib_configuration
from .service import DaqDataService
from .sockets import prepare_socket_path
from .stats import server_stats, write_stats

log = logging.getLogger(__name__)

__all__ = ["DaqDataServer", "run"]

_HEALTH_SERVICE = "grpc.health.v1.Health"
_REFLECTION_SERVICES = (
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


def _tcp_host(host: str) -> str | None:
    """asyncio's form of a bind address; "[::]", "::", "" and "*" mean every interface.

    asyncio binds "::" as IPv6 only, so the dual-stack wildcard is None (one socket per family).
    """
    if host in ("", "*", "::", "[::]"):
        return None
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


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
    ) -> None:
        self.config = config
        self.stats_file = stats_file
        self.stats_interval_s = stats_interval_s
        self._started = time.monotonic()
        self.host = config.host if host is None else host
        self.requested_port = config.port if port is None else port
        self.uds_path = config.uds_path if uds is None else (uds or None)
        self.core = ServerCore(config)
        self.hub = self.core.hub
        self.port: int | None = None
        self._servers: list[Server] = []
        self._uds_bound = False
        self._health = ServiceStatus()
        self._stack: AsyncExitStack | None = None
        self._loop: GrpclibLoop | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    # -- start -----------------------------------------------------------------------------
    async def __aenter__(self) -> DaqDataServer:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._loop = await stack.enter_async_context(grpclib_loop())
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._stop)
            await self._task_group.start(self.core.run)
            await self._loop.run(self._start_listeners)
            if self.stats_file is not None:
                self._task_group.start_soon(
                    write_stats, self.stats_file, self.stats_interval_s, self.stats
                )
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        self.core.channel_factory = self._channel_to_self
        self.core.run_on_grpclib_loop = self._loop.run
        if self.config.init_from_default:
            await self._init_from_default()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        return await stack.__aexit__(*exc_info)

    def _handlers(self) -> list[Any]:
        service = DaqDataService(self.core)
        health = Health({service: [self._health]})
        names = [*_REFLECTION_SERVICES, "daqdata.DaqData", _HEALTH_SERVICE]
        # Reflection answers from betterproto2's descriptor pool, where our schema lives.
        reflection = ServerReflection.extend([service])
        for servable in reflection:
            servable._service_names = names
            servable._pool = DESCRIPTOR_POOL
        return [service, health, *reflection]

    async def _start_listeners(self) -> None:
        handlers = self._handlers()
        if self.requested_port is not None and self.requested_port >= 0:
            host = _tcp_host(self.host)
            port = self.requested_port
            if port == 0 and host is None:
                port = _free_port()  # one port for every address family
            server = Server(handlers, codec=DaqCodec(), config=grpclib_configuration(self.config))
            await server.start(host, port)
            self._servers.append(server)
            self.port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            log.info("listening on %s:%d", self.host, self.port)
        if self.uds_path:
            prepare_socket_path(self.uds_path, "unix_domain_socket")
            server = Server(handlers, codec=DaqCodec(), config=grpclib_configuration(self.config))
            await server.start(path=self.uds_path)
            self._servers.append(server)
            self._uds_bound = True
            log.info("listening on unix://%s", self.uds_path)
        self._health.set(True)

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
            raise RuntimeError(f"hp_io configuration failed: {result.error_message}")

    def stats(self) -> dict[str, Any]:
        """Counters and resources now (see stats.py); call it from the server's event loop."""
        return server_stats(self.core, self._started, self._loop.loop if self._loop else None)

    # -- stop ------------------------------------------------------------------------------
    async def _stop(self) -> None:
        """R-STOP-1: refuse new calls, end streams with a status, stop sources, close."""
        assert self._loop is not None and self._task_group is not None
        with anyio.CancelScope(shield=True):
            self.core.begin_shutdown()
            self._health.set(False)
            with anyio.move_on_after(self.config.shutdown_grace_period):
                while self.core.active_streams:
                    await anyio.sleep(0.01)
            for server in self._servers:
                server.close()
            with anyio.move_on_after(max(0.5, self.config.shutdown_grace_period)):
                for server in self._servers:
                    await self._loop.run(server.wait_closed)
            self._servers.clear()
            await self.core.stop_sources()
            if self._uds_bound and self.uds_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.uds_path)
        self._task_group.cancel_scope.cancel()

    async def serve_until_signalled(self) -> None:
        """Serve until SIGINT or SIGTERM."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s received: shutting down", signal.Signals(signum).name)
                return


async def _serve(config: ServerConfig, init_sim: bool, **listeners_and_stats: Any) -> None:
    async with DaqDataServer(config, **listeners_and_stats) as server:
        if init_sim:
            await server.init_hp_io(
                load_hp_io_config(
                    Path(__file__).parent.parent / "config" / "hp_io_config_simulate.json"
                )
            )
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
    )
    anyio.run(serve, backend=backend)
