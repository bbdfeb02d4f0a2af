"""The one place that knows which event loop runs grpclib.

grpclib needs asyncio. Under the asyncio backend it runs on the same loop as everything else.
Under trio it runs on a trio-asyncio loop inside the trio run, and core code (on trio) calls
into it with `run_on_grpclib_loop`. That crossing costs ~180 µs, so it is used only for
start-up, shutdown and long-running coroutines, never per frame: per-frame traffic goes through
anyio memory streams and the synchronous hub, which work from both sides of one thread.

Importing this module (or the package) changes nothing in asyncio. trio-asyncio, which patches
asyncio for the whole process when imported, is imported only when `grpclib_loop()` starts a
loop under trio (see `_private.import_trio_asyncio` for what is kept and what is undone).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import sniffio

from .private import import_trio_asyncio

__all__ = ["GrpclibLoop", "grpclib_loop"]

T = TypeVar("T")


class GrpclibLoop:
    """Runs asyncio coroutine functions on grpclib's loop from the core's side."""

    def __init__(self, backend: str, loop: Any = None) -> None:
        self.backend = backend
        self.loop = loop

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self.backend == "asyncio":
            return await fn(*args)
        import trio_asyncio  # imported by grpclib_loop() through import_trio_asyncio

        loop = self.loop

        async def in_loop_context() -> T:
            # trio-asyncio finds "the running loop" through a context variable. Set it here, so
            # that every callback and task grpclib creates from this coroutine (listeners,
            # connections, RPC handlers) inherits it, whichever trio task entered the loop.
            trio_asyncio.current_loop.set(loop)
            return await fn(*args)

        result: T = await trio_asyncio.aio_as_trio(in_loop_context, loop=loop)()
        return result


@asynccontextmanager
async def grpclib_loop() -> AsyncIterator[GrpclibLoop]:
    """A loop for grpclib: the running asyncio loop, or a trio-asyncio loop under trio."""
    backend = sniffio.current_async_library()
    if backend == "asyncio":
        yield GrpclibLoop("asyncio")
        return
    if backend != "trio":
        raise RuntimeError(f"unsupported async library {backend!r}: use asyncio or trio")
    trio_asyncio = import_trio_asyncio()

    running = trio_asyncio.current_loop.get()
    if running is not None:
        yield GrpclibLoop("trio", running)  # the caller already runs a trio-asyncio loop
        return
    async with trio_asyncio.open_loop() as loop:
        yield GrpclibLoop("trio", loop)
