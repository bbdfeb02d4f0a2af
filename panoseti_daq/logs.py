"""Logging for the command-line programs (serve, the CLI, the demo): records go to stderr.

On a terminal, rich renders them; anywhere else (a file, a pipe, journald) each record is one
line with its ISO 8601 UTC time, level and logger, so that logs are never wrapped at 80 columns
and sort and grep as text.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import IO

__all__ = ["PlainFormatter", "configure_logging"]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class PlainFormatter(logging.Formatter):
    """`2026-11-30T10:20:00.123Z WARNING panoseti_daq.x: message`, one line per record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = datetime.fromtimestamp(record.created, timezone.utc)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        # A message with line breaks stays one line; a traceback (exc_info) keeps its lines.
        text = super().format(record)
        head, sep, tail = text.partition("\nTraceback")
        return head.replace("\n", " | ") + sep + tail


def configure_logging(level: str, stream: IO[str] | None = None) -> None:
    """Log at `level` (a name of LOG_LEVELS) to `stream` (stderr): rich on a terminal, else
    PlainFormatter lines."""
    stream = sys.stderr if stream is None else stream
    handler: logging.Handler
    if stream.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(file=stream), show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PlainFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # The HTTP/2 libraries' debug records (every frame and header block) are not ours to show:
    # at --log-level debug they buried the program's own lines.
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    grpclib_server = logging.getLogger("grpclib.server")
    if not any(isinstance(f, _NormalCancel) for f in grpclib_server.filters):
        grpclib_server.addFilter(_NormalCancel())


NOISY_LOGGERS = ("hpack", "h2")


class _NormalCancel(logging.Filter):
    """Drops grpclib's "Request was cancelled" line, which every client that leaves a stream
    (the normal way to end one) caused, without its peer: the server logs each disconnect
    itself, with the peer and the subscription (R-OPS-3)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and record.msg == "Request was cancelled: %s")
