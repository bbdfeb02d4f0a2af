"""HTTP/2 flow control of the server's listeners: how much an uploader may send ahead of the hub.

grpclib acknowledges received DATA (and so reopens the sender's window) as a handler reads
messages, and an upload handler reads at the pace of the hub (server/core.py `Uploader`: it
publishes each frame as it decodes it, and every `UPLOAD_BURST` frames lets the readers run).
The bytes a connection can have accepted ahead of the hub are therefore at most its inbound
window plus one batch of reads (`_private.FramedMessageReader`, 64 KiB) per upload.
grpclib's default windows are 4 MiB per connection and per stream, ~1,800 img16 images or a
fifth of a second at full speed: that much latency under overload. `http2_window_bytes`
(ServerConfig) sets both windows; the default, 256 KiB (~110 img16 images, ~10 ms at 10,000/s),
keeps the latency of a saturated upload low without costing throughput on loopback or a LAN.

The trade-off: one connection cannot upload faster than window / round-trip time. Over a long
link (say 100 ms) 256 KiB allows ~2.6 MB/s (~1,100 img16/s); raise the window for uploads over
such links, at the price of more latency when the server is the bottleneck.
"""

from __future__ import annotations

from grpclib.config import Configuration

from .._grpclib.private import ConnectionGuard
from ..config import ServerConfig

__all__ = ["connection_guard", "grpclib_configuration"]


def grpclib_configuration(config: ServerConfig) -> Configuration:
    """The grpclib Server configuration of `config`: inbound windows of http2_window_bytes."""
    window = config.http2_window_bytes
    return Configuration(http2_connection_window_size=window, http2_stream_window_size=window)


def connection_guard(config: ServerConfig) -> ConnectionGuard:
    """The limits of `config` on connections and received messages (R-PEER-1, R-PEER-3,
    R-PEER-5; docs/limits.md), shared by every listener of one server.

    Bodies larger than the HTTP/2 window are read at most `max_concurrent_rpcs` at a time: the
    server holds at most `max_concurrent_rpcs` x `max_message_bytes` of them (R-PEER-5).
    """
    return ConnectionGuard(
        max_connections=config.max_connections,
        handshake_timeout_s=config.handshake_timeout_seconds,
        idle_timeout_s=config.idle_connection_timeout_seconds,
        max_message_bytes=config.max_message_bytes,
        receive_slots=config.max_concurrent_rpcs,
        window_bytes=config.http2_window_bytes,
    )
