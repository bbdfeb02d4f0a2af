"""Transport glue: the only package that knows grpclib's internals and trio-asyncio.

`bridge` runs grpclib's asyncio code from either backend (a trio-asyncio loop under trio),
`codec` plugs the wire codec into grpclib, `upload` is one UploadImages call on a grpclib
channel, and `private` holds every use of another library's private names, checked against
the versions it was written for.
"""
