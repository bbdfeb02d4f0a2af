"""`python -m panoseti_daq.serve`, counting its HTTP/2 work per frame: for benchmarks/profile.py.

Wraps h2's public `H2Connection.receive_data` and `send_data` and the hub's `publish` to count
the bytes-in calls, the h2 events they return (by type), the DATA sends and the frames that
entered the hub; at exit it writes the counts as JSON to the file named by
PANOSETI_COUNTS_FILE. Benchmark use only.

    PANOSETI_COUNTS_FILE=counts.json python -m benchmarks._counting_server SERVE-ARGS...
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path
from typing import Any

import h2.connection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from panoseti_daq import serve
from panoseti_daq.server.hub import Hub

counts: collections.Counter[str] = collections.Counter()


def _counted(cls: Any, name: str, count: Any) -> None:
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        count(result)
        return result

    setattr(cls, name, wrapper)


def _events(events: list[Any]) -> None:
    counts["h2_receive_data_calls"] += 1
    for event in events:
        counts[f"h2_event_{type(event).__name__}"] += 1


_counted(h2.connection.H2Connection, "receive_data", _events)
_counted(h2.connection.H2Connection, "send_data", lambda _: counts.update(["h2_send_data_calls"]))
_counted(Hub, "publish", lambda _: counts.update(["frames_into_hub"]))


def main() -> int:
    try:
        return serve.main(sys.argv[1:])
    finally:
        Path(os.environ["PANOSETI_COUNTS_FILE"]).write_text(json.dumps(counts))


if __name__ == "__main__":
    sys.exit(main())
