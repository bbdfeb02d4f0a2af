"""The server side's failure: a gRPC status name and details naming the problem (R-UBX-WIRE-4).

The port owner and the controller raise `UbloxError` without knowing grpclib; the service turns
it into the status of the call.
"""

from __future__ import annotations

from ..errors import PanosetiDaqError

__all__ = ["UbloxError"]

# The gRPC statuses the UbloxControl server ends a call with.
STATUSES = (
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "PERMISSION_DENIED",
    "UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "INTERNAL",
)


class UbloxError(PanosetiDaqError):
    """A UbloxControl call fails with gRPC status `status` (its name) and `details`."""

    def __init__(self, status: str, details: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"not a UbloxControl status: {status!r}")
        self.status = status
        self.details = details
        super().__init__(f"{status}: {details}")
