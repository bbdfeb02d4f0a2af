"""UbloxClient and BlockingUbloxClient: nodes from an f9t_config, checks before sending, and the
statuses of nodes that are down (R-UBX-CFG-5, R-UBX-INIT-1, R-UBX-WIRE-3, R-UBX-WIRE-4)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import anyio
import json5
import pytest
from grpclib.const import Status
from hypothesis import given
from hypothesis import strategies as st

from panoseti_daq import BlockingUbloxClient, RpcError, UbloxClient, UbloxMessage
from panoseti_daq._generated.google.protobuf import Struct
from panoseti_daq.server.process import free_port
from panoseti_daq.ublox.client import load_ublox_nodes, parse_target, wire_config
from panoseti_daq.ublox.settings import F9tSettingsError, example_config_path
from panoseti_daq.ublox.simulator import SimulatedF9t
from tests.ublox_helpers import UID, f9t_config

pytestmark = pytest.mark.timeout(30)

EXAMPLE = json5.loads(example_config_path().read_text())


def two_chips(port_a: int, port_b: int) -> dict:
    config = copy.deepcopy(EXAMPLE)
    first = config["f9t_chips"][0]
    first.update(host="127.0.0.1", port=port_a)
    second = dict(first, f9t_uid="0123456789", port=port_b, device="/dev/ttyACM2")
    config["f9t_chips"].append(second)
    return config


def test_nodes_of_the_shipped_example():
    """R-UBX-CFG-5: one request per chip: the shared keys overlaid by the chip's, sent to its
    host:port; the UID names the chip."""
    (node,) = load_ublox_nodes(example_config_path()).values()
    assert (node.name, node.host, node.port, node.uid) == (
        "localhost:50051",
        "localhost",
        50051,
        "DF03A241BC",
    )
    assert node.request["device"] == "/dev/ttyACM1"
    assert node.request["apply_to_layers"] == ["RAM", "BBR"]
    assert len(node.request["cfg_key_settings"]) == 40
    assert "f9t_chips" not in node.request


def test_targets_and_their_errors():
    """host:port targets (capture and poll need nothing more); errors name the input."""
    nodes = load_ublox_nodes(["127.0.0.1:50051", "[::1]:50052"])
    assert [(n.host, n.port) for n in nodes.values()] == [("127.0.0.1", 50051), ("::1", 50052)]
    assert list(nodes) == ["127.0.0.1:50051", "[::1]:50052"]
    assert parse_target("node7:0") is None and parse_target("/dev/ttyACM0") is None
    assert list(load_ublox_nodes(["h:1", "h:1"])) == ["h:1"]  # one server named twice
    with pytest.raises(ValueError, match="no server address given"):
        load_ublox_nodes([])
    with pytest.raises(ValueError, match="'daq-7' is not a server address: give host:port"):
        load_ublox_nodes(["daq-7"])
    with pytest.raises(F9tSettingsError, match="one server serves one device"):
        load_ublox_nodes(two_chips(50051, 50051))


def test_hosts_by_name_or_uid_in_any_case():
    client = UbloxClient(two_chips(50061, 50062))
    assert client.resolve(None) == ["127.0.0.1:50061", "127.0.0.1:50062"]
    assert client.resolve("df03a241bc") == ["127.0.0.1:50061"]
    assert client.resolve(["127.0.0.1:50062", "0123456789"]) == ["127.0.0.1:50062"]
    wanted = r"no chip or node 'ABCDEF0123'; known: 127\.0\.0\.1:50061"
    with pytest.raises(ValueError, match=wanted):
        client.resolve("ABCDEF0123")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=8,
    )
)
def test_struct_carries_every_integer_exactly(value):
    """R-UBX-WIRE-3: Struct numbers are doubles; integers beyond 2^53 go as "0x..." strings
    (negative ones cannot and are refused), every other value arrives unchanged."""

    def has_big_negative(v):
        if isinstance(v, dict):
            return any(has_big_negative(x) for x in v.values())
        if isinstance(v, list):
            return any(has_big_negative(x) for x in v)
        return isinstance(v, int) and not isinstance(v, bool) and v < -(2**53)

    if has_big_negative(value):
        with pytest.raises(ValueError, match="beyond 2"):
            wire_config(value)
        return

    def restore(sent, got):
        if isinstance(sent, dict):
            return {k: restore(sent[k], got[k]) for k in sent}
        if isinstance(sent, list):
            return [restore(s, g) for s, g in zip(sent, got, strict=True)]
        if isinstance(sent, int) and not isinstance(sent, bool):
            return int(got, 16) if isinstance(got, str) else int(got)
        return got

    wrapped = {"v": value}
    received = Struct.parse(bytes(Struct.from_dict(wire_config(wrapped)))).to_dict()
    assert restore(wrapped, received) == wrapped


@pytest.mark.anyio
async def test_init_checks_every_chip_before_sending_anything(anyio_backend):
    """R-UBX-INIT-1 on the client's side: every problem of every chip is listed at once, naming
    the chip and the key, and no node is called (their ports have no server)."""
    config = two_chips(free_port(), free_port())
    config["f9t_chips"][1]["device"] = ""
    config["cfg_key_settings"].append({"key": "CFG_TP_NO_SUCH_KEY", "value": 1})
    async with UbloxClient(config) as client:
        with pytest.raises(F9tSettingsError) as info:
            await client.init_f9t()
    problems = info.value.problems
    assert any(p.startswith("chip 0123456789 (127.0.0.1:") and "Device path" in p for p in problems)
    assert sum("CFG_TP_NO_SUCH_KEY" in p for p in problems) == 2


@pytest.mark.anyio
async def test_a_node_that_is_down(anyio_backend):
    """InitF9t reports UNAVAILABLE per node; poll raises RpcError; a capture of one node ends
    with its RpcError; with wait_for_ready it says, as a "status" message, that it retries."""
    port = free_port()
    config = two_chips(port, free_port())
    async with UbloxClient(config, retry_delay_s=0.05) as client:
        results = await client.init_f9t("DF03A241BC", timeout_s=5)
        (result,) = results.values()
        assert (result.ok, result.status, result.uid) == (False, "UNAVAILABLE", "DF03A241BC")
        assert "connection refused" in result.message
        with pytest.raises(RpcError) as info:
            await client.poll(["MON-VER"], "DF03A241BC")
        assert info.value.status is Status.UNAVAILABLE
        with pytest.raises(RpcError):
            async with client.capture("DF03A241BC") as stream:
                async for _ in stream:
                    pass
        statuses = []
        with anyio.fail_after(10):
            async with client.capture(wait_for_ready=True) as stream:
                async for message in stream:
                    statuses.append(message)
                    if len({m.host for m in statuses}) == 2:
                        break
    assert {m.kind for m in statuses} == {"status"}
    assert all("UNAVAILABLE" in m.notice and "retrying" in m.notice for m in statuses)


def test_blocking_client_reports_the_same():
    """BlockingUbloxClient: the same answers without async (a portal thread)."""
    config = two_chips(free_port(), free_port())
    with BlockingUbloxClient(config, retry_delay_s=0.05) as client:
        results = client.init_f9t(timeout_s=5)
        assert [r.status for r in results.values()] == ["UNAVAILABLE", "UNAVAILABLE"]
        stream = client.capture(wait_for_ready=True)
        first = next(iter(stream))
        stream.close()
        assert first.kind == "status" and stream.closed
        with pytest.raises(RpcError):
            client.poll(["MON-VER"], "0123456789")


# -- against a server with a simulated chip (both backends) -------------------------------------


@pytest.fixture
def chip():
    with SimulatedF9t(period_s=0.2) as simulated:
        yield simulated


def chip_config(server, device: str, **changes) -> dict:
    """An f9t_config of one chip, served by `server`."""
    chip_request = f9t_config(device, **changes)
    return {"f9t_chips": [{**chip_request, "host": "127.0.0.1", "port": server.port}]}


@pytest.mark.anyio
async def test_init_capture_poll_end_to_end(anyio_backend, ublox_server, chip):
    """R-UBX-INIT-10, R-UBX-CAP-3/4/5, R-UBX-POLL-5 through UbloxClient: init answers OK with
    the model and UID; the capture brings TIM-TP and NAV-TIMEUTC whose UTC (built by the
    simulator from this host's clock) is now, qErr in ps as an int; a poll answers."""
    async with ublox_server() as server:
        async with UbloxClient(chip_config(server, chip.device)) as client:
            (result,) = (await client.init_f9t()).values()
            assert result.ok and result.status == "OK", result.message
            assert UID in result.message and "ZED-F9T" in result.message
            assert result.accepted_config["device"] == chip.device
            seen: dict[str, UbloxMessage] = {}
            with anyio.fail_after(10):
                async with client.capture(patterns=["TIM-TP$", "NAV-TIMEUTC$"]) as stream:
                    async for message in stream:
                        seen.setdefault(message.name, message)
                        if len(seen) == 2:
                            break
            now = datetime.now(timezone.utc)
            tim_tp, nav = seen["TIM-TP"], seen["NAV-TIMEUTC"]
            assert type(tim_tp.qerr_ps) is int and -10_000 < tim_tp.qerr_ps < 10_000
            assert timedelta(seconds=-1) < tim_tp.utc - now < timedelta(seconds=3)
            assert abs(nav.utc - now) < timedelta(seconds=3) and nav.utc_valid
            assert nav.t_acc_ns > 0 and abs(tim_tp.host_time - now) < timedelta(seconds=3)
            (answer,) = await client.poll(["NAV-TIMEUTC$"])
            assert (answer.name, answer.kind) == ("NAV-TIMEUTC", "data")


@pytest.mark.anyio
async def test_force_init_and_unplug_as_a_capture_sees_them(anyio_backend, ublox_server, chip):
    """R-UBX-INIT-2: a second client's init is refused while a capture runs (the result names
    force_init); with force the capture that waits for readiness says CANCELLED and resumes;
    R-UBX-INIT-12: after an unplug a capture ends with UNAVAILABLE naming the device."""
    async with ublox_server() as server:
        config = chip_config(server, chip.device)
        async with UbloxClient(config, retry_delay_s=0.05) as client:
            assert (await client.init_f9t())[f"127.0.0.1:{server.port}"].ok
            with anyio.fail_after(20):
                async with client.capture(wait_for_ready=True) as stream:
                    first = await stream.__anext__()
                    assert first.kind == "data"
                    (refused,) = (await client.init_f9t()).values()
                    assert refused.status == "FAILED_PRECONDITION"
                    assert "force_init" in refused.message
                    (forced,) = (await client.init_f9t(force=True)).values()
                    assert forced.ok
                    kinds = []
                    async for message in stream:
                        kinds.append((message.kind, message.notice))
                        if message.kind == "data" and any(k == "status" for k, _ in kinds):
                            break
                    status = next(notice for kind, notice in kinds if kind == "status")
                    assert status.startswith("CANCELLED") and "retrying" in status
                async with client.capture() as stream:
                    assert (await stream.__anext__()).kind == "data"
                    chip.unplug()
                    with pytest.raises(RpcError) as info, anyio.fail_after(2):
                        async for _ in stream:
                            pass
            assert info.value.status is Status.UNAVAILABLE
            assert chip.device in info.value.details and "disconnected" in info.value.details


@pytest.mark.timeout(60)
def test_blocking_client_inside_a_running_event_loop():
    """BlockingUbloxClient works where an event loop already runs in the caller's thread (as in
    a Jupyter cell): its own loop runs in a portal thread."""
    import asyncio

    from panoseti_daq.ublox.demo import simulated_node

    async def cell():
        with simulated_node() as node, BlockingUbloxClient(str(node.f9t_config)) as client:
            (result,) = client.init_f9t().values()
            assert result.ok, result.message
            with client.capture(patterns=["TIM-TP$"]) as stream:
                message = next(iter(stream))
            assert message.name == "TIM-TP" and message.qerr_ps is not None

    asyncio.run(cell())


class _Garbage:
    """A "message" whose bytes are not a valid protobuf message (a field cut short)."""

    def SerializeToString(self) -> bytes:
        return b"\x0a\x80"


@pytest.mark.anyio
async def test_a_server_sending_garbage_is_an_rpc_error(anyio_backend):
    """A hostile or broken server: replies that do not parse end the call with RpcError
    INTERNAL "invalid reply" (InitF9t: a failed InitResult), never another exception."""
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    from panoseti_daq._generated.ubloxcontrol import CaptureUbloxRequest, InitF9TRequest
    from panoseti_daq._grpclib.bridge import grpclib_loop

    async def garbage_stream(stream):
        await stream.recv_message()
        await stream.send_message(_Garbage())

    class Hostile:
        def __mapping__(self):
            path = "/ubloxcontrol.UbloxControl/"
            return {
                path + "CaptureUblox": Handler(
                    garbage_stream, Cardinality.UNARY_STREAM, CaptureUbloxRequest, _Garbage
                ),
                path + "InitF9t": Handler(
                    garbage_stream, Cardinality.UNARY_UNARY, InitF9TRequest, _Garbage
                ),
            }

    async with grpclib_loop() as loop:
        server = Server([Hostile()])
        port = free_port()
        await loop.run(server.start, "127.0.0.1", port)
        try:
            config = two_chips(port, free_port())
            async with UbloxClient(config) as client:
                (result,) = (await client.init_f9t("DF03A241BC", timeout_s=5)).values()
                assert (result.ok, result.status) == (False, "INTERNAL")
                assert result.message.startswith("invalid reply")
                with pytest.raises(RpcError) as info:
                    async with client.capture("DF03A241BC") as stream:
                        async for _ in stream:
                            pass
                assert info.value.status is Status.INTERNAL
        finally:

            async def close():
                server.close()
                await server.wait_closed()

            await loop.run(close)


@pytest.mark.anyio
async def test_many_nodes_from_one_config(anyio_backend, ublox_server):
    """R-UBX-CFG-5: one f9t_config, two chips on two servers: init answers per chip (the UID
    each server found), one capture merges both nodes' messages."""
    with SimulatedF9t(period_s=0.2) as first, SimulatedF9t(period_s=0.2, uid="0A1B2C3D4E") as other:
        async with (
            ublox_server() as server_a,
            ublox_server() as server_b,
        ):
            config = {
                "apply_to_layers": ["RAM"],
                "cfg_key_settings": f9t_config("")["cfg_key_settings"],
                "f9t_chips": [
                    {"f9t_uid": UID, "device": first.device, "port": server_a.port},
                    {"f9t_uid": "0a1b2c3d4e", "device": other.device, "port": server_b.port},
                ],
            }
            for chip_entry in config["f9t_chips"]:
                chip_entry["host"] = "127.0.0.1"
            async with UbloxClient(config) as client:
                results = await client.init_f9t()
                assert [r.ok for r in results.values()] == [True, True]
                assert "0A1B2C3D4E" in results[f"127.0.0.1:{server_b.port}"].message
                hosts = set()
                with anyio.fail_after(10):
                    async with client.capture(patterns=["TIM-TP$"]) as stream:
                        async for message in stream:
                            hosts.add(message.host)
                            if len(hosts) == 2:
                                break
            assert hosts == {f"127.0.0.1:{server_a.port}", f"127.0.0.1:{server_b.port}"}


@pytest.mark.anyio
async def test_a_node_down_does_not_mislabel_the_others(anyio_backend, ublox_server, chip):
    """R-UBX-CFG-5 (the original's async capture mislabels hosts once one is invalid): with the
    first node down, every message names the node it came from, and the one that is down
    gets status messages of its own."""
    async with ublox_server() as server:
        down = free_port()
        config = {
            "f9t_chips": [
                {**f9t_config("/dev/ttyACM0", uid="0123456789"), "port": down},
                {**f9t_config(chip.device), "port": server.port},
            ]
        }
        for entry in config["f9t_chips"]:
            entry["host"] = "127.0.0.1"
        async with UbloxClient(config, retry_delay_s=0.05) as client:
            results = await client.init_f9t()
            assert [r.ok for r in results.values()] == [False, True]
            seen: dict[str, set[str]] = {}
            with anyio.fail_after(10):
                async with client.capture(wait_for_ready=True) as stream:
                    async for message in stream:
                        seen.setdefault(message.host, set()).add(message.kind)
                        if len(seen.get(f"127.0.0.1:{server.port}", ())) and len(seen) == 2:
                            break
    assert seen[f"127.0.0.1:{down}"] == {"status"}
    assert seen[f"127.0.0.1:{server.port}"] == {"data"}


def test_the_docs_f9t_config_is_valid():
    """The f9t_config.json5 shown in docs/ublox.md parses and its chip's request passes the
    checks InitF9t makes first (R-UBX-CFG-1 .. R-UBX-CFG-5)."""
    import re
    from pathlib import Path

    from panoseti_daq.ublox.settings import plan_init

    doc = (Path(__file__).resolve().parent.parent / "docs" / "ublox.md").read_text()
    (block,) = re.findall(r"```json5\n(.*?)```", doc, flags=re.DOTALL)
    (node,) = load_ublox_nodes(json5.loads(block)).values()
    assert node.name == "daq-node-1:50051" and node.uid == "DF03A241BC"
    plan = plan_init(node.request)
    assert plan.device.startswith("/dev/serial/by-id/")
