"""The DaqData server: hub, hp_io scanner, simulation, RPC handlers and the application.

`DaqDataServer` and `run` are imported on first use, so that light modules of this package
(`server.sockets`, `server.hub`) can be imported, e.g. by `serve`'s argument checks, without
grpclib and the rest of the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import DaqDataServer, run

__all__ = ["DaqDataServer", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
