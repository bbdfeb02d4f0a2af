"""What the async clients share: grpclib's event loop, a channel per node, a task group.

AsyncDaqClient and UbloxClient both run grpclib on its own asyncio loop (`bridge`), open a
channel per node on first use, and run their streams' RPCs in one task group. Entering starts
the loop and the group; leaving cancels the streams still open (R-CLI-8), waits for them, and
closes every channel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from grpclib.client import Channel
from grpclib.const import Cardinality

from .._grpclib.bridge import GrpclibLoop, grpclib_loop
from ..errors import sole_exception
from .stream import ImageStream, StreamState

__all__ = ["ClientSession"]

_Session = TypeVar("_Session", bound="ClientSession")
_Stream = TypeVar("_Stream", bound=ImageStream)


class ClientSession(ABC):
    """The open/close life of an async client; subclasses enter with `_open_session`."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}
        # The streams this client opened and nobody closed yet: closed when it closes.
        self._streams: set[ImageStream] = set()
        self._stack: AsyncExitStack | None = None
        self._loop: GrpclibLoop | None = None
        self._tg: TaskGroup | None = None

    async def _open_session(self, ready: Callable[[], Awaitable[object]] | None = None) -> None:
        """Start grpclib's loop and the streams' task group, then await `ready()` (if given);
        anything raised on the way undoes what was started."""
        if self._stack is not None:
            raise RuntimeError(f"this {type(self).__name__} is already open")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._loop = await stack.enter_async_context(grpclib_loop())
            stack.push_async_callback(self._close_channels)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._tg.cancel_scope.cancel)
            stack.callback(self._close_streams)
            if ready is not None:
                await ready()
        except BaseException:
            await stack.__aexit__(None, None, None)
            self._loop = self._tg = None
            raise
        self._stack = stack

    async def __aenter__(self: _Session) -> _Session:
        await self._open_session()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        try:
            return await stack.__aexit__(*exc_info)
        except BaseException as exc:
            # The task group wraps what the `async with` body raised in an exception group;
            # let the body's own exception through as itself (R-CLI-8), so that the caller's
            # `except ConnectionError:` and the like still match.
            if exc_info[1] is not None and sole_exception(exc) is exc_info[1]:
                return False
            raise
        finally:
            self._loop = self._tg = None

    def _open(self) -> tuple[GrpclibLoop, TaskGroup]:
        """The loop and the task group of the open client; RuntimeError outside `async with`."""
        if self._loop is None or self._tg is None:
            name = type(self).__name__
            raise RuntimeError(f"use the client inside `async with {name}(...)`")
        return self._loop, self._tg

    @abstractmethod
    def _channel(self, host: str) -> Channel:
        """The channel of a host (with the service's codec), made on first use; call only on
        grpclib's loop."""

    async def _unary_call(
        self, host: str, path: str, request: Any, reply_type: Any, timeout_s: float | None
    ) -> Any:
        """One unary RPC at `path` on grpclib's loop; grpclib's exceptions as they come."""
        loop, _ = self._open()

        async def call() -> Any:
            async with self._channel(host).request(
                path, Cardinality.UNARY_UNARY, type(request), reply_type, timeout=timeout_s
            ) as stream:
                await stream.send_message(request, end=True)
                return await stream.recv_message()

        return await loop.run(call)

    def _own(self, stream: _Stream) -> _Stream:
        """The client closes its open streams when it exits (R-CLI-8)."""
        self._streams.add(stream)
        return stream

    async def _pump(
        self,
        names: list[str],
        stream_host: Callable[..., Awaitable[None]],
        request: Any,
        wait_for_ready: bool,
        send: MemoryObjectSendStream[Any],
        state: StreamState,
        check: Callable[[list[str]], Awaitable[object]] | None = None,
    ) -> None:
        """Runs one stream: `stream_host(host, request, wait_for_ready, send, state)` on
        grpclib's loop for every host, all feeding `send`, until done or cancelled. With `check`
        and without `wait_for_ready`, `check(names)` first: a ConnectionError it raises is the
        stream's error."""
        try:
            with state.scope, send:
                loop, _ = self._open()
                if check is not None and not wait_for_ready:
                    try:
                        await check(names)
                    except ConnectionError as exc:
                        state.errors.append(exc)
                        return
                state.hosts_streaming = len(names)
                async with anyio.create_task_group() as tg:
                    for host in names:
                        tg.start_soon(
                            loop.run, stream_host, host, request, wait_for_ready, send, state
                        )
        finally:
            state.finished.set()

    def _close_streams(self) -> None:
        """R-CLI-8: cancel the RPCs of every stream still open (the task group waits for them)."""
        for stream in list(self._streams):
            stream.close()

    async def _close_channels(self) -> None:
        channels, self._channels = self._channels, {}

        async def close_all() -> None:
            for channel in channels.values():
                channel.close()

        if channels and self._loop is not None:
            with anyio.CancelScope(shield=True):
                await self._loop.run(close_all)
