"""UbloxControl in `python -m panoseti_daq.serve`, seen by grpcio clients in other processes:
reflection and health cover both services, SIGTERM ends streams and closes the port
(R-UBX-SRV-1..3, R-UBX-CAP-8)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from panoseti_daq.ublox.simulator import SimulatedF9t
from tests.helpers import server_process
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
