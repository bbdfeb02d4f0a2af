"""InitF9t's finer rules over a real server and a simulated ZED-F9T on a real pseudo-terminal:
the shipped example, ACK matching, VALGET NAKs, link-cutting keys (R-UBX-INIT-*); and the exact
count of a slow CaptureUblox reader's drop notice (R-UBX-CAP-6). test_ublox_server.py has the
rest of the server's rules."""

from __future__ import annotations

import re

import anyio
import pytest
from grpclib.const import Status

from panoseti_daq._generated.ubloxcontrol import (
    CaptureUbloxResponse,
    CaptureUbloxResponseType,
    InitF9TResponseInitStatus,
)
from panoseti_daq.ublox.controller import State
from panoseti_daq.ublox.settings import example_config_path, load_chip_requests
from tests.helpers import wait_until
from tests.ublox_helpers import (
    KEYS,
    TEST_SETTINGS,
    capture,
    expect_status,
    f9t_config,
    init_f9t,
    next_message,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_the_shipped_example_configures_the_simulator(ublox_server, chip):
    """R-UBX-CFG-5, R-UBX-INIT-10, R-UBX-SIM-2: the shipped f9t_config.json5 (its device
    swapped for the simulator's) initialises the simulated chip: 40 keys and the 9 position
    items on RAM and BBR, verified, TIM-TP and NAV-TIMEUTC flowing."""
    (example,) = load_chip_requests(example_config_path())
    request = {**example.request, "device": chip.device}
    async with ublox_server() as server:
        reply = await init_f9t(server, request)
        assert "49 key(s) applied to RAM, BBR and verified on RAM" in reply.message
        assert reply.f9t_config.to_dict()["f9t_uid"] == example.uid
        assert server.ublox.state is State.STREAMING
        async with capture(server, ["TIM-TP", "NAV-TIMEUTC"]) as stream:
            names = {(await next_message(stream)).name for _ in range(4)}
        assert names == {"TIM-TP", "NAV-TIMEUTC"}
    for layer in ("RAM", "BBR"):
        assert chip.value("CFG_TMODE_LAT", layer) == 374219999
        assert chip.value("CFG_TMODE_HEIGHT_HP", layer) == 50
        assert chip.value("CFG_TP_FREQ_TP2", layer) == 10_000_000
    assert chip.value("CFG_TMODE_FIXED_POS_ACC", "FLASH") != 200


async def test_a_stray_ack_for_valget_is_not_the_answer_to_valset(ublox_server, chip):
    """R-UBX-INIT-7: only an ACK whose acknowledged class/id is CFG-VALSET counts. The chip sends
    the recording's ACK-ACK for CFG-VALGET before each VALSET answer: with a NAK behind it the
    init must fail, and with ACKs behind it succeed (the original took any ACK)."""
    chip.stray_acks()
    chip.nak_next_valset()
    async with ublox_server() as server:
        await expect_status(
            init_f9t(server, f9t_config(chip.device)),
            Status.FAILED_PRECONDITION,
            "device rejected CFG-VALSET: CFG_SIGNAL_GPS_L2C_ENA",
        )
        assert server.ublox.state is State.IDLE
        reply = await init_f9t(server, f9t_config(chip.device))
        assert reply.init_status is InitF9TResponseInitStatus.SUCCESS


async def test_a_valget_nak_makes_those_keys_unreadable(ublox_server, chip):
    """R-UBX-INIT-8: a NAK of the read-back poll means its keys are unreadable on that layer:
    INTERNAL listing every key, at once (the original waited 3 s and printed "Got: None")."""
    chip.nak_next_valget()
    async with ublox_server() as server:
        with anyio.fail_after(TEST_SETTINGS.command_timeout_s * 0.9):
            message = await expect_status(
                init_f9t(server, f9t_config(chip.device)),
                Status.INTERNAL,
                "Configuration verification failed for 5 items on layer RAM:",
            )
        for entry in KEYS:
            key = entry["key"].replace("-", "_")
            assert f"Key: {key}, Wanted: " in message
        assert server.ublox.state is State.IDLE


async def test_a_key_that_cuts_the_link_is_named_when_the_chip_goes_deaf(ublox_server, chip):
    """R-UBX-INIT-8, R-UBX-INIT-11, spec section 10: UBX input switched off on the port in use:
    the chip takes the setting and then hears no read-back poll. UNAVAILABLE saying that the
    chip may hold part of the settings and naming the suspect key; the server is IDLE again."""
    keys = [*KEYS, {"key": "CFG_USBINPROT_UBX", "value": 0}]
    async with ublox_server() as server:
        await expect_status(
            init_f9t(server, f9t_config(chip.device, cfg_key_settings=keys)),
            Status.UNAVAILABLE,
            f"no CFG-VALGET answer from {chip.device}",
            "may hold part of the new settings",
            "may cut the server's link to it: CFG_USBINPROT_UBX",
        )
        assert server.ublox.state is State.IDLE
        assert not server.ublox.fanout.cache
    assert chip.value("CFG_USBINPROT_UBX") == 0


async def test_a_slow_readers_drop_notice_counts_exactly_what_it_missed(ublox_server, chip):
    """R-UBX-CAP-6: a reader that stops reading fills its window and then its queue; messages
    finding the queue full are dropped for it alone and counted, and the next one it gets says
    "dropped N messages" with N exactly the count; the reader beside it gets every message
    without a notice, and nothing waits on the slow one."""
    async with ublox_server(max_read_queue_size=16) as server:
        await init_f9t(server, f9t_config(chip.device))
        fast_got: list[CaptureUbloxResponse] = []
        async with capture(server) as fast, capture(server, window=65_535) as slow:
            await wait_until(lambda: server.ublox.fanout.active == 2, what="two streams")

            async def read_fast() -> None:
                while True:
                    fast_got.append(await next_message(fast))

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_fast)
                chip.burst(100)  # 200 UBX messages a second
                await wait_until(
                    lambda: any(s.dropped_total > 0 for s in server.ublox.fanout.subscribers),
                    what="the slow stream's first drop",
                )
                chip.burst(0)
                (slow_subscriber,) = [
                    s for s in server.ublox.fanout.subscribers if s.dropped_total > 0
                ]
                slow_got: list[CaptureUbloxResponse] = []
                with anyio.fail_after(10):
                    while not (slow_got and slow_got[-1].message):
                        slow_got.append(await next_message(slow))
                received_at_notice = len(fast_got)
                await wait_until(lambda: len(fast_got) > received_at_notice + 2, what="more")
                tg.cancel_scope.cancel()
    notice = slow_got[-1]
    match = re.fullmatch(r"dropped (\d+) messages?", notice.message)
    assert match, notice.message
    assert int(match[1]) == slow_subscriber.dropped_total > 0
    assert notice.type is CaptureUbloxResponseType.DATA and notice.name
    assert all(m.message == "" for m in slow_got[:-1])
    assert all(m.message == "" and m.type is CaptureUbloxResponseType.DATA for m in fast_got)
    # The fast reader saw, in order, every message the slow one got, and the ones it missed.
    fast_keys = [(m.payload, m.pkt_unix_timestamp) for m in fast_got]
    slow_keys = [(m.payload, m.pkt_unix_timestamp) for m in slow_got]
    positions = [fast_keys.index(key) for key in slow_keys]
    assert positions == sorted(positions)
    gap = positions[-1] - positions[-2] - 1
    assert gap == int(match[1])
