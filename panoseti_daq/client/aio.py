"""AsyncDaqClient: the async client of many DAQ nodes, for asyncio and trio (spec §13).

Usage, on either backend::

    async with AsyncDaqClient("daq_config.json", "network_config.json") as client:
        hosts = await client.get_valid_daq_hosts()
        await client.init_sim(hosts)
        async for image in client.stream_images(hosts, True, True, 1.0):
            print(image["module_id"], image["header"]["pandas_unix_timestamp"])

grpclib runs on asyncio: under trio the client opens (or reuses) a trio-asyncio loop, and all
RPCs run there (panoseti_daq.bridge). Frames cross to the caller through an anyio memory stream,
with no per-frame bridge call.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import AsyncIterable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ..bridge import GrpclibLoop, grpclib_loop
from ..codec import DaqCodec, StreamReply, UploadItem, stream_response_message
from ..config import BUNDLED_CONFIG_DIR
from ..errors import RpcError
from ..frames import PanoFrame
from ..messages import (
    Empty,
    InitHpIoRequest,
    InitHpIoResponse,
    PanoImage,
    StreamImagesRequest,
)
from ..products import ImageType, product_for
from .targets import DaqNode, load_daq_nodes

log = logging.getLogger(__name__)

__all__ = ["AsyncDaqClient", "ImageStream", "as_frame"]

PING_TIMEOUT_S = 2.0
RETRY_DELAY_S = 1.0
STREAM_BUFFER = 256
_PATH = "/daqdata.DaqData/"
Hosts = str | Iterable[str] | None


def as_frame(image: PanoFrame | PanoImage | Mapping[str, Any]) -> PanoFrame:
    """A PanoFrame from a frame, a PanoImage message or a parsed image dict (R-CLI-7)."""
    if isinstance(image, PanoFrame):
        return image
    if isinstance(image, PanoImage):
        return PanoFrame.from_message(image)
    if isinstance(image, Mapping):
        kind = image["type"]
        image_type = ImageType[kind] if isinstance(kind, str) else ImageType(int(kind))
        product = product_for(image_type, list(image["shape"]), image["bytes_per_pixel"])
        header = {
            k: v
            for k, v in dict(image.get("header") or {}).items()
            if k not in ("wr_unix_timestamp", "pandas_unix_timestamp", "wr_timestamp_valid")
        }
        return PanoFrame.create(
            product,
            header,
            image["image_array"],
            image.get("module_id", 0),
            image.get("file", ""),
            image.get("frame_number", 0),
        )
    raise TypeError(f"cannot upload a {type(image).__name__}: give PanoFrame, PanoImage or dict")


def _rpc_error(exc: BaseException, host: str) -> RpcError:
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, GRPCError):
        return RpcError(exc.status, exc.message, host)
    return RpcError(Status.UNAVAILABLE, f"{type(exc).__name__}: {exc}", host)


_CONNECTION_ERRORS = (GRPCError, StreamTerminatedError, OSError, ConnectionError)


@dataclass(eq=False)
class _StreamState:
    errors: list[RpcError] = field(default_factory=list)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    finished: bool = False


class ImageStream:
    """The frames of one stream_images call, merged from all hosts as they arrive (R-CLI-6).

    An async iterator; breaking out of `async for`, `aclose()`, or leaving `async with`
    cancels its RPCs (R-CLI-8). Raises RpcError once every host has ended if any ended in error.
    """

    def __init__(self, receive: Any, state: _StreamState, parse: bool) -> None:
        self._receive = receive
        self._state = state
        self._parse = parse

    def __aiter__(self) -> ImageStream:
        return self

    async def __anext__(self) -> Any:
        try:
            reply = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if self._state.errors:
                raise self._state.errors[-1] from None
            raise StopAsyncIteration from None
        return self._convert(reply)

    def receive_ready(self, limit: int = 256) -> list[Any]:
        """The frames already here, without waiting (for the blocking client's batches)."""
        items = []
        while len(items) < limit:
            try:
                items.append(self._convert(self._receive.receive_nowait()))
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        return items

    def _convert(self, reply: StreamReply) -> Any:
        if self._parse:
            return reply.frame.to_dict() if reply.frame is not None else {}
        return stream_response_message(reply)

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()

    def close(self) -> None:
        if not self._state.finished:
            self._state.scope.cancel()
        self._receive.close()

    async def __aenter__(self) -> ImageStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # `break` out of `async for` drops the last reference: cancel the RPCs now.
        if not self._state.finished:
            self._state.scope.cancel()


class AsyncDaqClient:
    """Async client of the DaqData service on many DAQ nodes (the seed's AioDaqDataClient)."""

    def __init__(
        self,
        daq_config: str | os.PathLike[str] | Mapping[str, Any],
        network_config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        ping_timeout_s: float = PING_TIMEOUT_S,
    ) -> None:
        self.nodes: dict[str, DaqNode] = load_daq_nodes(daq_config, network_config)
        self.ping_timeout_s = ping_timeout_s
        self.valid_hosts: set[str] = set()
        self._channels: dict[str, Channel] = {}
        self._stack: AsyncExitStack | None = None
        self._loop: GrpclibLoop | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    # -- context -----------------------------------------------------------------------------
    async def __aenter__(self) -> AsyncDaqClient:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._loop = await stack.enter_async_context(grpclib_loop())
            stack.push_async_callback(self._close_channels)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._tg.cancel_scope.cancel)
            await self.get_valid_daq_hosts()
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        return await stack.__aexit__(*exc_info)

    async def _close_channels(self) -> None:
        channels, self._channels = self._channels, {}

        async def close_all() -> None:
            for channel in channels.values():
                channel.close()

        if channels and self._loop is not None:
            with anyio.CancelScope(shield=True):
                await self._loop.run(close_all)

    def _channel(self, host: str) -> Channel:
        """The channel of a host; call only on grpclib's loop."""
        channel = self._channels.get(host)
        if channel is None:
            node = self.nodes[host]
            if node.path:
                channel = Channel(path=node.path, codec=DaqCodec())
            else:
                channel = Channel(node.host, node.port, codec=DaqCodec())
            self._channels[host] = channel
        return channel

    def _require_open(self) -> GrpclibLoop:
        if self._loop is None or self._tg is None:
            raise RuntimeError("use the client inside `async with AsyncDaqClient(...)`")
        return self._loop

    async def _call(
        self, host: str, method: str, request: Any, reply_type: Any, timeout: float | None
    ):
        """One unary RPC on grpclib's loop; RpcError on failure."""
        loop = self._require_open()

        async def call() -> Any:
            async with self._channel(host).request(
                _PATH + method, Cardinality.UNARY_UNARY, type(request), reply_type, timeout=timeout
            ) as stream:
                await stream.send_message(request, end=True)
                return await stream.recv_message()

        try:
            return await loop.run(call)
        except _CONNECTION_ERRORS as exc:
            raise _rpc_error(exc, host) from None

    # -- hosts ---------------------------------------------------------------------------------
    def _resolve(self, hosts: Hosts) -> list[str]:
        """R-CLI-3: a str, a non-empty iterable, or None/empty for every valid host."""
        if isinstance(hosts, str):
            names = [hosts] if hosts else []
        else:
            names = list(hosts or [])
        if not names:
            if not self.valid_hosts:
                raise ConnectionError("no DAQ node answered a ping")
            return sorted(self.valid_hosts)
        unknown = [h for h in names if h not in self.nodes]
        if unknown:
            raise ValueError(f"unknown host(s) {unknown}; daq_config names {sorted(self.nodes)}")
        return names

    async def ping(self, host: str) -> bool:
        """Whether the DaqData server on `host` answers within the ping timeout (R-PING-1)."""
        try:
            await self._call(host, "Ping", Empty(), Empty, self.ping_timeout_s)
        except RpcError as exc:
            log.debug("ping %s failed: %s", host, exc)
            return False
        return True

    async def get_daq_host_status(self) -> dict[str, bool]:
        """{host: answers a ping} for every node of daq_config."""
        status: dict[str, bool] = {}

        async def check(host: str) -> None:
            status[host] = await self.ping(host)

        async with anyio.create_task_group() as tg:
            for host in self.nodes:
                tg.start_soon(check, host)
        self.valid_hosts = {h for h, ok in status.items() if ok}
        return {h: status[h] for h in self.nodes}

    async def get_valid_daq_hosts(self) -> set[str]:
        """The hosts whose servers answer a ping (R-CLI-2)."""
        await self.get_daq_host_status()
        return set(self.valid_hosts)

    async def _answering(self, hosts: Hosts) -> list[str]:
        names = self._resolve(hosts)
        for host in names:
            if host not in self.valid_hosts and not await self.ping(host):
                raise ConnectionError(f"DAQ host {host} does not answer")
            self.valid_hosts.add(host)
        return names

    async def reflect_services(self, hosts: Hosts = None) -> str:
        """The services and DaqData methods each host offers, as text (R-CLI-4)."""
        from .reflection import describe_services

        loop = self._require_open()
        parts = []
        for host in await self._answering(hosts):
            try:
                text = await loop.run(describe_services, self._channel(host))
            except _CONNECTION_ERRORS as exc:
                raise _rpc_error(exc, host) from None
            parts.append(f"{host}:\n{text}")
        return "\n".join(parts)

    # -- hp_io -----------------------------------------------------------------------------------
    async def init_hp_io(self, hosts: Hosts, hp_io_cfg: Mapping[str, Any]) -> bool:
        """InitHpIo on every host; True when all succeeded (R-CLI-5)."""
        names = await self._answering(hosts)
        results: dict[str, bool] = {}

        async def init(host: str) -> None:
            data_dir = hp_io_cfg.get("data_dir") or self.nodes[host].data_dir or ""
            request = InitHpIoRequest(
                data_dir=str(data_dir),
                update_interval_seconds=float(hp_io_cfg.get("update_interval_seconds", 1.0)),
                force=bool(hp_io_cfg.get("force", False)),
                simulate_daq=bool(hp_io_cfg.get("simulate_daq", False)),
                module_ids=[int(m) for m in hp_io_cfg.get("module_ids", [])],
            )
            try:
                reply = await self._call(host, "InitHpIo", request, InitHpIoResponse, None)
            except RpcError as exc:
                log.error("InitHpIo on %s failed: %s", host, exc)
                results[host] = False
                return
            if not reply.success:
                log.error("InitHpIo on %s failed: %s", host, reply.error_message)
            results[host] = reply.success

        async with anyio.create_task_group() as tg:
            for host in names:
                tg.start_soon(init, host)
        return all(results.values())

    async def init_sim(
        self, hosts: Hosts = None, hp_io_cfg: Mapping[str, Any] | None = None
    ) -> bool:
        """Start the simulation on every host (R-CLI-5)."""
        if hp_io_cfg is None:
            path = Path(BUNDLED_CONFIG_DIR) / "hp_io_config_simulate.json"
            hp_io_cfg = json.loads(path.read_text())
        return await self.init_hp_io(hosts, {**hp_io_cfg, "simulate_daq": True})

    # -- StreamImages --------------------------------------------------------------------------
    def stream_images(
        self,
        hosts: Hosts = None,
        stream_movie_data: bool = True,
        stream_pulse_height_data: bool = True,
        update_interval_seconds: float = 1.0,
        module_ids: Iterable[int] = (),
        wait_for_ready: bool = False,
        parse_pano_images: bool = True,
    ) -> ImageStream:
        """Frames of every host, merged as they arrive (R-CLI-6)."""
        self._require_open()
        assert self._tg is not None
        if math.isnan(update_interval_seconds) or update_interval_seconds < 0:
            raise ValueError(f"update_interval_seconds must be >= 0, not {update_interval_seconds}")
        request = StreamImagesRequest(
            stream_movie_data=stream_movie_data,
            stream_pulse_height_data=stream_pulse_height_data,
            update_interval_seconds=float(update_interval_seconds),
            module_ids=[int(m) for m in module_ids],
        )
        send, receive = anyio.create_memory_object_stream[StreamReply](STREAM_BUFFER)
        state = _StreamState()
        self._tg.start_soon(self._pump, hosts, request, wait_for_ready, send, state)
        return ImageStream(receive, state, parse_pano_images)

    async def _pump(self, hosts, request, wait_for_ready, send, state: _StreamState) -> None:
        loop = self._require_open()
        try:
            with state.scope:
                await self._pump_hosts(loop, hosts, request, wait_for_ready, send, state)
        finally:
            state.finished = True

    async def _pump_hosts(self, loop, hosts, request, wait_for_ready, send, state) -> None:
        async with send:
            try:
                names = self._resolve(hosts) if wait_for_ready else await self._answering(hosts)
            except (ConnectionError, ValueError) as exc:
                state.errors.append(RpcError(Status.UNAVAILABLE, str(exc)))
                return
            async with anyio.create_task_group() as tg:
                for host in names:
                    tg.start_soon(
                        loop.run,
                        self._stream_host,
                        host,
                        request,
                        wait_for_ready,
                        send.clone(),
                        state,
                    )

    async def _stream_host(self, host, request, wait_for_ready, send, state: _StreamState) -> None:
        """One host's stream, on grpclib's loop; retried while wait_for_ready (R-CLI-6)."""
        async with send:
            while True:
                try:
                    async with self._channel(host).request(
                        _PATH + "StreamImages",
                        Cardinality.UNARY_STREAM,
                        StreamImagesRequest,
                        StreamReply,
                    ) as stream:
                        await stream.send_message(request, end=True)
                        async for reply in stream:
                            await send.send(reply)
                    return
                except _CONNECTION_ERRORS as exc:
                    error = _rpc_error(exc, host)
                    if not wait_for_ready or error.status not in (
                        Status.UNAVAILABLE,
                        Status.CANCELLED,
                        Status.DEADLINE_EXCEEDED,
                        Status.FAILED_PRECONDITION,
                    ):
                        log.warning("stream from %s ended: %s", host, error)
                        state.errors.append(error)
                        return
                    log.info("stream from %s: %s; retrying in %g s", host, error, RETRY_DELAY_S)
                    self._channels.pop(host, None)
                    await anyio.sleep(RETRY_DELAY_S)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the consumer went away

    # -- UploadImages --------------------------------------------------------------------------
    async def upload_images(
        self,
        hosts: Hosts,
        images: Iterable[Any] | AsyncIterable[Any],
    ) -> None:
        """Upload frames (PanoFrame, PanoImage or parsed dicts) to every host (R-CLI-7)."""
        loop = self._require_open()
        names = await self._answering(hosts)
        channels = []
        async with anyio.create_task_group() as tg:
            for host in names:
                send, receive = anyio.create_memory_object_stream[PanoFrame](STREAM_BUFFER)
                channels.append(send)
                tg.start_soon(loop.run, self._upload_host, host, receive)
            async with AsyncExitStack() as stack:
                for send in channels:
                    stack.enter_context(send)
                if isinstance(images, AsyncIterable):
                    async for image in images:
                        frame = as_frame(image)
                        for send in channels:
                            await send.send(frame)
                else:
                    for image in images:
                        frame = as_frame(image)
                        for send in channels:
                            await send.send(frame)

    async def _upload_host(self, host: str, receive: Any) -> None:
        try:
            async with (
                receive,
                self._channel(host).request(
                    _PATH + "UploadImages", Cardinality.STREAM_UNARY, UploadItem, Empty
                ) as stream,
            ):
                async for frame in receive:
                    await stream.send_message(UploadItem(frame))
                await stream.end()
                await stream.recv_message()
        except _CONNECTION_ERRORS as exc:
            raise _rpc_error(exc, host) from None
