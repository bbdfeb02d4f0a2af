"""DaqClient: the blocking client (the seed's DaqDataClient), also usable inside Jupyter.

It runs an AsyncDaqClient on an asyncio event loop in a background thread (an anyio blocking
portal), so it works the same whether or not the caller's thread already runs an event loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .aio import AsyncDaqClient, Hosts, ImageStream

__all__ = ["DaqClient"]


class DaqClient:
    """Blocking client of the DaqData service on many DAQ nodes."""

    def __init__(
        self,
        daq_config: str | os.PathLike[str] | Mapping[str, Any],
        network_config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self._client = AsyncDaqClient(daq_config, network_config, **options)
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None

    @property
    def nodes(self):
        return self._client.nodes

    def __enter__(self) -> DaqClient:
        stack = ExitStack()
        try:
            self._portal = stack.enter_context(start_blocking_portal(backend="asyncio"))
            stack.enter_context(self._portal.wrap_async_context_manager(self._client))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc_info: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(*exc_info)
        self._portal = None

    def _call(self, fn: Any, *args: Any) -> Any:
        if self._portal is None:
            raise RuntimeError("use the client inside `with DaqClient(...)`")
        return self._portal.call(fn, *args)

    def ping(self, host: str) -> bool:
        return self._call(self._client.ping, host)

    def get_valid_daq_hosts(self) -> set[str]:
        return self._call(self._client.get_valid_daq_hosts)

    def get_daq_host_status(self) -> dict[str, bool]:
        return self._call(self._client.get_daq_host_status)

    def reflect_services(self, hosts: Hosts = None) -> str:
        return self._call(self._client.reflect_services, hosts)

    def init_hp_io(self, hosts: Hosts, hp_io_cfg: Mapping[str, Any]) -> bool:
        return self._call(self._client.init_hp_io, hosts, hp_io_cfg)

    def init_sim(self, hosts: Hosts = None, hp_io_cfg: Mapping[str, Any] | None = None) -> bool:
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
    ) -> Iterator[Any]:
        """A blocking iterator of frames; closing it (or `break`) cancels the RPCs."""

        async def open_stream() -> ImageStream:
            return self._client.stream_images(
                hosts,
                stream_movie_data,
                stream_pulse_height_data,
                update_interval_seconds,
                module_ids,
                wait_for_ready,
                parse_pano_images,
            )

        stream = self._call(open_stream)
        return self._iterate(stream)

    def _iterate(self, stream: ImageStream) -> Iterator[Any]:
        async def next_batch() -> list[Any]:
            first = await stream.__anext__()
            return [first, *stream.receive_ready()]

        try:
            while True:
                try:
                    batch = self._call(next_batch)
                except StopAsyncIteration:
                    return
                yield from batch
        finally:
            if self._portal is not None:
                self._portal.call(stream.aclose)

    def upload_images(self, hosts: Hosts, images: Iterable[Any] | AsyncIterable[Any]) -> None:
        return self._call(self._client.upload_images, hosts, images)
