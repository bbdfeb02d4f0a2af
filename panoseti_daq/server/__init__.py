"""The DaqData server: hub, hp_io scanner, simulation, RPC handlers and the application."""

from .app import DaqDataServer, run

__all__ = ["DaqDataServer", "run"]
