"""The exception hierarchy of panoseti_daq: every error we raise is a PanosetiDaqError."""

from __future__ import annotations

from os import PathLike

__all__ = [
    "CodecError",
    "ConfigError",
    "ImageError",
    "PFFError",
    "PanosetiDaqError",
    "RpcError",
    "SourceError",
]


class PanosetiDaqError(Exception):
    """Base class of every error panoseti_daq raises on purpose."""


class PFFError(PanosetiDaqError, ValueError):
    """A PFF file holds bytes that are not a valid frame (R-PFF-5)."""

    def __init__(self, file: str | PathLike[str], offset: int, reason: str) -> None:
        self.file = str(file)
        self.offset = offset
        self.reason = reason
        super().__init__(f"{self.file} at byte {offset}: {reason}")


class ConfigError(PanosetiDaqError, ValueError):
    """A configuration file or dict is invalid; the message names the key and the file."""

    def __init__(self, key: str, reason: str, file: str | PathLike[str] | None = None) -> None:
        self.key = key
        self.reason = reason
        self.file = None if file is None else str(file)
        where = f" in {self.file}" if self.file else ""
        super().__init__(f"{key!r}{where}: {reason}")


class ImageError(PanosetiDaqError, ValueError):
    """A PanoImage is not a valid image of any data product (R-PARSE-4)."""


class CodecError(PanosetiDaqError, ValueError):
    """Bytes on the wire are not a valid protobuf encoding of the expected message."""


class RpcError(PanosetiDaqError):
    """A DaqData RPC failed: carries the gRPC status, its details and the host."""

    def __init__(self, status: object, details: str | None, host: str | None = None) -> None:
        self.status = status
        self.details = details or ""
        self.host = host
        name = getattr(status, "name", str(status))
        where = f" from {host}" if host else ""
        super().__init__(f"{name}{where}: {self.details}")


class SourceError(PanosetiDaqError):
    """A data source (the simulation) cannot go on; the message names the path and the cause.

    The server logs it as one line and keeps serving (R-SIM-7).
    """


def sole_exception(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups, or `exc` itself.

    For telling whether a task group's exception group wraps just one given exception.
    """
    while len(_members(exc)) == 1:
        exc = _members(exc)[0]
    return exc


def first_leaf_exception(exc: BaseException) -> BaseException:
    """The first leaf of nested exception groups, or `exc` itself: the one worth a message."""
    while _members(exc):
        exc = _members(exc)[0]
    return exc


def _members(exc: BaseException) -> tuple[BaseException, ...]:
    # An exception group's members (Python 3.10 has no BaseExceptionGroup: duck-typed).
    members = getattr(exc, "exceptions", ())
    return members if isinstance(members, tuple) else ()
