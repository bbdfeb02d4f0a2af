"""UbloxControl on a real server (beside DaqData, loopback TCP) and a simulated ZED-F9T on a real
pseudo-terminal: InitF9t, CaptureUblox, PollMessage, device loss (spec sections 3 to 6)."""

from __future__ import annotations

import re
import time

import anyio
import pytest
from grpclib import GRPCError
from grpclib.const import Status

from panoseti_daq._generated.ubloxcontrol import (
    CaptureUbloxResponseType,
    InitF9TResponseInitStatus,
)
from panoseti_daq.ublox.controller import State
from panoseti_daq.ublox.protocol import byte_reversed_uid, decode, message_name
from panoseti_daq.ublox.simulator import SimulatedF9t
from tests.helpers import wait_until
from tests.ublox_helpers import (
    KEYS,
    UID,
    capture,
    expect_deadline,
    expect_status,
    f9t_config,
    init_f9t,
    lock_is_free,
    next_message,
    poll,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_happy_path_init_then_capture(ublox_server, chip):
    """R-UBX-INIT-10, R-UBX-CAP-4, R-UBX-CAP-5: InitF9t succeeds; the stream carries whole frames
    with pyubx2's fields and the host time of the read."""
    async with ublox_server() as server:
        assert server.ublox.state is State.IDLE
        config = f9t_config(chip.device, comments="ignored", telescope="dome 1")
        reply = await init_f9t(server, config)
        assert reply.init_status is InitF9TResponseInitStatus.SUCCESS
        assert reply.message.startswith("F9T initialized, configured, and verified successfully.")
        for fragment in ("ZED-F9T", "TIM 2.20", UID, "5 key(s)", "RAM", "telescope"):
            assert fragment in reply.message
        assert reply.f9t_config.to_dict()["device"] == chip.device
        assert server.ublox.state is State.STREAMING
        assert chip.value("CFG_TP_ANT_CABLEDELAY") == 10
        async with capture(server, ["TIM-TP$"]) as stream:
            for _ in range(3):
                message = await next_message(stream)
                assert message.type is CaptureUbloxResponseType.DATA
                assert message.name == "TIM-TP"
                assert message_name(decode(message.payload)) == "TIM-TP"
                data = message.parsed_data.to_dict()
                assert data["identity"] == "TIM-TP" and data["msg_cls"] == "0d"
                assert {"towMS", "qErr", "week", "qErrInvalid"} <= data.keys()
                assert message.pkt_unix_timestamp.year >= 2025


async def test_invalid_config_lists_problems_and_leaves_capture_running(ublox_server, chip):
    """R-UBX-INIT-1: validation before any I/O; a bad request while streaming leaves the
    stream running. R-UBX-INIT-4: a refused path never disturbs a running capture."""
    async with ublox_server() as server:
        await init_f9t(server, f9t_config(chip.device))
        async with capture(server, ["NAV-TIMEUTC"]) as stream:
            await next_message(stream)
            await expect_status(
                init_f9t(server, {"f9t_uid": UID}, force=True),
                Status.INVALID_ARGUMENT,
                "Device path not specified",
            )
            bad = f9t_config(chip.device, cfg_key_settings=[{"key": "CFG_NO_SUCH", "value": 1}])
            await expect_status(
                init_f9t(server, bad, force=True), Status.INVALID_ARGUMENT, "CFG_NO_SUCH"
            )
            await expect_status(
                init_f9t(server, f9t_config("/dev/null"), force=True),
                Status.PERMISSION_DENIED,
                "/dev/null",
                "/dev/pts/*",
            )
            assert server.ublox.state is State.STREAMING
            for _ in range(2):
                assert (await next_message(stream)).name == "NAV-TIMEUTC"


async def test_missing_and_non_character_devices(ublox_server, short_tmp):
    """R-UBX-INIT-4: missing path, a regular file."""
    async with ublox_server(allowed_devices=("/dev/pts/*", f"{short_tmp}/*")) as server:
        missing = str(short_tmp / "ttyACM7")
        await expect_status(
            init_f9t(server, f9t_config(missing)),
            Status.INVALID_ARGUMENT,
            f"Device path {missing} does not exist",
        )
        regular = short_tmp / "ttyUSB0"
        regular.write_text("not a device")
        await expect_status(
            init_f9t(server, f9t_config(str(regular))),
            Status.INVALID_ARGUMENT,
            "is not a character device",
        )
        assert server.ublox.state is State.IDLE


async def test_wrong_model(ublox_server, chip):
    """R-UBX-INIT-5: a model not starting with ZED-F9T; the port is closed again."""
    chip.set_identity(model="NEO-M8T")
    async with ublox_server() as server:
        await expect_status(
            init_f9t(server, f9t_config(chip.device)),
            Status.INVALID_ARGUMENT,
            "Model NEO-M8T does not match expected prefix ZED-F9T",
        )
        assert server.ublox.state is State.IDLE
        chip.set_identity(model="ZED-F9T")
        assert (await init_f9t(server, f9t_config(chip.device))).message


async def test_wrong_uid_names_byte_reversal(ublox_server, chip):
    """R-UBX-INIT-6: mismatch, case-insensitive compare, the byte-reversed hint."""
    async with ublox_server() as server:
        await expect_status(
            init_f9t(server, f9t_config(chip.device, uid="0123456789")),
            Status.INVALID_ARGUMENT,
            f"Detected F9T UID {UID} does not match client UID 0123456789",
        )
        reversed_uid = byte_reversed_uid(UID)
        message = await expect_status(
            init_f9t(server, f9t_config(chip.device, uid=reversed_uid)),
            Status.INVALID_ARGUMENT,
            f"{reversed_uid} is {UID} byte-reversed",
        )
        assert chip.device in message
        assert (await init_f9t(server, f9t_config(chip.device, uid=UID.lower()))).message


async def test_no_answer_is_unavailable_with_the_baud_rate(ublox_server, chip):
    """R-UBX-INIT-5: a host at the wrong speed (the chip hears noise), then a mute chip:
    UNAVAILABLE naming device and speed, the port closed again each time."""
    async with ublox_server(command_timeout_s=0.6) as server:
        await expect_status(
            init_f9t(server, f9t_config(chip.device, baud=38400)),
            Status.UNAVAILABLE,
            f"no MON-VER answer from {chip.device} at 38400 baud (wrong baud rate",
        )
        assert server.ublox.state is State.IDLE
        chip.mute()
        await expect_status(
            init_f9t(server, f9t_config(chip.device)),
            Status.UNAVAILABLE,
            f"no MON-VER answer from {chip.device} at 115200 baud",
        )
        chip.mute(False)
        assert (await init_f9t(server, f9t_config(chip.device))).message


async def test_nak_names_keys_and_partial_settings(ublox_server, chip):
    """R-UBX-INIT-7: a NAK of CFG-VALSET is FAILED_PRECONDITION naming the keys and firmware;
    R-UBX-INIT-11: the details say the chip may hold part of the new settings."""
    chip.set_unsupported_keys(["CFG_TP_PERIOD_TP2"])
    async with ublox_server() as server:
        message = await expect_status(
            init_f9t(server, f9t_config(chip.device)),
            Status.FAILED_PRECONDITION,
            "device rejected CFG-VALSET",
            "CFG_TP_PERIOD_TP2",
            "TIM 2.20",
            "may hold part of the new settings",
        )
        # The signal group went first and was applied.
        assert "applied before it: CFG_SIGNAL_GPS_L2C_ENA" in message
        assert server.ublox.state is State.IDLE


async def test_readback_mismatch_is_internal(ublox_server, chip):
    """R-UBX-INIT-8: read-back compared by type; the original's line format."""
    chip.wrong_readback(["CFG_TP_ANT_CABLEDELAY"])
    async with ublox_server() as server:
        message = await expect_status(
            init_f9t(server, f9t_config(chip.device)),
            Status.INTERNAL,
            "Configuration verification failed for 1 items on layer RAM:",
            "Key: CFG_TP_ANT_CABLEDELAY, Wanted: 10, Got: ",
        )
        assert "CFG_TP_PERIOD_TP2" not in message


async def test_no_data_flow_is_failed_precondition(ublox_server):
    """R-UBX-INIT-9: output enabled on USB while the host is on UART1: no TIM-TP arrives."""
    with SimulatedF9t(period_s=0.1, port="UART1", usb=True) as chip:
        async with ublox_server(dataflow_timeout_s=0.5) as server:
            await expect_status(
                init_f9t(server, f9t_config(chip.device)),
                Status.FAILED_PRECONDITION,
                f"from {chip.device} within 0.5 s (output enabled on this port?)",
                "NAV-TIMEUTC, TIM-TP",
            )
            assert server.ublox.state is State.IDLE
            assert not server.ublox.fanout.cache


async def test_force_init_ends_streams_cancelled(ublox_server, chip):
    """R-UBX-INIT-2: without force_init, FAILED_PRECONDITION naming the count; with it, every
    stream ends CANCELLED naming the caller, then the chip is initialised again."""
    async with ublox_server() as server:
        await init_f9t(server, f9t_config(chip.device))
        async with capture(server) as one, capture(server, ["TIM"]) as two:
            await next_message(one)
            await expect_status(
                init_f9t(server, f9t_config(chip.device)),
                Status.FAILED_PRECONDITION,
                "2 CaptureUblox stream(s) active",
                "force_init",
            )
            reply = await init_f9t(server, f9t_config(chip.device), force=True)
            assert reply.init_status is InitF9TResponseInitStatus.SUCCESS
            for stream in (one, two):
                with anyio.fail_after(5):
                    while True:
                        try:
                            await next_message(stream)
                        except GRPCError as exc:
                            assert exc.status is Status.CANCELLED
                            assert "re-initialised by InitF9t(force_init) from 127.0.0.1:" in (
                                exc.message or ""
                            )
                            break
        async with capture(server, ["TIM-TP"]) as again:
            assert (await next_message(again)).name == "TIM-TP"


async def test_snapshot_then_live_without_loss_or_duplicates(ublox_server, chip):
    """R-UBX-CAP-3: the newest cached message of each matching name in first-seen order, then
    every later one: the second stream's live part continues the first stream exactly."""
    async with ublox_server() as server:
        await init_f9t(server, f9t_config(chip.device))
        await wait_until(lambda: len(server.ublox.fanout.cache) >= 2, what="cache")
        timing = ["TIM-TP", "NAV-TIMEUTC"]
        async with capture(server, timing) as first:
            seen_first = [await next_message(first) for _ in range(6)]
            async with capture(server, timing) as second:
                seen_second = [await next_message(second) for _ in range(8)]
                seen_first += [await next_message(first) for _ in range(10)]
    snapshot_names = [m.name for m in seen_second[:2]]
    assert sorted(snapshot_names) == ["NAV-TIMEUTC", "TIM-TP"]
    keys_first = [(m.payload, m.pkt_unix_timestamp) for m in seen_first]
    keys_second = [(m.payload, m.pkt_unix_timestamp) for m in seen_second]
    assert len(set(keys_second)) == len(keys_second)  # no duplicates
    # The snapshot holds messages the first stream already had...
    positions = [keys_first.index(k) for k in keys_second[:2]]
    # ...and the live part follows the newest of them without a gap.
    start = max(positions) + 1
    assert keys_second[2:] == keys_first[start : start + len(keys_second) - 2]


async def test_capture_checks(ublox_server, chip):
    """R-UBX-CAP-1: not initialised; bad patterns; the client limit."""
    async with ublox_server(max_capture_clients=1) as server:
        with pytest.raises(GRPCError) as info:
            async with capture(server):
                pass
        assert info.value.status is Status.FAILED_PRECONDITION
        assert info.value.message == "F9T is not initialized or I/O is not running."
        await init_f9t(server, f9t_config(chip.device))
        for patterns, fragment in ((["TIM(["], "TIM(["), (["x"] * 65, "65 patterns")):
            with pytest.raises(GRPCError) as info:
                async with capture(server, patterns):
                    pass
            assert info.value.status is Status.INVALID_ARGUMENT
            assert fragment in (info.value.message or "")
        async with capture(server) as one:
            await next_message(one)
            with pytest.raises(GRPCError) as info:
                async with capture(server):
                    pass
            assert info.value.status is Status.RESOURCE_EXHAUSTED
            assert "the limit is 1" in (info.value.message or "")


async def test_silence_notice_then_stream_goes_on(ublox_server, chip):
    """R-UBX-CAP-7: silence gives one ERROR response per period; the stream keeps going."""
    async with ublox_server(silence_warning_s=0.4) as server:
        await init_f9t(server, f9t_config(chip.device))
        async with capture(server, ["TIM-TP"]) as stream:
            await next_message(stream)
            chip.silence()
            with anyio.fail_after(5):
                while (message := await next_message(stream)).type is not (
                    CaptureUbloxResponseType.ERROR
                ):
                    pass
            assert message.name == ""
            assert message.message.startswith(f"no UBX message from {chip.device} for ")
            chip.silence(False)
            with anyio.fail_after(5):
                while (await next_message(stream)).type is not CaptureUbloxResponseType.DATA:
                    pass


async def test_unplug_mid_stream_is_unavailable_within_2s(ublox_server, chip):
    """R-UBX-INIT-12, R-UBX-CAP-8: the stream ends UNAVAILABLE naming the device within 2 s;
    state IDLE, cache empty, no automatic re-init."""
    async with ublox_server() as server:
        await init_f9t(server, f9t_config(chip.device))
        async with capture(server) as stream:
            await next_message(stream)
            chip.unplug()
            with anyio.fail_after(2):
                while True:
                    try:
                        await next_message(stream)
                    except GRPCError as exc:
                        assert exc.status is Status.UNAVAILABLE
                        assert f"F9T on {chip.device} disconnected: " in (exc.message or "")
                        break
        assert server.ublox.state is State.IDLE
        assert not server.ublox.fanout.cache
        await expect_status(poll(server, ["TIM-TP"]), Status.FAILED_PRECONDITION)


async def test_two_servers_on_one_device(ublox_server, chip):
    """Spec section 10: the second server's open fails on the lock."""
    async with ublox_server() as first, ublox_server() as second:
        await init_f9t(first, f9t_config(chip.device))
        await expect_status(
            init_f9t(second, f9t_config(chip.device)),
            Status.UNAVAILABLE,
            f"could not open {chip.device}: in use by another process",
        )
        async with capture(first, ["TIM-TP"]) as stream:
            assert (await next_message(stream)).name == "TIM-TP"


async def test_poll_message(ublox_server, chip):
    """R-UBX-POLL-1..5: answered polls are DATA, unanswered ones ERROR; the checks."""
    async with ublox_server(poll_timeout_s=0.5) as server:
        await expect_status(poll(server, ["TIM-TP"]), Status.FAILED_PRECONDITION)
        await init_f9t(server, f9t_config(chip.device))
        reply = await poll(server, ["TIM-TP$", "NAV-CLOCK"])
        assert [p.name for p in reply.gnss_packet] == ["NAV-CLOCK", "TIM-TP"]
        clock, tim_tp = reply.gnss_packet
        assert clock.type is CaptureUbloxResponseType.ERROR
        assert clock.message == "no answer within 0.5 s"
        assert tim_tp.type is CaptureUbloxResponseType.DATA
        assert tim_tp.parsed_data.to_dict()["identity"] == "TIM-TP"
        await expect_status(poll(server, []), Status.INVALID_ARGUMENT)
        await expect_status(poll(server, ["ZZZ"]), Status.INVALID_ARGUMENT, "no pollable")
        await expect_status(poll(server, ["("]), Status.INVALID_ARGUMENT, "'('")
        await expect_status(poll(server, [""]), Status.INVALID_ARGUMENT, "the limit is 32")


async def test_x_r4_and_r8_keys_verify(ublox_server, chip):
    """R-UBX-CFG-3, R-UBX-INIT-8: an X key (integer and "0x" string), an R4 key whose value
    float32 cannot hold exactly, an R8 key: applied and verified by type."""
    keys = [
        {"key": "CFG_INFMSG_UBX_USB", "value": "0x07"},
        {"key": "CFG_INFMSG_UBX_UART1", "value": 3},
        {"key": "CFG_NAVSPG_USRDAT_SCALE", "value": 1.1},
        {"key": "CFG_TP_DUTY_LOCK_TP1", "value": 33.3},
    ]
    async with ublox_server() as server:
        config = f9t_config(chip.device, cfg_key_settings=[*KEYS, *keys])
        reply = await init_f9t(server, config)
        assert "9 key(s)" in reply.message
        assert chip.value("CFG_INFMSG_UBX_USB") in (7, b"\x07")


async def test_init_calls_are_serialised_and_others_wait(ublox_server, chip):
    """R-UBX-STATE-3: a second InitF9t, a PollMessage and a CaptureUblox wait for the first
    InitF9t, bounded by their deadlines."""
    chip.mute()
    async with ublox_server(command_timeout_s=1.5) as server, anyio.create_task_group() as tg:
        first_done = anyio.Event()

        async def first():
            await expect_status(init_f9t(server, f9t_config(chip.device)), Status.UNAVAILABLE)
            first_done.set()

        tg.start_soon(first)
        await wait_until(lambda: server.ublox.state is State.INITIALISING, what="init")
        await expect_deadline(init_f9t(server, f9t_config(chip.device), deadline_s=0.3))
        await expect_deadline(poll(server, ["TIM-TP"], deadline_s=0.3))
        assert not first_done.is_set()
        # A capture arriving meanwhile waits, then learns the outcome.
        with pytest.raises(GRPCError) as info:
            async with capture(server):
                pass
        assert info.value.status is Status.FAILED_PRECONDITION
        assert first_done.is_set()


async def test_caller_deadline_mid_init_closes_the_port_within_1s(ublox_server, chip):
    """R-UBX-INIT-11: a caller whose deadline passes mid-init gets the cleanup within 1 s: the
    port is closed (its lock is free) and the state IDLE."""
    chip.mute()
    async with ublox_server(command_timeout_s=3.0) as server:
        started = time.monotonic()
        await expect_deadline(init_f9t(server, f9t_config(chip.device), deadline_s=0.5))
        # Within 1 s of the deadline (the client may learn of it late on a loaded machine).
        await wait_until(
            lambda: server.ublox.state is State.IDLE and lock_is_free(chip.device),
            timeout_s=max(0.05, started + 0.5 + 1.0 - time.monotonic()),
            what="port closed",
        )
        chip.mute(False)
        assert (await init_f9t(server, f9t_config(chip.device))).message


async def test_overrun_drops_for_the_slow_stream_only_and_says_so(ublox_server, chip):
    """R-UBX-CAP-6: a stream that does not read loses messages from its full queue; the next
    message it gets says how many; a stream that reads loses none."""
    async with ublox_server(max_read_queue_size=50) as server:
        await init_f9t(server, f9t_config(chip.device))
        async with (
            capture(server, ["TIM-TP"], window=65_535) as slow,
            capture(server, ["TIM-TP"]) as fast,
        ):
            await next_message(slow)
            chip.burst(400)
            fast_seen = []
            with anyio.fail_after(20):
                while not any(s.dropped_total for s in server.ublox.fanout.subscribers):
                    fast_seen.append(await next_message(fast))
            chip.burst(0)
            with anyio.fail_after(20):
                while not (message := await next_message(slow)).message:
                    pass
            assert re.fullmatch(r"dropped \d+ messages", message.message)
            assert message.type is CaptureUbloxResponseType.DATA
            assert fast_seen and all(m.message == "" for m in fast_seen)
            fast_subscriber = min(server.ublox.fanout.subscribers, key=lambda s: s.dropped_total)
            assert fast_subscriber.dropped_total == 0


async def test_force_init_cancels_a_poll_in_flight(ublox_server, chip):
    """R-UBX-INIT-2: a PollMessage in flight ends CANCELLED when InitF9t(force_init) comes."""
    async with ublox_server(poll_timeout_s=5.0) as server, anyio.create_task_group() as tg:
        await init_f9t(server, f9t_config(chip.device))
        outcome = []

        async def polling():
            with pytest.raises(GRPCError) as info:
                await poll(server, ["NAV-CLOCK"])
            outcome.append(info.value)

        tg.start_soon(polling)
        await wait_until(lambda: chip.received("NAV-CLOCK") == 1, what="the poll")
        await init_f9t(server, f9t_config(chip.device), force=True)
        await wait_until(lambda: bool(outcome), what="the poll's end")
        assert outcome[0].status is Status.CANCELLED
        assert "re-initialised by InitF9t(force_init)" in (outcome[0].message or "")


async def test_only_acks_of_cfg_valset_count(ublox_server, chip):
    """R-UBX-INIT-7: an ACK-ACK for another command (the recording's, for CFG-VALGET) arriving
    before the NAK of a CFG-VALSET is not taken for its answer."""
    chip.stray_acks()
    chip.nak_next_valset()
    async with ublox_server() as server:
        await expect_status(
            init_f9t(server, f9t_config(chip.device)),
            Status.FAILED_PRECONDITION,
            "device rejected CFG-VALSET: CFG_SIGNAL_GPS_L2C_ENA",
        )
        assert (await init_f9t(server, f9t_config(chip.device))).message


async def test_noise_on_the_wire_is_dropped_and_counted(ublox_server, chip):
    """R-UBX-STATE-2: garbage between frames, bad checksums and frames split across writes:
    streams get only whole valid frames; the owner counts what it dropped."""
    async with ublox_server() as server:
        await init_f9t(server, f9t_config(chip.device))
        chip.garbage_between_frames(7)
        chip.bad_checksum_every(3)
        chip.split_frames(0.01)
        async with capture(server, ["TIM-TP", "NAV-TIMEUTC"]) as stream:
            for _ in range(10):
                message = await next_message(stream)
                assert message_name(decode(message.payload)) == message.name
        owner = server.ublox._owner
        assert owner is not None
        assert owner.splitter.bad_checksums > 0 and owner.splitter.skipped_bytes > 0


async def test_oversized_request_is_refused_before_decoding(ublox_server, chip):
    """R-UBX-INIT-1: a request far larger than any configuration is INVALID_ARGUMENT, refused
    before betterproto2 spends seconds of the event loop on it; the capture goes on."""
    async with ublox_server() as server:
        await init_f9t(server, f9t_config(chip.device))
        async with capture(server, ["TIM-TP"]) as stream:
            await next_message(stream)
            junk = [{"key": f"CFG_JUNK_{i}", "value": i} for i in range(6000)]
            await expect_status(
                init_f9t(server, f9t_config(chip.device, cfg_key_settings=junk), force=True),
                Status.INVALID_ARGUMENT,
                "at most 131072 are accepted",
            )
            assert (await next_message(stream)).name == "TIM-TP"


async def test_a_client_that_goes_away_is_unsubscribed_within_1s(ublox_server, chip):
    """R-UBX-CAP-8: a cancelled stream leaves the subscribers (and the client limit) at once."""
    async with ublox_server(max_capture_clients=1) as server:
        await init_f9t(server, f9t_config(chip.device))
        async with capture(server) as stream:
            await next_message(stream)
            assert server.ublox.active_streams == 1
        await wait_until(lambda: not server.ublox.fanout.subscribers, timeout_s=1.0, what="gone")
        async with capture(server) as again:
            await next_message(again)


async def test_unplug_during_the_data_flow_check_fails_at_once(ublox_server):
    """R-UBX-INIT-9, R-UBX-INIT-11: a chip lost while InitF9t waits for its messages ends the
    call with UNAVAILABLE naming the device, without waiting out dataflow_timeout_s."""
    with SimulatedF9t(period_s=0.1, port="UART1", usb=True) as chip:
        async with ublox_server(dataflow_timeout_s=20.0) as server, anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, _unplug_once_verified, chip)
            with anyio.fail_after(10):
                await expect_status(
                    init_f9t(server, f9t_config(chip.device)),
                    Status.UNAVAILABLE,
                    f"F9T on {chip.device} disconnected",
                )
            assert server.ublox.state is State.IDLE


def _unplug_once_verified(chip: SimulatedF9t) -> None:
    assert chip.wait_received("CFG-VALGET", timeout_s=10)
    chip.unplug()
