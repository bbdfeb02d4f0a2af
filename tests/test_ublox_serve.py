"""UbloxControl in `python -m panoseti_daq.serve`, seen by grpcio clients in other processes:
reflection and health cover both services, SIGTERM ends streams and closes the port
(R-UBX-SRV-1..3, R-UBX-CAP-8)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2

from panoseti_daq.server.process import free_port, serve_command, started
from panoseti_daq.ublox.simulator import SimulatedF9t
from tests.helpers import serve_refused, server_process
from tests.reference import UBLOX_PROTO, modules
from tests.ublox_helpers import f9t_config, lock_is_free

pb2, pb2_grpc = modules(UBLOX_PROTO)

PROBE = str(Path(__file__).with_name("grpcio_probe.py"))
REFLECTION = textwrap.dedent(
    """
    import sys, grpc
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    database = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(sys.argv[1]))
    print(",".join(sorted(database.get_services())))
    service = DescriptorPool(database).FindServiceByName("ubloxcontrol.UbloxControl")
    for method in service.methods:
        print(method.name, method.input_type.full_name, method.output_type.full_name,
              method.client_streaming, method.server_streaming)
    """
)
SETTINGS = {
    "ublox_control": {
        "allowed_devices": ["/dev/pts/*"],
        "command_timeout_s": 1.5,
        "signal_settle_s": 0,
        "shutdown_grace_period": 0.5,
    },
    "shutdown_grace_period": 1,
}


def _run(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=30, check=True
    )
    return result.stdout


@pytest.mark.timeout(90)  # a server process, two client processes
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_served_beside_daqdata_then_sigterm(short_tmp, backend):
    """R-UBX-SRV-1: one listener for both services; R-UBX-SRV-2: reflection lists and resolves
    ubloxcontrol.UbloxControl, health says SERVING for it; R-UBX-SRV-3, R-UBX-CAP-8: SIGTERM
    ends an open stream with UNAVAILABLE "server shutting down", closes the port, exit 0."""
    with (
        SimulatedF9t(period_s=0.1) as chip,
        server_process(short_tmp, config=SETTINGS, backend=backend) as (process, port, _uds),
    ):
        target = f"127.0.0.1:{port}"
        out = _run("-c", REFLECTION, target)
        services = out.splitlines()[0].split(",")
        assert "ubloxcontrol.UbloxControl" in services and "daqdata.DaqData" in services
        assert (
            "CaptureUblox ubloxcontrol.CaptureUbloxRequest ubloxcontrol.CaptureUbloxResponse "
            "False True" in out
        )
        assert _run(PROBE, "check", target, "ubloxcontrol.UbloxControl").strip() == "SERVING"
        with grpc.insecure_channel(target) as channel:
            stub = pb2_grpc.UbloxControlStub(channel)
            config = struct_pb2.Struct()
            config.update(f9t_config(chip.device))
            reply = stub.InitF9t(pb2.InitF9tRequest(f9t_config=config), timeout=20)
            assert reply.init_status == pb2.InitF9tResponse.SUCCESS
            stream = stub.CaptureUblox(pb2.CaptureUbloxRequest(patterns=["TIM-TP"]), timeout=30)
            assert next(stream).name == "TIM-TP"
            assert not lock_is_free(chip.device)
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                for _ in stream:
                    pass
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert info.value.details() == "server shutting down"
            assert time.monotonic() - sent < 2.0
        assert process.wait(timeout=15) == 0
        assert lock_is_free(chip.device)


@pytest.mark.timeout(90)  # two server processes, client processes
def test_ubloxcontrol_only_beside_a_daqdata_only_server(short_tmp):
    """R-UBX-SRV-1, R-UBX-CFG-6: two processes on one node, one per service: the UbloxControl
    one listens on the host and port of the original's separate file, opens no Unix socket,
    and offers only its own service (reflection, health); DaqData calls there are
    UNIMPLEMENTED. SIGTERM stops it with exit code 0."""
    ublox_port = free_port()
    ublox_file = short_tmp / "ublox_control_server_config.json"
    ublox_file.write_text(
        json.dumps({"host": "127.0.0.1", "port": ublox_port, "allowed_devices": ["/dev/pts/*"]})
    )
    daq_dir = short_tmp / "daq"
    daq_dir.mkdir()
    command = serve_command("--services", "ublox", "--ublox-config", str(ublox_file))
    with (
        server_process(daq_dir, "--services", "daqdata") as (_daq, daq_port, _uds),
        started(command, ublox_port, stderr=subprocess.PIPE, text=True, cwd=short_tmp) as ublox,
    ):
        daq_target, ublox_target = f"127.0.0.1:{daq_port}", f"127.0.0.1:{ublox_port}"
        listed = _run("-c", REFLECTION, ublox_target).splitlines()[0].split(",")
        assert "ubloxcontrol.UbloxControl" in listed and "daqdata.DaqData" not in listed
        assert _run(PROBE, "check", ublox_target, "ubloxcontrol.UbloxControl").strip() == (
            "SERVING"
        )
        assert _run(PROBE, "check", ublox_target, "daqdata.DaqData").strip() == "NOT_FOUND"
        assert _run(PROBE, "check", daq_target, "daqdata.DaqData").strip() == "SERVING"
        assert _run(PROBE, "check", daq_target, "ubloxcontrol.UbloxControl").strip() == (
            "NOT_FOUND"
        )
        _, daq_pb2_grpc = modules()
        with grpc.insecure_channel(ublox_target) as channel:
            with pytest.raises(grpc.RpcError) as info:
                daq_pb2_grpc.DaqDataStub(channel).Ping(empty_pb2.Empty(), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
            stub = pb2_grpc.UbloxControlStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.PollMessage(pb2.PollRequest(patterns=["MON-VER"]), timeout=5)
            assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # no InitF9t yet
        assert list(short_tmp.glob("*.sock")) == [] and not Path("/tmp/daq_data.sock").is_socket()
        ublox.send_signal(signal.SIGTERM)
        assert ublox.wait(timeout=15) == 0


def test_ubloxcontrol_only_refuses_hp_io_options(short_tmp):
    """R-UBX-CFG-6: --init and --init-sim configure DaqData: with --services ublox they are an
    error on one line, exit code 2."""
    result = serve_refused(short_tmp, "--services", "ublox", "--init-sim", "--port", "0")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("--init-sim configures DaqData, which --services ublox does not serve")
    )
