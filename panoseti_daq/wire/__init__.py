"""The wire: bytes <-> frames, with no event loop and no network.

`codec` reads and writes the DaqData messages (protobuf) with fast paths for images,
`header` the PFF JSON header as a protobuf Struct, `varint` the packed pixel varints, and
`hashpipe` the framing of Hashpipe's ingest sockets. Everything here takes bytes and returns
values (or raises CodecError / ImageError); the transports live in `panoseti_daq._grpclib`,
`panoseti_daq.server` and `panoseti_daq.client`.
"""
