"""DaqClient: the blocking client (panoseti_grpc's DaqDataClient), also usable inside Jupyter.

It runs an AsyncDaqClient on an event loop in a background thread (an anyio blocking portal),
so it works the same whether or not the caller's thread already runs an event loop (a Jupyter
cell does). Every method blocks until the async client's coroutine has finished there.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from typing import Any, Generic, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .aio import AsyncDaqClient, Hosts
from .session import ClientSession
from .stream import ImageStream

__all__ = ["BlockingImageStream", "BlockingSession", "DaqClient"]

ClientT = TypeVar("ClientT", bound=ClientSession)
BlockingT = TypeVar("BlockingT", bound="BlockingImageStream")

UPLOAD_BATCH = 64


class BlockingImageStream(Iterator[Any]):
    """A blocking iterator over an ImageStream running on the portal's loop (R-CLI-6, R-CLI-8).

    Frames cross the thread boundary in batches (whatever has arrived), not one by one.
    `close()` (from any thread), leaving `with`, leaving a `for` loop over it (also by `break`),
    or leaving its client cancels the RPCs.
    """

    def __init__(
        self,
        portal: BlockingPortal,
        stream: ImageStream,
        on_close: Callable[[BlockingImageStream], None] | None = None,
    ) -> None:
        self._portal = portal
        self._stream = stream
        self._on_close = on_close
        self._ready: collections.deque[Any] = collections.deque()
        self._lock = threading.RLock()  # a collected iterator may close it while it closes
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        return self._frames()

    def _frames(self) -> Iterator[Any]:
        # A generator, so that a `for` loop left early closes the stream: the loop drops the
        # generator, which runs this `finally` when closed or collected.
        try:
            while True:
                try:
                    frame = next(self)
                except StopIteration:
                    return
                yield frame
        finally:
            self.close()

    def __next__(self) -> Any:
        if not self._ready:
            if self._closed:
                raise StopIteration
            try:
                self._ready.extend(self._portal.call(self._next_batch))
            except BaseException:
                self.close()
                raise
            if not self._ready:
                self.close()
                raise StopIteration
        return self._ready.popleft()

    async def _next_batch(self) -> list[Any]:
        try:
            first = await self._stream.__anext__()
        except StopAsyncIteration:
            return []
        return [first, *self._stream.receive_ready()]

    @property
    def closed(self) -> bool:
        """Whether the stream was closed (its RPCs cancelled)."""
        return self._closed

    def close(self) -> None:
        """Cancel the RPCs and wait until they have ended."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._portal.call(self._stream.aclose)
            finally:
                on_close, self._on_close = self._on_close, None
                if on_close is not None:
                    on_close(self)

    def __enter__(self) -> BlockingImageStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _take(iterator: Iterator[Any], count: int) -> list[Any]:
    return list(itertools.islice(iterator, count))


class BlockingSession(Generic[ClientT]):
    """What the blocking clients share: an async client run by a portal on a background
    thread, so that it works whether or not the caller's thread runs an event loop (a Jupyter
    cell does); leaving closes the streams still open, then the async client."""

    def __init__(self, client: ClientT, backend: str) -> None:
        self._client = client
        self._backend = backend
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None
        # The streams this client opened and nobody closed yet: closed when it closes.
        self._streams: set[BlockingImageStream] = set()

    def _enter_session(self) -> None:
        stack = ExitStack()
        try:
            self._portal = stack.enter_context(start_blocking_portal(backend=self._backend))
            stack.enter_context(self._portal.wrap_async_context_manager(self._client))
        except BaseException:
            self._portal = None
            stack.close()
            raise
        self._stack = stack

    def __exit__(self, *exc_info: Any) -> None:
        stack, self._stack = self._stack, None
        try:
            # R-CLI-8: cancel the open streams' RPCs while the portal still runs.
            for stream in list(self._streams):
                stream.close()
        finally:
            try:
                if stack is not None:
                    stack.__exit__(*exc_info)
            finally:
                self._portal = None

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` on the portal's loop; RuntimeError outside `with`."""
        if self._portal is None:
            raise RuntimeError(f"use the client inside `with {type(self).__name__}(...)`")
        if kwargs:
            return self._portal.call(lambda: fn(*args, **kwargs))
        return self._portal.call(fn, *args)

    def _open_stream(
        self,
        wrap: Callable[[BlockingPortal, Any, Callable[[Any], None]], BlockingT],
        open_stream: Callable[..., ImageStream],
        *args: Any,
        **kwargs: Any,
    ) -> BlockingT:
        """`open_stream(*args, **kwargs)`, an async client's stream, opened on the portal's
        loop; a blocking `wrap` of it, closed with the client if still open (R-CLI-8)."""

        async def opened() -> ImageStream:
            return open_stream(*args, **kwargs)

        stream = self._call(opened)
        assert self._portal is not None
        blocking = wrap(self._portal, stream, self._streams.discard)
        self._streams.add(blocking)
        return blocking


class DaqClient(BlockingSession[AsyncDaqClient]):
    """Blocking client of the DaqData service on many DAQ nodes: AsyncDaqClient's API, blocking.

    `with DaqClient("daq_config.json", "network_config.json") as client: ...`; the options are
    those of AsyncDaqClient, plus `backend` ("asyncio" or "trio") for the portal's loop.
    """

    def __init__(
        self,
        daq_config: str | os.PathLike[str] | Mapping[str, Any],
        network_config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        backend: str = "asyncio",
        **options: Any,
    ) -> None:
        super().__init__(AsyncDaqClient(daq_config, network_config, **options), backend)

    @property
    def nodes(self) -> dict[str, Any]:
        """name -> DaqNode of every node in daq_config."""
        return self._client.nodes

    @property
    def valid_hosts(self) -> set[str]:
        """The hosts that answered the latest ping."""
        return set(self._client.valid_hosts)

    def __enter__(self) -> DaqClient:
        self._enter_session()
        return self

    def ping(self, host: str) -> bool:
        """Whether `host` answers a ping (R-CLI-4)."""
        return self._call(self._client.ping, host)

    def get_valid_daq_hosts(self) -> set[str]:
        """The hosts whose servers answer a ping now (R-CLI-2)."""
        return self._call(self._client.get_valid_daq_hosts)

    def get_daq_host_status(self) -> dict[str, bool]:
        """{host: answers a ping} for every node of daq_config."""
        return self._call(self._client.get_daq_host_status)

    def reflect_services(self, hosts: Hosts = None) -> str:
        """The services and DaqData methods of each host, as text (R-CLI-4)."""
        return self._call(self._client.reflect_services, hosts)

    def init_hp_io(self, hosts: Hosts, hp_io_cfg: Mapping[str, Any] | str) -> bool:
        """InitHpIo on every host; True when all succeeded (R-CLI-5)."""
        return self._call(self._client.init_hp_io, hosts, hp_io_cfg)

    def init_sim(self, hosts: Hosts = None, hp_io_cfg: Mapping[str, Any] | None = None) -> bool:
        """Start the simulation on every host (R-CLI-5)."""
        return self._call(self._client.init_sim, hosts, hp_io_cfg)

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
    ) -> BlockingImageStream:
        """A blocking iterator of frames of every host (R-CLI-6); close it to cancel the RPCs.

        The arguments are AsyncDaqClient.stream_images's."""
        return self._open_stream(
            BlockingImageStream,
            self._client.stream_images,
            hosts,
            stream_movie_data,
            stream_pulse_height_data,
            update_interval_seconds,
            module_ids,
            wait_for_ready,
            parse_pano_images,
            replies=replies,
            name_by_host=name_by_host,
        )

    def upload_images(self, hosts: Hosts, images: Iterable[Any]) -> None:
        """Upload frames, PanoImages or parsed dicts to every host (R-CLI-7).

        A lazy iterable (a generator reading files) is consumed in a worker thread, in batches,
        so that it never blocks the client's event loop.
        """
        if isinstance(images, AsyncIterable):
            raise TypeError(
                "DaqClient.upload_images takes an iterable; async ones need AsyncDaqClient"
            )
        if isinstance(images, (list, tuple)):
            return self._call(self._client.upload_images, hosts, images)
        iterator = iter(images)

        async def batches() -> AsyncIterator[Any]:
            while batch := await anyio.to_thread.run_sync(_take, iterator, UPLOAD_BATCH):
                for image in batch:
                    yield image

        return self._call(self._client.upload_images, hosts, batches())
