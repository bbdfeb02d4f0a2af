"""The one place that knows which event loop runs grpclib.

grpclib needs asyncio. Under the asyncio backend it runs on the same loop as everything else.
Under trio it runs on a trio-asyncio loop inside the trio run, and core code (on trio) calls
into it with `run_on_grpclib_loop`. That crossing costs ~180 µs, so it is used only for
start-up, shutdown and long-running coroutines, never per frame: per-frame traffic goes through
anyio memory streams and the synchronous hub, which work from both sides of one thread.
"""

from __future__ import annotations

import asyncio
import asyncio.events
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import sniffio

# trio-asyncio replaces asyncio.get_running_loop; anyio's asyncio backend keeps the function it
# finds when first imported. This module is imported first by the package, so that code running
# on grpclib's loop under trio (RPC handlers, clients) finds its loop, whatever imports anyio's
# backend later.
import trio_asyncio
import trio_asyncio._loop

# Importing trio-asyncio also makes asyncio.new_event_loop() return a SyncTrioEventLoop (a trio
# run in a helper thread) in every thread. asyncio.run(), anyio.run(backend="asyncio") and our
# blocking client would then all run on it: 2-3x slower than asyncio, and a surprise for any
# program that merely imports panoseti_daq. Restore asyncio's own function; trio-asyncio's
# `open_loop()` builds its loops itself and does not need it.
# (tests/test_client_entry.py checks that this still holds for the installed trio-asyncio.)
_original_new_event_loop = getattr(trio_asyncio._loop, "_orig_loop_new", None)
if _original_new_event_loop is not None:
    asyncio.new_event_loop = asyncio.events.new_event_loop = _original_new_event_loop

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
        import trio_asyncio

        loop = self.loop

        async def in_loop_context() -> T:
            # trio-asyncio finds "the running loop" through a context variable. Set it here, so
            # that every callback and task grpclib creates from this coroutine (listeners,
            # connections, RPC handlers) inherits it, whichever trio task entered the loop.
            trio_asyncio.current_loop.set(loop)
            return await fn(*args)

        return await trio_asyncio.aio_as_trio(in_loop_context, loop=loop)()


@asynccontextmanager
async def grpclib_loop() -> AsyncIterator[GrpclibLoop]:
    """A loop for grpclib: the running asyncio loop, or a trio-asyncio loop under trio."""
    backend = sniffio.current_async_library()
    if backend == "asyncio":
        yield GrpclibLoop("asyncio")
        return
    if backend != "trio":
        raise RuntimeError(f"unsupported async library {backend!r}: use asyncio or trio")
    import trio_asyncio

    running = trio_asyncio.current_loop.get()
    if running is not None:
        yield GrpclibLoop("trio", running)  # the caller already runs a trio-asyncio loop
        return
    async with trio_asyncio.open_loop() as loop:
        yield GrpclibLoop("trio", loop)
