"""Server reflection from the client side: which services a server offers (R-CLI-4)."""

from __future__ import annotations

from grpclib.client import Channel
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

from ..messages import SERVICE_NAME

__all__ = ["describe_services"]


def _streaming(client: bool, server: bool) -> str:
    if client and server:
        return "bidirectional streaming"
    if client:
        return "client streaming"
    return "server streaming" if server else "unary"


async def describe_services(channel: Channel) -> str:
    """Text listing the server's services and each DaqData method with its streaming kind."""
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

    stub = ServerReflectionStub(channel)
    requests = [
        ServerReflectionRequest(list_services=""),
        ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
    ]
    responses = await stub.ServerReflectionInfo(requests)
    services = sorted(s.name for s in responses[0].list_services_response.service)
    lines = ["services:", *(f"  {name}" for name in services)]
    for raw in responses[1].file_descriptor_response.file_descriptor_proto:
        proto = FileDescriptorProto.FromString(raw)
        for service in proto.service:
            lines.append(f"{proto.package}.{service.name} methods:")
            for method in service.method:
                kind = _streaming(method.client_streaming, method.server_streaming)
                lines.append(
                    f"  {method.name}({method.input_type.lstrip('.')}) -> "
                    f"{method.output_type.lstrip('.')} [{kind}]"
                )
    return "\n".join(lines)
