"""What the client reports, and how often: why a host is down, RPC errors raised or logged
(never both)."""

from __future__ import annotations

import logging
import socket

import pytest

from panoseti_daq import AsyncDaqClient, RpcError
from tests.conftest import daq_config
from tests.helpers import free_port

pytestmark = pytest.mark.anyio


async def test_why_a_host_is_down_is_logged_once_with_the_reason(make_server, caplog):
    """At the default level, each host that does not answer a ping is one warning naming the
    host and why: its name does not resolve, the connection is refused, or it does not answer
    in time (a socket that accepts and never speaks HTTP/2)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    hosts = {
        "no-such-host.invalid:50051": "resolve",
        f"127.0.0.1:{free_port()}": "refused",
        f"127.0.0.1:{silent.getsockname()[1]}": "no answer",
    }
    try:
        async with make_server() as server:
            config = {"daq_nodes": [{"ip_addr": h} for h in [*hosts, f"127.0.0.1:{server.port}"]]}
            with caplog.at_level(logging.INFO, "panoseti_daq"):
                async with AsyncDaqClient(config, ping_timeout_s=1.0) as client:
                    assert client.valid_hosts == {f"127.0.0.1:{server.port}"}
    finally:
        silent.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == len(hosts), [r.getMessage() for r in warnings]
    for host, reason in hosts.items():
        (line,) = [r.getMessage() for r in warnings if host in r.getMessage()]
        assert reason in line and "\n" not in line, line


async def test_a_stream_error_is_raised_not_also_logged(make_server, caplog):
    """An RPC error that the stream raises is not logged as well (one report per failure)."""
    async with make_server() as server:
        async with AsyncDaqClient(daq_config(server)) as client:
            with caplog.at_level(logging.INFO, "panoseti_daq"):
                with pytest.raises(RpcError, match="FAILED_PRECONDITION"):
                    async with client.stream_images(None, True, True, 0.0) as stream:
                        async for _ in stream:
                            pass
    assert not [r for r in caplog.records if "FAILED_PRECONDITION" in r.getMessage()]
