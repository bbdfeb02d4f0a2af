"""A grpcio client in its own process, for what grpcio cannot do in the test process.

grpcio-health-checking's and grpcio-reflection's protos collide with grpclib's copies in
protobuf's default descriptor pool ("duplicate symbol"), so the tests run them here:

    python tests/grpcio_probe.py watch TARGET SERVICE    # one health status name per line
    python tests/grpcio_probe.py check TARGET SERVICE    # the status name, or the error code
    python tests/grpcio_probe.py check-per-line TARGET SERVICE
        # "ready", then for each line read from stdin one check on a new connection

Each line is flushed as it is known: the test reads them as events. `check-per-line` lets a
test start the process (and pay for importing grpcio) before the moment it checks.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _name(status: int) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def _check_per_line(target: str, service: str) -> int:
    print("ready", flush=True)
    request = health_pb2.HealthCheckRequest(service=service)
    for _ in sys.stdin:
        # A channel per check: each one connects to the server's listener anew.
        with grpc.insecure_channel(target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
                print(_name(reply.status), flush=True)
            except grpc.RpcError as exc:
                print(exc.code().name, flush=True)
    return 0


def main(argv: list[str]) -> int:
    action, target, service = argv
    if action == "check-per-line":
        return _check_per_line(target, service)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            if action == "check":
                print(_name(stub.Check(request, timeout=10).status), flush=True)
            elif action == "watch":
                for reply in stub.Watch(request, timeout=60):
                    print(_name(reply.status), flush=True)
            else:
                raise SystemExit(f"unknown action {action!r}: check, check-per-line or watch")
        except grpc.RpcError as exc:
            print(exc.code().name, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
