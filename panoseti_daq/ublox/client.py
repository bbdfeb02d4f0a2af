"""Clients of the UbloxControl service: `UbloxClient` (async) and `BlockingUbloxClient`.

Usage, on either backend (`anyio.run(main)` or `anyio.run(main, backend="trio")`)::

    async with UbloxClient("f9t_config.json5") as client:
        results = await client.init_f9t()              # every chip of the file
        async with client.capture(patterns=["TIM-TP", "NAV-TIMEUTC"]) as stream:
            async for message in stream:
                print(message.host, message.name, message.qerr_ps, message.utc)

The f9t_config.json5 names the chips, each with the DAQ node (`host`, `port`) whose server owns
it; the request for a chip is the file's shared keys overlaid by the chip's own (R-UBX-CFG-5).
`hosts` arguments take node names ("host:port") or chip UIDs; None means every node. Nodes are
served concurrently. As in AsyncDaqClient, grpclib runs on asyncio (under trio on a trio-asyncio
loop, panoseti_daq._grpclib.bridge) and messages cross back through an anyio memory stream.

`BlockingUbloxClient` runs a UbloxClient on a portal's event loop in a background thread: the
same methods, blocking, also inside Jupyter.

Errors: a failed RPC raises (or, for InitF9t, reports) `panoseti_daq.RpcError` with the gRPC
status and the server's details; a configuration the server would refuse raises
`F9tSettingsError` (a ValueError listing every problem) before anything is sent.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from .._generated.google.protobuf import Struct
from .._generated.ubloxcontrol import (
    CaptureUbloxRequest,
    CaptureUbloxResponse,
    InitF9TRequest,
    InitF9TResponse,
    PollRequest,
    PollResponse,
)
from ..client.aio import rpc_error
from ..client.session import ClientSession
from ..client.stream import ImageStream, StreamState
from ..client.sync import BlockingImageStream, BlockingSession
from ..errors import RpcError
from .records import UbloxMessage
from .settings import F9tSettingsError, load_chip_requests, plan_init

log = logging.getLogger(__name__)

__all__ = [
    "BlockingUbloxClient",
    "BlockingUbloxStream",
    "InitResult",
    "UbloxClient",
    "UbloxNode",
    "UbloxStream",
    "load_ublox_nodes",
]

INIT_TIMEOUT_S = 60.0
POLL_TIMEOUT_S = 30.0
RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 5.0
# Messages a capture holds between its RPCs and its consumer.
STREAM_BUFFER = 256
_PATH = "/ubloxcontrol.UbloxControl/"
# Integers beyond this do not survive a google.protobuf.Struct (its numbers are doubles):
# they travel as "0x..." strings, which the server takes for every integer key type.
_EXACT_DOUBLE = 2**53
# Statuses after which a wait_for_ready capture tries again: the server is down or restarting,
# the chip was unplugged or re-initialised, or not yet initialised.
_RETRYABLE = frozenset(
    {Status.UNAVAILABLE, Status.CANCELLED, Status.DEADLINE_EXCEEDED, Status.FAILED_PRECONDITION}
)
# betterproto2 raises EOFError or ValueError for bytes that are not the reply message.
_RPC_FAILURES = (GRPCError, StreamTerminatedError, ProtocolError, OSError, EOFError, ValueError)
_TARGET = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\s/]+):(?P<port>\d{1,5})$")

Hosts = str | Iterable[str] | None
ConfigSource = str | os.PathLike[str] | Mapping[str, Any]


@dataclass(frozen=True)
class UbloxNode:
    """A DAQ node's UbloxControl server and the chip it owns: `name` is "host:port"; `request`
    the InitF9t f9t_config of its chip (empty when the node was given as a bare target)."""

    name: str
    host: str
    port: int
    uid: str = ""
    request: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InitResult:
    """The answer of one node to InitF9t: `ok`, and the server's message (model, firmware, UID,
    keys applied and verified) or, on failure, the gRPC status name and its details."""

    host: str
    uid: str
    ok: bool
    status: str
    message: str
    accepted_config: Mapping[str, Any] = field(default_factory=dict)


def parse_target(target: str) -> tuple[str, int] | None:
    """(host, port) of "host:port" or "[v6]:port"; None if `target` is not one."""
    found = _TARGET.match(target.strip())
    if found is None or not 0 < int(found["port"]) < 65536:
        return None
    return found["host"].strip("[]"), int(found["port"])


def load_ublox_nodes(config: ConfigSource | Iterable[str]) -> dict[str, UbloxNode]:
    """The nodes of an f9t_config (a .json5 path or the loaded dict, R-UBX-CFG-5), or of a list
    of "host:port" targets (enough to capture and poll, not to initialise).

    ValueError (F9tSettingsError for a file) names the problem: a file that does not parse, two
    chips on one node (a server owns at most one device, R-UBX-STATE-1), a bad target.
    """
    if isinstance(config, (str, os.PathLike, Mapping)):
        # load_chip_requests refuses two chips on one server (R-UBX-STATE-1) and no chip.
        chips = load_chip_requests(config)
        nodes = [_node(chip.host, chip.port, chip.uid, chip.request) for chip in chips]
        return {node.name: node for node in nodes}
    by_name: dict[str, UbloxNode] = {}
    for target in config:
        parsed = parse_target(target)
        if parsed is None:
            raise ValueError(f"{target!r} is not a server address: give host:port")
        node = _node(*parsed, "", {})
        by_name.setdefault(node.name, node)
    if not by_name:
        raise ValueError("no server address given: give host:port")
    return by_name


def _node(host: str, port: int, uid: str, request: Mapping[str, Any]) -> UbloxNode:
    name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return UbloxNode(name, host, int(port), uid.upper(), dict(request))


def wire_config(config: Any) -> Any:
    """`config` ready for a google.protobuf.Struct: integers beyond 2^53 as "0x..." strings
    (a double would round them); ValueError for a negative one, which no key can take so."""
    if isinstance(config, Mapping):
        return {str(key): wire_config(value) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [wire_config(value) for value in config]
    if isinstance(config, int) and not isinstance(config, bool) and abs(config) > _EXACT_DOUBLE:
        if config < 0:
            raise ValueError(f"{config} is beyond 2^53: Struct numbers cannot carry it exactly")
        return f"0x{config:x}"
    return config


class UbloxStream(ImageStream):
    """The UbloxMessages of one capture, merged from all its nodes in arrival order.

    An async iterator and async context manager: leaving `async with client.capture(...)`
    (also by `break`) or `await stream.aclose()` cancels its RPCs and waits for them; a stream
    left open runs until its client closes. A node that fails while others go on is logged and
    announced by a message of kind "status"; when the last one fails, the iteration raises its
    RpcError. With `wait_for_ready`, a node that is down, not initialised, unplugged or
    re-initialised is retried (a "status" message says so) until the stream is closed.
    """


class UbloxClient(ClientSession):
    """Async client of UbloxControl servers on many DAQ nodes (asyncio and trio).

    `config` is an f9t_config (.json5 path or dict) or a list of "host:port" targets.
    """

    def __init__(
        self,
        config: ConfigSource | Iterable[str],
        *,
        retry_delay_s: float = RETRY_DELAY_S,
    ) -> None:
        super().__init__()
        self.nodes: dict[str, UbloxNode] = load_ublox_nodes(config)
        self.retry_delay_s = retry_delay_s

    # -- context -----------------------------------------------------------------------------
    def _channel(self, host: str) -> Channel:
        """The channel of a node, made on first use; call only on grpclib's loop."""
        channel = self._channels.get(host)
        if channel is None:
            node = self.nodes[host]
            channel = self._channels[host] = Channel(node.host, node.port)
        return channel

    def resolve(self, hosts: Hosts) -> list[str]:
        """Node names for `hosts`: names ("host:port") or chip UIDs (any case); None or empty:
        every node. ValueError names what matches nothing and what would."""
        names = ([hosts] if hosts else []) if isinstance(hosts, str) else list(hosts or [])
        if not names:
            return list(self.nodes)
        by_uid = {node.uid: name for name, node in self.nodes.items() if node.uid}
        resolved = []
        for given in names:
            name = given if given in self.nodes else by_uid.get(given.strip().upper())
            if name is None:
                known = [*self.nodes, *by_uid]
                raise ValueError(f"no chip or node {given!r}; known: {', '.join(known)}")
            if name not in resolved:
                resolved.append(name)
        return resolved

    async def _unary(
        self, host: str, method: str, request: Any, reply_type: Any, timeout_s: float | None
    ) -> Any:
        try:
            return await self._unary_call(host, _PATH + method, request, reply_type, timeout_s)
        except _RPC_FAILURES as exc:
            raise _failure(exc, host) from None

    # -- InitF9t -------------------------------------------------------------------------------
    async def init_f9t(
        self, hosts: Hosts = None, *, force: bool = False, timeout_s: float = INIT_TIMEOUT_S
    ) -> dict[str, InitResult]:
        """InitF9t on every node named (all by default), concurrently: {node: InitResult}.

        Each chip's request is checked here first, as its server would (R-UBX-INIT-1): any
        problem raises F9tSettingsError naming the chip and every problem, and nothing is sent.
        `force` ends the streams of a node that has clients (R-UBX-INIT-2).
        """
        names = self.resolve(hosts)
        problems = []
        for name in names:
            node = self.nodes[name]
            if not node.request:
                raise ValueError(f"{name} was given as a bare address: init needs an f9t_config")
            try:
                plan_init(node.request)
            except F9tSettingsError as exc:
                problems += [f"chip {node.uid or '?'} ({name}): {p}" for p in exc.problems]
        if problems:
            raise F9tSettingsError(problems)
        results: dict[str, InitResult] = {}

        async def init(name: str) -> None:
            node = self.nodes[name]
            request = InitF9TRequest(
                f9t_config=Struct.from_dict(wire_config(node.request)), force_init=force
            )
            try:
                reply = await self._unary(name, "InitF9t", request, InitF9TResponse, timeout_s)
            except RpcError as exc:
                status = getattr(exc.status, "name", str(exc.status))
                results[name] = InitResult(name, node.uid, False, status, exc.details)
                log.info("InitF9t of chip %s on %s failed: %s", node.uid or "?", name, exc)
                return
            accepted = reply.f9t_config.to_dict() if reply.f9t_config is not None else {}
            results[name] = InitResult(name, node.uid, True, "OK", reply.message, accepted)

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(init, name)
        return {name: results[name] for name in names}

    # -- PollMessage ---------------------------------------------------------------------------
    async def poll(
        self, patterns: Iterable[str], host: str | None = None, *, timeout_s: float = POLL_TIMEOUT_S
    ) -> list[UbloxMessage]:
        """PollMessage on one node (the only one when `host` is None): one message per
        pollable name matching `patterns`, in name order; those the chip did not answer have
        kind "notice" and say why. RpcError when the server refuses."""
        if host is None:
            if len(self.nodes) != 1:
                raise ValueError(f"several nodes: name one of {', '.join(self.nodes)}")
            host = next(iter(self.nodes))
        (name,) = self.resolve(host)
        request = PollRequest(patterns=[str(p) for p in patterns])
        reply = await self._unary(name, "PollMessage", request, PollResponse, timeout_s)
        return [UbloxMessage.from_response(packet, name) for packet in reply.gnss_packet]

    # -- CaptureUblox --------------------------------------------------------------------------
    def capture(
        self, hosts: Hosts = None, patterns: Iterable[str] = (), *, wait_for_ready: bool = False
    ) -> UbloxStream:
        """The messages of every node named (all by default) whose names match `patterns`
        (regular expressions matched at the start of the name; none: every message): first the
        newest cached one of each name, then live ones (R-UBX-CAP-3)."""
        _, tg = self._open()
        names = self.resolve(hosts)
        request = CaptureUbloxRequest(patterns=[str(p) for p in patterns])
        send, receive = anyio.create_memory_object_stream[UbloxMessage](STREAM_BUFFER)
        state = StreamState()
        tg.start_soon(self._pump, names, self._capture_host, request, wait_for_ready, send, state)
        return self._own(UbloxStream(receive, state, "reply", self._streams.discard))  # type: ignore[arg-type]

    async def _capture_host(
        self,
        host: str,
        request: CaptureUbloxRequest,
        wait_for_ready: bool,
        send: MemoryObjectSendStream[UbloxMessage],
        state: StreamState,
    ) -> None:
        """One node's CaptureUblox, on grpclib's loop; retried while wait_for_ready."""
        delay_s = self.retry_delay_s
        try:
            with send.clone() as out:
                while True:
                    try:
                        async with self._channel(host).request(
                            _PATH + "CaptureUblox",
                            Cardinality.UNARY_STREAM,
                            CaptureUbloxRequest,
                            CaptureUbloxResponse,
                        ) as stream:
                            await stream.send_message(request, end=True)
                            async for response in stream:
                                await out.send(UbloxMessage.from_response(response, host))
                                delay_s = self.retry_delay_s
                        # R-UBX-CAP-8: servers end streams with an error, never OK.
                        raise GRPCError(Status.UNKNOWN, "the server ended the stream")
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return  # the consumer went away
                    except _RPC_FAILURES as exc:
                        error = _failure(exc, host)
                        if not (wait_for_ready and error.status in _RETRYABLE):
                            if state.hosts_streaming > 1:
                                log.warning(
                                    "capture from %s failed (others go on): %s", host, error
                                )
                                await out.send(_status(host, f"stream ended: {error}"))
                            else:
                                state.errors.append(error)
                            return
                        log.info("capture from %s: %s; retrying in %g s", host, error, delay_s)
                        await out.send(_status(host, f"{_short(error).rstrip('.')}; retrying"))
                        await anyio.sleep(delay_s)
                        delay_s = min(delay_s * 2, MAX_RETRY_DELAY_S)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        finally:
            state.hosts_streaming -= 1


def _failure(exc: BaseException, host: str) -> RpcError:
    """The RpcError of a failed call; a reply that is not the message expected is INTERNAL."""
    if isinstance(exc, (EOFError, ValueError)):
        return RpcError(Status.INTERNAL, f"invalid reply: {exc}", host)
    return rpc_error(exc, host)


def _status(host: str, text: str) -> UbloxMessage:
    return UbloxMessage(host, "", notice=text, kind="status")


def _short(error: RpcError) -> str:
    status = getattr(error.status, "name", str(error.status))
    return f"{status}: {error.details}" if error.details else status


class BlockingUbloxStream(BlockingImageStream):
    """A blocking iterator of a capture's UbloxMessages (a UbloxStream on the client's portal).

    `close()` (from any thread), leaving `with`, or leaving a `for` loop over it cancels the
    RPCs; the client closes the streams still open when it closes.
    """


class BlockingUbloxClient(BlockingSession[UbloxClient]):
    """UbloxClient's API, blocking: `with BlockingUbloxClient("f9t_config.json5") as client:`.

    It runs a UbloxClient on an event loop in a background thread, so it works the same
    whether or not the caller's thread runs an event loop (a Jupyter cell does). `backend`
    chooses that loop ("asyncio" or "trio").
    """

    def __init__(
        self,
        config: ConfigSource | Iterable[str],
        *,
        backend: str = "asyncio",
        **options: Any,
    ) -> None:
        super().__init__(UbloxClient(config, **options), backend)

    @property
    def nodes(self) -> dict[str, UbloxNode]:
        """name -> UbloxNode of every node of the config."""
        return self._client.nodes

    def resolve(self, hosts: Hosts) -> list[str]:
        """Node names for node names or chip UIDs (UbloxClient.resolve)."""
        return self._client.resolve(hosts)

    def __enter__(self) -> BlockingUbloxClient:
        self._enter_session()
        return self

    def init_f9t(
        self, hosts: Hosts = None, *, force: bool = False, timeout_s: float = INIT_TIMEOUT_S
    ) -> dict[str, InitResult]:
        """InitF9t on every node named (UbloxClient.init_f9t)."""
        return self._call(self._client.init_f9t, hosts, force=force, timeout_s=timeout_s)

    def poll(
        self, patterns: Iterable[str], host: str | None = None, *, timeout_s: float = POLL_TIMEOUT_S
    ) -> list[UbloxMessage]:
        """PollMessage on one node (UbloxClient.poll)."""
        return self._call(self._client.poll, list(patterns), host, timeout_s=timeout_s)

    def capture(
        self, hosts: Hosts = None, patterns: Iterable[str] = (), *, wait_for_ready: bool = False
    ) -> BlockingUbloxStream:
        """A blocking iterator of the messages of every node named (UbloxClient.capture)."""
        return self._open_stream(
            BlockingUbloxStream,
            self._client.capture,
            hosts,
            list(patterns),
            wait_for_ready=wait_for_ready,
        )
