"""The inbound HTTP/2 windows that bound what an uploader has in flight ahead of the hub.

`http2_window_bytes` (issue 14 item 2) is validated like every key, and a raw HTTP/2 client on a
real socket sees the server advertise it: as SETTINGS_INITIAL_WINDOW_SIZE for streams and as the
connection window (65,535 + its first WINDOW_UPDATE).
"""

from __future__ import annotations

import anyio
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from panoseti_daq.config import HTTP2_WINDOW_DEFAULT, ConfigError, server_config_from_dict

pytestmark = pytest.mark.anyio


def test_http2_window_bytes_default_and_validation():
    assert server_config_from_dict({}).http2_window_bytes == HTTP2_WINDOW_DEFAULT == 262144
    assert server_config_from_dict({"http2_window_bytes": 65535}).http2_window_bytes == 65535
    for bad, problem in [
        (65534, ">= 65535"),
        (2**31, "<= 2147483647"),
        (1.5e6, "integer"),
        (True, "integer"),
    ]:
        with pytest.raises(ConfigError, match=f"http2_window_bytes.*{problem}"):
            server_config_from_dict({"http2_window_bytes": bad})


async def _advertised_windows(stream: anyio.abc.ByteStream) -> tuple[int, int]:
    """(stream window, connection window) the server advertises to a new HTTP/2 client."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    await stream.send(conn.data_to_send())
    stream_window = connection_window = None
    with anyio.fail_after(5):
        while stream_window is None or connection_window is None:
            for event in conn.receive_data(await stream.receive()):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    changed = event.changed_settings.get(
                        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
                    )
                    if changed is not None:
                        stream_window = changed.new_value
                elif isinstance(event, h2.events.WindowUpdated) and event.stream_id == 0:
                    connection_window = 65535 + event.delta
            await stream.send(conn.data_to_send())
    return stream_window, connection_window


@pytest.mark.parametrize("window", [65536, 300_000])
async def test_listeners_advertise_the_configured_window(make_server, window):
    """Both listeners (TCP and the Unix socket) use http2_window_bytes for streams and for the
    connection, instead of grpclib's 4 MiB."""
    async with make_server(http2_window_bytes=window) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as tcp:
            assert await _advertised_windows(tcp) == (window, window)
        async with await anyio.connect_unix(server.uds_path) as unix:
            assert await _advertised_windows(unix) == (window, window)
