"""AsyncDaqClient: the async client of many DAQ nodes, for asyncio and trio (spec section 13).

Usage, on either backend (`anyio.run(main)` or `anyio.run(main, backend="trio")`)::

    async with AsyncDaqClient("daq_config.json", "network_config.json") as client:
        hosts = await client.get_valid_daq_hosts()
        await client.init_sim(hosts)
        async with client.stream_images(hosts, True, True, 1.0) as stream:
            async for image in stream:
                print(image["module_id"], image["header"]["pandas_unix_timestamp"])

grpclib runs on asyncio: under trio the client opens a trio-asyncio loop (or reuses the one the
caller runs) and every RPC runs there (panoseti_daq._grpclib.bridge). Frames cross back to
the caller through anyio memory streams, with no per-frame bridge call.

Errors: an RPC that fails raises `panoseti_daq.RpcError` (`.status` a grpclib.const.Status,
`.details`, `.host`); a host that is unknown raises ValueError, one that does not answer a ping
raises ConnectionError (R-CLI-3). `init_hp_io` returns False (and logs why) when a server
refuses (R-CLI-5).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Mapping
from contextlib import ExitStack, aclosing
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from .._bundled import BUNDLED_CONFIG_DIR
from .._grpclib.bridge import GrpclibLoop
from .._grpclib.codec import DaqCodec
from .._grpclib.upload import upload_frames
from ..config import (
    HTTP2_WINDOW_DEFAULT,
    HTTP2_WINDOW_MAX,
    HTTP2_WINDOW_MIN,
    client_hp_io_config,
    read_json,
)
from ..errors import CodecError, ConfigError, ImageError, RpcError
from ..frames import PanoFrame, as_frame
from ..messages import Empty, InitHpIoRequest, InitHpIoResponse, StreamImagesRequest
from ..wire.codec import StreamReply
from .session import ClientSession
from .stream import ImageStream, StreamForm, StreamState
from .targets import DaqNode, load_daq_nodes

log = logging.getLogger(__name__)

__all__ = ["AsyncDaqClient", "Hosts"]

PING_TIMEOUT_S = 2.0
RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 5.0
# Replies a stream holds between its RPCs and its consumer: few, so that a slow consumer sees
# fresh frames (the server drops what it cannot send, R-STREAM-11), enough to cover a hiccup.
STREAM_BUFFER = 32
# Frames an upload holds per host before it waits for that host.
UPLOAD_BUFFER = 256
_PATH = "/daqdata.DaqData/"
_DEFAULT_SIM_CFG = {  # used when the bundled hp_io_config_simulate.json is missing
    "data_dir": "",
    "update_interval_seconds": 0.1,
    "force": True,
    "module_ids": [],
}
# Statuses after which a wait_for_ready stream tries again: the server is down, restarting,
# reconfigured (R-STREAM-13), idle (R-STREAM-12) or not yet initialised (R-STREAM-2).
_RETRYABLE = frozenset(
    {Status.UNAVAILABLE, Status.CANCELLED, Status.DEADLINE_EXCEEDED, Status.FAILED_PRECONDITION}
)
_RPC_FAILURES = (
    GRPCError,
    StreamTerminatedError,
    ProtocolError,
    OSError,
    CodecError,
    ImageError,
)

Hosts = str | Iterable[str] | None
Images = Iterable[Any] | AsyncIterable[Any]


def rpc_error(exc: BaseException, host: str) -> RpcError:
    """The RpcError for a failed call to `host`."""
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, GRPCError):
        return RpcError(exc.status, exc.message, host)
    if isinstance(exc, TimeoutError):
        return RpcError(Status.DEADLINE_EXCEEDED, "deadline exceeded", host)
    if isinstance(exc, (CodecError, ImageError)):
        return RpcError(Status.INTERNAL, f"invalid reply: {exc}", host)
    return RpcError(Status.UNAVAILABLE, _unreachable(exc), host)


def _unreachable(exc: BaseException) -> str:
    """Why a host cannot be reached, in words: name, refusal, or the error itself."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (no server listening there)"
    if isinstance(exc, FileNotFoundError):
        return f"no Unix socket at {exc.filename}" if exc.filename else "no such Unix socket"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _iterate(images: Images) -> AsyncGenerator[Any, None]:
    if isinstance(images, AsyncIterable):
        async for image in images:
            yield image
    else:
        for image in images:
            yield image


def _load_hp_io_cfg(hp_io_cfg: Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any]:
    """The JSON object of an hp_io config (a dict or a file); not yet validated."""
    if isinstance(hp_io_cfg, Mapping):
        return hp_io_cfg
    data, _ = read_json(hp_io_cfg)
    if not isinstance(data, Mapping):
        raise ConfigError("<top level>", "must be a JSON object", hp_io_cfg)
    return data


class AsyncDaqClient(ClientSession):
    """Async client of the DaqData service on many DAQ nodes (panoseti_grpc's AioDaqDataClient).

    `daq_config` and `network_config` are paths or dicts (R-CLI-1, R-CFG-3). Use it as an async
    context manager: entering pings every node (R-CLI-2), leaving closes every connection and
    cancels the streams still open (R-CLI-8).

    `http2_window_bytes` is the HTTP/2 flow-control window of each connection and stream for
    what the servers send (default 256 KiB, ~110 img16 images): how much a server may send
    ahead of this client's reading. A viewer that reads slower than frames come falls behind
    by at most that much, plus the stream's buffer (STREAM_BUFFER frames) and the server's
    queue; the server drops what it cannot send and says so ("dropped N frames"), so the
    frames seen stay fresh. With grpclib's default, 4 MiB, such a viewer fell seconds behind.
    Raise it for fast readers over long links (one stream cannot receive faster than
    window / round-trip time).
    """

    def __init__(
        self,
        daq_config: str | os.PathLike[str] | Mapping[str, Any],
        network_config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        ping_timeout_s: float = PING_TIMEOUT_S,
        retry_delay_s: float = RETRY_DELAY_S,
        http2_window_bytes: int = HTTP2_WINDOW_DEFAULT,
    ) -> None:
        if not HTTP2_WINDOW_MIN <= http2_window_bytes <= HTTP2_WINDOW_MAX:
            raise ValueError(
                f"http2_window_bytes must be between {HTTP2_WINDOW_MIN} and {HTTP2_WINDOW_MAX}, "
                f"not {http2_window_bytes}"
            )
        super().__init__()
        self.nodes: dict[str, DaqNode] = load_daq_nodes(daq_config, network_config)
        self._grpclib_config = Configuration(
            http2_connection_window_size=http2_window_bytes,
            http2_stream_window_size=http2_window_bytes,
        )
        self.ping_timeout_s = ping_timeout_s
        self.retry_delay_s = retry_delay_s
        self.valid_hosts: set[str] = set()
        self._reported_down: set[str] = set()

    # -- context -----------------------------------------------------------------------------
    async def __aenter__(self) -> AsyncDaqClient:
        await self._open_session(self.get_daq_host_status)
        return self

    def _channel(self, host: str) -> Channel:
        """The channel of a host, made on first use; call only on grpclib's loop."""
        channel = self._channels.get(host)
        if channel is None:
            node = self.nodes[host]
            if node.path:
                channel = Channel(path=node.path, codec=DaqCodec(), config=self._grpclib_config)
            else:
                channel = Channel(
                    node.host, node.port, codec=DaqCodec(), config=self._grpclib_config
                )
            self._channels[host] = channel
        return channel

    async def _call(
        self, host: str, method: str, request: Any, reply_type: Any, timeout_s: float | None
    ) -> Any:
        """One unary RPC on grpclib's loop; RpcError on failure."""
        try:
            return await self._unary_call(host, _PATH + method, request, reply_type, timeout_s)
        except _RPC_FAILURES as exc:
            raise rpc_error(exc, host) from None

    # -- hosts ---------------------------------------------------------------------------------
    def _resolve(self, hosts: Hosts, *, all_if_none_valid: bool = False) -> list[str]:
        """R-CLI-3: a str, a non-empty iterable, or None/empty for every valid host."""
        names = ([hosts] if hosts else []) if isinstance(hosts, str) else list(hosts or [])
        if not names:
            if self.valid_hosts:
                return sorted(self.valid_hosts)
            if all_if_none_valid:
                return list(self.nodes)
            raise ConnectionError("no DAQ node answered a ping")
        unknown = [h for h in names if h not in self.nodes]
        if unknown:
            raise ValueError(f"unknown host(s) {unknown}; daq_config names {sorted(self.nodes)}")
        return names

    async def ping(self, host: str) -> bool:
        """Whether the DaqData server on `host` answers within the ping timeout (R-CLI-4)."""
        if host not in self.nodes:
            raise ValueError(f"unknown host {host!r}; daq_config names {sorted(self.nodes)}")
        try:
            await self._call(host, "Ping", Empty(), Empty, self.ping_timeout_s)
        except RpcError as exc:
            # Why a host is down, at the default level: one line per failed ping.
            if exc.status is Status.DEADLINE_EXCEEDED:
                why = f"no answer within {self.ping_timeout_s:g} s"
            else:
                why = exc.details or getattr(exc.status, "name", str(exc.status))
            # Once per host going down, not at every ping that finds it still down.
            if host not in self._reported_down:
                log.warning("DAQ host %s is down: %s", host, why)
                self._reported_down.add(host)
            self.valid_hosts.discard(host)
            return False
        self.valid_hosts.add(host)
        self._reported_down.discard(host)
        return True

    async def get_daq_host_status(self) -> dict[str, bool]:
        """{host: answers a ping} for every node of daq_config, pinged concurrently."""
        self._open()  # outside `async with`: the clear error, not one inside a task group
        status: dict[str, bool] = {}

        async def check(host: str) -> None:
            status[host] = await self.ping(host)

        async with anyio.create_task_group() as tg:
            for host in self.nodes:
                tg.start_soon(check, host)
        return {h: status[h] for h in self.nodes}

    async def get_valid_daq_hosts(self) -> set[str]:
        """The hosts whose servers answer a ping now (R-CLI-2)."""
        await self.get_daq_host_status()
        return set(self.valid_hosts)

    async def _answering(self, hosts: Hosts) -> list[str]:
        """The hosts named (or all valid ones); ConnectionError if one does not answer."""
        names = self._resolve(hosts)
        for host in names:
            if host not in self.valid_hosts and not await self.ping(host):
                raise ConnectionError(f"DAQ host {host} does not answer")
        return names

    async def reflect_services(self, hosts: Hosts = None) -> str:
        """The services and DaqData methods (with streaming kinds) of each host (R-CLI-4)."""
        from .reflection import describe_services

        loop, _ = self._open()
        parts = []
        for host in await self._answering(hosts):
            try:
                text = await loop.run(describe_services, self._channel(host))
            except _RPC_FAILURES as exc:
                raise rpc_error(exc, host) from None
            parts.append(f"{host}:\n{text}")
        return "\n".join(parts)

    # -- hp_io ---------------------------------------------------------------------------------
    async def init_hp_io(
        self, hosts: Hosts, hp_io_cfg: Mapping[str, Any] | str | os.PathLike[str]
    ) -> bool:
        """InitHpIo on every host; True when all succeeded (R-CLI-5).

        `hp_io_cfg` is a dict or a path of an hp_io_config.json, validated before anything is
        sent (R-CFG-2: ConfigError naming the key and the file for an unknown key, a wrong type
        or a missing `update_interval_seconds`). `data_dir` comes from it when present, else
        from the node's `data_dir` in daq_config. A refusal is logged.
        """
        self._open()
        cfg = client_hp_io_config(hp_io_cfg)
        names = await self._answering(hosts)
        results: dict[str, bool] = {}

        async def init(host: str) -> None:
            data_dir = cfg.data_dir or self.nodes[host].data_dir or ""
            request = InitHpIoRequest(
                data_dir=str(data_dir),
                update_interval_seconds=cfg.update_interval_seconds,
                force=cfg.force,
                simulate_daq=cfg.simulate_daq,
                module_ids=list(cfg.module_ids),
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
        self, hosts: Hosts = None, hp_io_cfg: Mapping[str, Any] | str | None = None
    ) -> bool:
        """Start the simulation on every host with the bundled config (R-CLI-5, R-INIT-8)."""
        path = BUNDLED_CONFIG_DIR / "hp_io_config_simulate.json"
        bundled = json.loads(path.read_text()) if path.is_file() else _DEFAULT_SIM_CFG
        # The bundled settings, with what the caller gives over them.
        given = {} if hp_io_cfg is None else _load_hp_io_cfg(hp_io_cfg)
        return await self.init_hp_io(hosts, {**bundled, **given, "simulate_daq": True})

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
        *,
        replies: bool = False,
        name_by_host: bool = False,
    ) -> ImageStream:
        """Frames of every host, merged as they arrive (R-CLI-6).

        Parsed dicts (R-PARSE-1) when `parse_pano_images`, else StreamImagesResponse messages.
        With `replies`, the decoder's own `StreamReply` objects instead (`frame` a PanoFrame,
        `name`, `timestamp_ns`, `message`, `dropped_before`): the fastest form, with no message
        or dict made per frame. With `name_by_host`, each reply's name is the daq_config host it
        came from rather than the server's own name (two servers on one machine share that).
        A host that fails is logged and the others go on; with `wait_for_ready` a host that is
        down, restarting or not yet initialised is retried until it streams. Hosts None or empty:
        every valid host (with `wait_for_ready` and none valid yet: every configured node).
        """
        receive, state = self._start_stream(
            hosts,
            stream_movie_data,
            stream_pulse_height_data,
            update_interval_seconds,
            module_ids,
            wait_for_ready,
        )
        state.name_by_host = name_by_host
        form: StreamForm = "reply" if replies else "dict" if parse_pano_images else "message"
        return self._own(ImageStream(receive, state, form, self._streams.discard))

    def _start_stream(
        self,
        hosts: Hosts,
        stream_movie_data: bool,
        stream_pulse_height_data: bool,
        update_interval_seconds: float,
        module_ids: Iterable[int],
        wait_for_ready: bool,
    ) -> tuple[MemoryObjectReceiveStream[StreamReply], StreamState]:
        _, tg = self._open()
        interval = float(update_interval_seconds)
        if math.isnan(interval) or interval < 0:
            raise ValueError(f"update_interval_seconds must be >= 0, not {interval}")
        names = self._resolve(hosts, all_if_none_valid=wait_for_ready)
        request = StreamImagesRequest(
            stream_movie_data=bool(stream_movie_data),
            stream_pulse_height_data=bool(stream_pulse_height_data),
            update_interval_seconds=interval,
            module_ids=[int(m) for m in module_ids],
        )
        send, receive = anyio.create_memory_object_stream[StreamReply](STREAM_BUFFER)
        state = StreamState()
        tg.start_soon(
            self._pump,
            names,
            self._stream_host,
            request,
            wait_for_ready,
            send,
            state,
            self._answering,
        )
        return receive, state

    async def _stream_host(
        self,
        host: str,
        request: StreamImagesRequest,
        wait_for_ready: bool,
        send: MemoryObjectSendStream[StreamReply],
        state: StreamState,
    ) -> None:
        """One host's StreamImages, on grpclib's loop; retried while wait_for_ready.

        A failure while other hosts still stream is logged (the stream goes on); the failure of
        the last host is kept in `state.errors`, which the stream raises.
        """
        try:
            await self._stream_one(host, request, wait_for_ready, send, state)
        finally:
            state.hosts_streaming -= 1

    async def _stream_one(
        self,
        host: str,
        request: StreamImagesRequest,
        wait_for_ready: bool,
        send: MemoryObjectSendStream[StreamReply],
        state: StreamState,
    ) -> None:
        delay_s = self.retry_delay_s
        with send.clone() as out:
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
                            if state.name_by_host:
                                reply = dataclasses.replace(reply, name=host)
                            await out.send(reply)
                            delay_s = self.retry_delay_s
                    log.info("stream from %s ended by the server", host)
                    return
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the consumer went away
                except _RPC_FAILURES as exc:
                    error = rpc_error(exc, host)
                    if not (wait_for_ready and error.status in _RETRYABLE):
                        if state.hosts_streaming > 1:
                            log.warning("stream from %s failed (the others go on): %s", host, error)
                        else:
                            state.errors.append(error)
                        return
                    log.info("stream from %s: %s; retrying in %g s", host, error, delay_s)
                    await anyio.sleep(delay_s)
                    delay_s = min(delay_s * 2, MAX_RETRY_DELAY_S)

    # -- UploadImages --------------------------------------------------------------------------
    async def upload_images(self, hosts: Hosts, images: Images) -> None:
        """Upload frames (PanoFrame, PanoImage or parsed dicts) to every host (R-CLI-7).

        `images` is an iterable or an async iterable. Returns once every host has accepted the
        whole upload. A host that fails raises RpcError and ends the upload on all hosts. An
        image that is not one (ImageError, TypeError), or an iterable that raises, ends the
        upload normally after the images before it, which every host has then accepted, and
        raises that error.
        """
        loop, _ = self._open()
        names = await self._answering(hosts)
        errors: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            sends: list[MemoryObjectSendStream[PanoFrame]] = []
            for host in names:
                send, receive = anyio.create_memory_object_stream[PanoFrame](UPLOAD_BUFFER)
                sends.append(send)
                tg.start_soon(self._upload_task, loop, host, receive, errors, tg)
            with ExitStack() as stack:
                for send in sends:
                    stack.enter_context(send)
                try:
                    async with aclosing(_iterate(images)) as iterator:
                        async for image in iterator:
                            frame = as_frame(image)
                            for send in sends:
                                await send.send(frame)
                except anyio.BrokenResourceError:
                    pass  # that host's task failed: its error is in `errors`
                except Exception as exc:
                    # A bad image or a failing iterable: the sends close as after the last
                    # image, the hosts accept the images before it, then this error is raised.
                    errors.insert(0, exc)
        if errors:
            raise errors[0]

    async def _upload_task(
        self,
        loop: GrpclibLoop,
        host: str,
        receive: MemoryObjectReceiveStream[PanoFrame],
        errors: list[BaseException],
        tg: TaskGroup,
    ) -> None:
        try:
            with receive:
                await loop.run(self._upload_host, host, receive)
        except RpcError as exc:
            # The first error is raised by upload_images; later ones are only logged.
            if errors:
                log.warning("upload to %s failed: %s", host, exc)
            errors.append(exc)
            tg.cancel_scope.cancel()

    async def _upload_host(self, host: str, receive: MemoryObjectReceiveStream[PanoFrame]) -> None:
        """One host's UploadImages, on grpclib's loop."""
        with receive:
            try:
                await upload_frames(self._channel(host), receive)
            except _RPC_FAILURES as exc:
                raise rpc_error(exc, host) from None
