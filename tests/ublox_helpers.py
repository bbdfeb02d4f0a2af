"""Helpers for UbloxControl server tests: raw grpclib calls on either backend, a config."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality, Status

from panoseti_daq._generated.google.protobuf import Struct
from panoseti_daq._generated.ubloxcontrol import (
    CaptureUbloxRequest,
    CaptureUbloxResponse,
    InitF9TRequest,
    InitF9TResponse,
    PollRequest,
    PollResponse,
)
from panoseti_daq._grpclib.codec import DaqCodec
from panoseti_daq.config import UbloxServerConfig
from panoseti_daq.ublox import protocol
from tests.helpers import RawStream, on_grpclib_loop, raw_call

SERVICE = "/ubloxcontrol.UbloxControl"
UID = "DF03A241BC"  # the simulator's default, the shipped example's
# The original's recorded ZED-F9T output, shipped with the package.
RECORDING = Path(protocol.__file__).with_name("data") / "ubx_packets.jsonl"


def recorded_lines() -> list[dict[str, str]]:
    """The recording's JSON lines (identity, base64 frame, ...), read here, not by the code
    under test."""
    return [json.loads(line) for line in RECORDING.read_text().splitlines() if line.strip()]


def recorded_frames() -> list[tuple[str, bytes]]:
    """(identity, whole UBX frame) of every recorded line, in file order."""
    return [(e["identity"], base64.b64decode(e["payload_b64"])) for e in recorded_lines()]


# Fast timings for a simulator with a short output period.
TEST_SETTINGS = replace(
    UbloxServerConfig(),
    allowed_devices=("/dev/pts/*",),
    command_timeout_s=1.0,
    signal_settle_s=0.0,
    dataflow_timeout_s=2.0,
    silence_warning_s=30.0,
)

KEYS = [
    {"key": "CFG_MSGOUT_UBX_TIM_TP_USB", "value": 1},
    {"key": "CFG-MSGOUT-UBX_NAV_TIMEUTC_USB", "value": 1},
    {"key": "CFG_SIGNAL_GPS_L2C_ENA", "value": True},
    {"key": "CFG_TP_ANT_CABLEDELAY", "value": 10},
    {"key": "CFG_TP_PERIOD_TP2", "value": 1},
]


def f9t_config(device: str, uid: str = UID, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "device": device,
        "f9t_uid": uid,
        "apply_to_layers": ["RAM"],
        "verify_layer": "RAM",
        "cfg_key_settings": list(KEYS),
    }
    config.update(changes)
    return config


def _channel(server, window: int | None = None) -> Channel:
    """A channel to `server`; `window` bytes of HTTP/2 flow-control window (a slow reader)."""
    if window is None:
        return Channel("127.0.0.1", server.port, codec=DaqCodec())
    config = Configuration(http2_connection_window_size=window, http2_stream_window_size=window)
    return Channel("127.0.0.1", server.port, codec=DaqCodec(), config=config)


async def unary(server, method: str, request, reply_type, deadline_s: float | None = None):
    """One unary UbloxControl call; GRPCError when it fails."""

    async def run():
        ch = _channel(server)
        try:
            async with ch.request(
                f"{SERVICE}/{method}",
                Cardinality.UNARY_UNARY,
                type(request),
                reply_type,
                timeout=deadline_s,
            ) as stream:
                await stream.send_message(request, end=True)
                reply = await stream.recv_message()
                await stream.recv_trailing_metadata()
                return reply
        finally:
            ch.close()

    return await on_grpclib_loop(run)


async def init_f9t(server, config: dict[str, Any], force: bool = False, deadline_s=None):
    request = InitF9TRequest(f9t_config=Struct.from_dict(config), force_init=force)
    reply: InitF9TResponse = await unary(server, "InitF9t", request, InitF9TResponse, deadline_s)
    return reply


async def poll(server, patterns: list[str], deadline_s=None) -> PollResponse:
    return await unary(
        server, "PollMessage", PollRequest(patterns=patterns), PollResponse, deadline_s
    )


@contextlib.asynccontextmanager
async def capture(
    server, patterns=(), subscribed: bool = True, window: int | None = None
) -> AsyncIterator[RawStream]:
    """A CaptureUblox call; with `subscribed`, once the server has sent its headers (it has
    subscribed the stream). Leaving resets the stream, as a client that goes away does."""
    request = CaptureUbloxRequest(patterns=list(patterns))
    async with raw_call(
        lambda: _channel(server, window),
        f"{SERVICE}/CaptureUblox",
        Cardinality.UNARY_STREAM,
        CaptureUbloxRequest,
        CaptureUbloxResponse,
        request,
    ) as raw:
        if subscribed:
            await raw.recv_initial_metadata()
        yield raw


def lock_is_free(device: str) -> bool:
    """Whether no process holds the device's advisory lock (the server's flock)."""
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


async def next_message(raw: RawStream, timeout_s: float = 5.0) -> CaptureUbloxResponse:
    """The next response; GRPCError when the stream ends with a status."""
    with anyio.fail_after(timeout_s):
        reply = await raw.recv_message()
        if reply is None:
            await raw.recv_trailing_metadata()
            raise AssertionError("the stream ended with OK")
        return reply


async def expect_status(call: Any, status: Status, *fragments: str) -> str:
    """The call fails with `status` and a message containing every fragment; the message."""
    with pytest.raises(GRPCError) as info:
        await call
    assert info.value.status is status, info.value.message
    for fragment in fragments:
        assert fragment in (info.value.message or ""), info.value.message
    return info.value.message or ""


async def expect_deadline(call: Any) -> None:
    """The call fails by its deadline: the server's DEADLINE_EXCEEDED (it stops waiting just
    before the deadline) or, on a loaded machine, the client's own timer first."""
    with pytest.raises((GRPCError, TimeoutError)) as info:
        await call
    if isinstance(info.value, GRPCError):
        assert info.value.status is Status.DEADLINE_EXCEEDED, info.value.message
