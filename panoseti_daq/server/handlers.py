"""What every gRPC handler of the server needs, DaqData's and UbloxControl's alike: the time
left within the caller's deadline, the peer's address, and the request of a unary-request call.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.server import Stream

from ..errors import CodecError

__all__ = ["DEADLINE_MARGIN_S", "peer_address", "read_request", "remaining_s"]

# grpclib cancels a handler when the caller's deadline expires and answers DEADLINE_EXCEEDED
# itself. A handler that waits (for a writer, an InitF9t, a lock) stops this much earlier, so
# that the caller learns why (UNAVAILABLE, R-STATE-2, R-STATE-3) instead of racing grpclib's
# timer.
DEADLINE_MARGIN_S = 0.05


def remaining_s(stream: Stream[Any, Any]) -> float:
    """Seconds a handler may wait within the caller's deadline; infinity when it set none."""
    if stream.deadline is None:
        return math.inf
    return max(0.0, stream.deadline.time_remaining() - DEADLINE_MARGIN_S)


def peer_address(stream: Stream[Any, Any], uds_path: str | None = None) -> str:
    """The client's address: "ip:port", or "unix:" and the path of the server's Unix socket."""
    address: Any = stream.peer.addr()
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
        return f"{host}:{address[1]}"
    return f"unix:{address or uds_path or ''}"


async def read_request(stream: Stream[Any, Any], timeout_s: float = math.inf) -> Any:
    """The request of a unary-request RPC; malformed bytes are INVALID_ARGUMENT (R-WIRE-5).

    A client sends it with its call's headers: one that has not within `timeout_s`
    (handshake_timeout_seconds) holds a call open without using it, as a slowloris connection
    would, and gets DEADLINE_EXCEEDED (R-PEER-3).
    """
    try:
        with anyio.fail_after(timeout_s):
            request = await stream.recv_message()
    except CodecError as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, f"malformed request: {exc}") from None
    except TimeoutError:
        raise GRPCError(
            Status.DEADLINE_EXCEEDED,
            f"no request message within {timeout_s:g} s (handshake_timeout_seconds)",
        ) from None
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "no request message")
    return request
