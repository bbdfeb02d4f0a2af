"""ImageStream: the frames of one stream_images call, merged from all hosts (R-CLI-6, R-CLI-8).

One task per host (owned by the client's task group) puts replies into one anyio memory stream
as they arrive; the consumer reads that stream. Closing the ImageStream cancels the host tasks,
which resets their HTTP/2 streams; `aclose()` also waits until they have finished. The client
owns its streams: leaving the client closes those still open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..timestamps import TimestampWarnings
from ..wire.codec import StreamReply, dropped_before, stream_response_message

log = logging.getLogger(__name__)

__all__ = ["ImageStream", "dropped_before"]


# What an ImageStream yields: parsed dicts, StreamImagesResponse messages or StreamReply objects.
StreamForm = Literal["dict", "message", "reply"]
_FORMS: tuple[StreamForm, ...] = get_args(StreamForm)


@dataclass(eq=False)
class StreamState:
    """What the host tasks of one stream share with its consumer."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    finished: anyio.Event = field(default_factory=anyio.Event)
    errors: list[Exception] = field(default_factory=list)
    # Hosts still streaming: one that fails while others go on is logged, the failure of the
    # last one is kept in `errors` and raised (never both).
    hosts_streaming: int = 0
    # Replies named by the daq_config host they came from instead of the server's own name
    # (the CLI's table: two servers on one machine share a host name).
    name_by_host: bool = False


class ImageStream:
    """An async iterator of the frames of all requested hosts, in arrival order (R-CLI-6).

    Yields parsed dicts (R-PARSE-1), betterproto2 StreamImagesResponse messages or the
    decoder's StreamReply objects (`form` "dict", "message" or "reply"). Leaving
    `async with client.stream_images(...) as stream:` (also by `break`) or `await
    stream.aclose()` cancels its RPCs and waits for them to end (R-CLI-8); a stream left without
    either runs until its client closes. After every host has ended, the iteration raises the
    first error (RpcError or ConnectionError), if any, else stops.
    """

    def __init__(
        self,
        receive: MemoryObjectReceiveStream[StreamReply],
        state: StreamState,
        form: StreamForm = "dict",
        on_close: Callable[[ImageStream], None] | None = None,
    ) -> None:
        self._receive = receive
        self._state = state
        if form not in _FORMS:
            raise ValueError(f"form must be one of {', '.join(_FORMS)}, not {form!r}")
        self._form = form
        self._on_close = on_close
        self._closed = False
        self._timestamp_warnings = TimestampWarnings(log)

    def __aiter__(self) -> ImageStream:
        return self

    async def __anext__(self) -> Any:
        try:
            reply = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise self._end() from None
        return self._convert(reply)

    def _end(self) -> BaseException:
        if self._state.errors:
            return self._state.errors[0]
        return StopAsyncIteration()

    def receive_ready(self, limit: int = 256) -> list[Any]:
        """The frames already here, without waiting (lets a caller work in batches)."""
        items: list[Any] = []
        while len(items) < limit:
            try:
                items.append(self._convert(self._receive.receive_nowait()))
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        return items

    def _convert(self, reply: StreamReply) -> Any:
        if self._form == "reply":
            return reply
        if self._form == "message":
            return stream_response_message(reply)
        frame = reply.frame
        if frame is None:
            parsed: dict[str, Any] = {}
        else:
            parsed = frame.to_dict()
            if parsed["header"]["wr_unix_timestamp"] is None:  # R-CLI-11: perhaps an odd time
                self._timestamp_warnings.check(reply.name, frame.product.name, frame.time)
        parsed["dropped_before"] = dropped_before(reply.message)  # R-CLI-10
        return parsed

    @property
    def closed(self) -> bool:
        """Whether the stream was closed (its RPCs cancelled)."""
        return self._closed

    def close(self) -> None:
        """Cancel the RPCs without waiting (call on the event loop's thread)."""
        self._closed = True
        self._state.scope.cancel()
        self._receive.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)

    async def aclose(self) -> None:
        """Cancel the RPCs and wait until every host task has ended (R-CLI-8)."""
        self.close()
        await self._state.finished.wait()

    async def __aenter__(self) -> ImageStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
