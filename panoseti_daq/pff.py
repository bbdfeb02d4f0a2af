"""The PFF file format and the names of run directories and data files (R-PFF-*, R-NAME-*).

A PFF file is a sequence of equal-sized frames: a JSON header, a blank line, `*`, then the
pixels little-endian and row-major. Functions here take bytes or paths and return values; the
only I/O is reading or appending the bytes a call names.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import PFFError
from .products import DataProduct, product_named

__all__ = [
    "DataFileName",
    "RunDirName",
    "decode_frame",
    "encode_frame",
    "frame_count",
    "frame_size_of",
    "header_text",
    "iter_frames",
    "module_dir_id",
    "newest_complete_frame",
    "read_frame",
]

HEADER_END = b"\n\n"
PIXELS_MARK = b"*"
# A header longer than this is not a Hashpipe header (4 quabos take under 1 KiB).
MAX_HEADER_BYTES = 64 * 1024


def header_text(header: Mapping[str, Any]) -> bytes:
    """The JSON text of a header, compact."""
    return json.dumps(dict(header), separators=(",", ":")).encode()


def encode_frame(
    header: Mapping[str, Any],
    pixels: np.ndarray,
    product: DataProduct,
    header_width: int | None = None,
) -> bytes:
    """One PFF frame: the header as JSON, a blank line, `*`, little-endian pixels.

    All frames of a file must have the same size (R-PFF-2); Hashpipe writes fixed-width numbers.
    With `header_width`, the JSON is padded with spaces before its closing brace to that many
    bytes, so frames with headers of different lengths still have one size.
    """
    if pixels.shape != product.shape:
        raise ValueError(
            f"{product.name} pixels must have shape {product.shape}, not {pixels.shape}"
        )
    text = header_text(header)
    if header_width is not None:
        if len(text) > header_width:
            raise ValueError(f"header of {len(text)} bytes does not fit {header_width}")
        text = text[:-1] + b" " * (header_width - len(text)) + b"}"
    return text + HEADER_END + PIXELS_MARK + pixels.astype(product.file_dtype, copy=False).tobytes()


def _header_end(buf: bytes | memoryview, start: int, file: str) -> int | None:
    """Offset just past the header's blank line, or None when the buffer ends first."""
    data = bytes(buf[start : start + MAX_HEADER_BYTES + len(HEADER_END)])
    at = data.find(HEADER_END)
    if at < 0:
        if len(data) > MAX_HEADER_BYTES:
            raise PFFError(
                file, start, f"no blank line ends the header within {MAX_HEADER_BYTES} bytes"
            )
        if data.strip() and not data.lstrip().startswith(b"{"):
            raise PFFError(file, start, "header does not start with a JSON object")
        return None
    return start + at + len(HEADER_END)


def _parse_header(text: bytes, file: str, offset: int) -> dict[str, Any]:
    if not text.lstrip().startswith(b"{"):
        raise PFFError(file, offset, "header does not start with a JSON object")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PFFError(file, offset, f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise PFFError(file, offset, f"header is a JSON {type(header).__name__}, not an object")
    return header


def decode_frame(
    buf: bytes | memoryview, product: DataProduct, offset: int = 0, file: str = "<bytes>"
) -> tuple[dict[str, Any], np.ndarray, int] | None:
    """Decode the frame at `offset`: (header, pixels, offset of the next frame).

    Returns None when the buffer ends inside the frame (a frame still being written, R-PFF-3);
    raises PFFError for bytes that can never become a frame (R-PFF-5).
    """
    end = _header_end(buf, offset, file)
    if end is None:
        return None
    header = _parse_header(bytes(buf[offset : end - len(HEADER_END)]), file, offset)
    if end >= len(buf):
        return None
    if buf[end : end + 1] != PIXELS_MARK:
        raise PFFError(
            file, end, f"expected '*' after the header, found {bytes(buf[end : end + 1])!r}"
        )
    start = end + 1
    stop = start + product.pixel_bytes
    if stop > len(buf):
        return None
    pixels = np.frombuffer(buf, dtype=product.file_dtype, count=product.pixel_count, offset=start)
    return header, pixels.astype(product.dtype).reshape(product.shape), stop


def _read_at(f: IO[bytes], offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def frame_size_of(path: str | os.PathLike[str], product: DataProduct) -> int | None:
    """Size in bytes of every frame of a file, measured on its first header (R-PFF-2).

    None while the first header is not complete yet.
    """
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES + len(HEADER_END) + 1)
    end = _header_end(head, 0, str(path))
    if end is None:
        return None
    _parse_header(head[: end - len(HEADER_END)], str(path), 0)
    return end + len(PIXELS_MARK) + product.pixel_bytes


def frame_count(file_size: int, frame_size: int) -> int:
    """Number of complete frames in a file of `file_size` bytes (R-PFF-3)."""
    return file_size // frame_size if frame_size > 0 else 0


def read_frame(
    path: str | os.PathLike[str], product: DataProduct, index: int, frame_size: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Read frame `index` of a file with one seek and one read."""
    offset = index * frame_size
    with open(path, "rb") as f:
        data = _read_at(f, offset, frame_size)
    if len(data) < frame_size:
        raise PFFError(
            path, offset, f"frame {index} is incomplete ({len(data)} of {frame_size} bytes)"
        )
    decoded = decode_frame(data, product, 0, str(path))
    if decoded is None or decoded[2] != frame_size:
        raise PFFError(
            path, offset, f"frame {index} is not {frame_size} bytes like the first frame"
        )
    header, pixels, _ = decoded
    return header, pixels


def newest_complete_frame(
    path: str | os.PathLike[str], product: DataProduct, frame_size: int | None = None
) -> tuple[int, dict[str, Any], np.ndarray] | None:
    """(index, header, pixels) of the newest complete frame, reading only that frame.

    A file that is still growing ends in a partial frame: that is not an error (R-PFF-3).
    """
    if frame_size is None:
        frame_size = frame_size_of(path, product)
        if frame_size is None:
            return None
    count = frame_count(os.stat(path).st_size, frame_size)
    if count == 0:
        return None
    header, pixels = read_frame(path, product, count - 1, frame_size)
    return count - 1, header, pixels


def iter_frames(
    path: str | os.PathLike[str], product: DataProduct
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Every complete frame of a file, in order; a partial last frame is left out."""
    data = Path(path).read_bytes()
    offset = 0
    frame_size: int | None = None
    while offset < len(data):
        decoded = decode_frame(data, product, offset, str(path))
        if decoded is None:
            return
        header, pixels, end = decoded
        if end < len(data) and data[end : end + 1] != b"{":
            raise PFFError(path, offset, f"pixel block is short: no frame starts at byte {end}")
        if frame_size is None:
            frame_size = end - offset
        elif end - offset != frame_size:
            raise PFFError(
                path, offset, f"frame is {end - offset} bytes, the first frame is {frame_size}"
            )
        offset = end
        yield header, pixels


# --- names -------------------------------------------------------------------------------

_FIELD = re.compile(r"^([A-Za-z]+)_(.*)$")


def _split_fields(stem: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in stem.split("."):
        match = _FIELD.match(part)
        if match:
            fields.setdefault(match.group(1), match.group(2))
    return fields


@dataclass(frozen=True)
class DataFileName:
    """A data file name: dot-separated `key_value` fields ending in `.pff` (R-NAME-2)."""

    dp: str
    module: int | None = None
    seqno: int = 0
    bpp: int | None = None
    start: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def product(self) -> DataProduct:
        return product_named(self.dp)

    @classmethod
    def parse(cls, name: str) -> DataFileName | None:
        """The fields of a data file name; None when it is not a data file (R-NAME-3)."""
        if not name.endswith(".pff"):
            return None
        fields = _split_fields(name[: -len(".pff")])
        dp = fields.pop("dp", None)
        if not dp:
            return None
        try:
            module = int(fields.pop("module")) if "module" in fields else None
            seqno = int(fields.pop("seqno", "0"))
            bpp = int(fields.pop("bpp")) if "bpp" in fields else None
        except ValueError:
            return None
        start = fields.pop("start", None)
        return cls(dp, module, seqno, bpp, start, tuple(fields.items()))

    def format(self) -> str:
        parts = []
        if self.start is not None:
            parts.append(f"start_{self.start}")
        parts.append(f"dp_{self.dp}")
        if self.bpp is not None:
            parts.append(f"bpp_{self.bpp}")
        if self.module is not None:
            parts.append(f"module_{self.module}")
        parts.append(f"seqno_{self.seqno}")
        parts.extend(f"{k}_{v}" for k, v in self.extra)
        return ".".join(parts) + ".pff"

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True)
class RunDirName:
    """A run directory name: `obs_<observatory>.start_<ISO time>.runtype_<type>.pffd` (R-NAME-1)."""

    observatory: str
    start: str | None = None
    runtype: str | None = None

    @classmethod
    def parse(cls, name: str) -> RunDirName | None:
        """The fields of a run directory name; None when it is not one."""
        stem = name[: -len(".pffd")] if name.endswith(".pffd") else name
        fields = _split_fields(stem)
        if "obs" not in fields or not name.startswith("obs_"):
            return None
        return cls(fields["obs"], fields.get("start"), fields.get("runtype"))

    def format(self) -> str:
        parts = [f"obs_{self.observatory}"]
        if self.start is not None:
            parts.append(f"start_{self.start}")
        if self.runtype is not None:
            parts.append(f"runtype_{self.runtype}")
        return ".".join(parts) + ".pffd"

    def __str__(self) -> str:
        return self.format()


def module_dir_id(name: str) -> int | None:
    """The module id of a `module_<id>` directory name, or None."""
    match = re.fullmatch(r"module_(\d+)", name)
    return int(match.group(1)) if match else None
