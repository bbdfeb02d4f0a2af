"""The reference implementation of the wire format: protobuf + grpcio code from schema/.

Test and benchmark use only. The modules are generated once per schema version into a cache
directory under the system temp dir (kept between runs on purpose, named for the schema's
hash) and imported from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "schema" / "daq_data.proto"


def _out_dir() -> Path:
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"panoseti_daq_reference_{digest}"


def generate() -> Path:
    """Generate daq_data_pb2 and daq_data_pb2_grpc (once) and return their directory."""
    out = _out_dir()
    if not (out / "daq_data_pb2_grpc.py").exists():
        tmp = Path(tempfile.mkdtemp(prefix="reference_", dir=out.parent))
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "grpc_tools.protoc",
                    f"-I{PROTO.parent}",
                    f"--python_out={tmp}",
                    f"--grpc_python_out={tmp}",
                    str(PROTO),
                ],
                check=True,
            )
            # Another process may have generated it first: identical content, keep theirs.
            with contextlib.suppress(OSError):
                tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already once renamed
    return out


def modules() -> tuple[ModuleType, ModuleType]:
    """(daq_data_pb2, daq_data_pb2_grpc) of the reference implementation."""
    out = str(generate())
    if out not in sys.path:
        sys.path.insert(0, out)
    return importlib.import_module("daq_data_pb2"), importlib.import_module("daq_data_pb2_grpc")
