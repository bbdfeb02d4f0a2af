"""PanoFrame: one image of one data product, with numpy pixels end to end (R-PARSE-*).

A PanoFrame is what the scanner reads, the hub holds, the codec puts on the wire and the clients
yield. It converts to panoseti_grpc's parsed dict (`to_dict`) and to and from the betterproto2
`PanoImage` message for code that wants the typed wire message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .errors import ImageError
from .messages import PanoImage, PanoImageType, Struct
from .products import DataProduct, ImageType, product_for, product_named
from .timestamps import FrameTime, frame_time

__all__ = ["PanoFrame", "as_frame", "pixels_for_product", "plain_header"]


def pixels_for_product(product: DataProduct, values: Any) -> np.ndarray:
    """Pixels of `product` from any integer array-like of its bit patterns or values.

    Accepts the product dtype as is, bit patterns 0 .. 2**bits - 1 (the wire form, R-WIRE-3), and,
    for signed products, negative values; reshapes row-major to the product's shape. Anything
    else raises ImageError naming the problem (R-PARSE-4).
    """
    array = np.asarray(values)
    if array.dtype == product.dtype and array.shape == product.shape:
        return array
    if array.size != product.pixel_count:
        raise ImageError(
            f"{product.name} needs {product.pixel_count} pixels "
            f"({product.rows}x{product.cols}), got {array.size}"
        )
    if array.dtype.kind not in "iub":
        raise ImageError(f"{product.name} pixels must be integers, got dtype {array.dtype}")
    flat = array.reshape(-1).astype(np.int64, copy=False)
    if flat.size:
        low = int(np.iinfo(product.dtype).min) if product.dtype.kind == "i" else 0
        lo, hi = int(flat.min()), int(flat.max())
        if lo < low or hi > product.max_bit_pattern:
            raise ImageError(
                f"{product.name} pixel values must fit {product.bytes_per_pixel} byte(s) "
                f"({low}..{product.max_bit_pattern}), got {lo}..{hi}"
            )
    unsigned = np.dtype(f"u{product.bytes_per_pixel}")
    return (
        (flat & product.max_bit_pattern).astype(unsigned).view(product.dtype).reshape(product.shape)
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    raise ImageError(f"header values must be JSON values, got {type(value).__name__}")


def plain_header(header: Mapping[str, Any]) -> dict[str, Any]:
    """The header as the wire carries it: nested dicts, lists, strings, bools and floats."""
    plain: dict[str, Any] = _plain(header)
    return plain


@dataclass(frozen=True, eq=False)
class PanoFrame:
    """One image: data product, PFF header, pixels (ndarray of the product's shape and dtype)."""

    product: DataProduct
    header: Mapping[str, Any]
    pixels: np.ndarray
    module_id: int
    file: str = ""
    frame_number: int = 0

    @classmethod
    def create(
        cls,
        product: DataProduct | str,
        header: Mapping[str, Any] | None,
        pixels: Any,
        module_id: int,
        file: str = "",
        frame_number: int = 0,
    ) -> PanoFrame:
        """A validated frame; pixels may be values or wire bit patterns (see pixels_for_product)."""
        if isinstance(product, str):
            product = product_named(product)
        if not 0 <= int(module_id) < 2**32:
            raise ImageError(f"module_id must be a uint32, got {module_id}")
        if not 0 <= int(frame_number) < 2**32:
            raise ImageError(f"frame_number must be a uint32, got {frame_number}")
        return cls(
            product,
            dict(header or {}),
            pixels_for_product(product, pixels),
            int(module_id),
            str(file),
            int(frame_number),
        )

    # -- panoseti_grpc's PanoImage fields -------------------------------------------------
    @property
    def type(self) -> ImageType:
        return self.product.image_type

    @property
    def shape(self) -> tuple[int, int]:
        return self.product.shape

    @property
    def bytes_per_pixel(self) -> int:
        return self.product.bytes_per_pixel

    @property
    def image_array(self) -> np.ndarray:
        return self.pixels

    @cached_property
    def time(self) -> FrameTime:
        """WR time of the frame, with the host-clock fallback (R-TIME-*)."""
        return frame_time(self.header)

    def wire_pixels(self) -> np.ndarray:
        """The pixels as the wire carries them: uint32 bit patterns, row-major (R-WIRE-3)."""
        unsigned = np.dtype(f"u{self.product.bytes_per_pixel}")
        return self.pixels.reshape(-1).view(unsigned).astype(np.uint32)

    def to_dict(self) -> dict[str, Any]:
        """The parsed image of the panoseti_grpc README (R-PARSE-1)."""
        header = plain_header(self.header)
        time = self.time
        header["wr_unix_timestamp"] = time.wr_unix_timestamp
        header["pandas_unix_timestamp"] = time.pandas_timestamp
        header["wr_timestamp_valid"] = time.wr_valid
        return {
            "type": self.type.name,
            "header": header,
            "shape": list(self.shape),
            "bytes_per_pixel": self.bytes_per_pixel,
            "image_array": self.pixels,
            "file": self.file,
            "frame_number": self.frame_number,
            "module_id": self.module_id,
        }

    def to_message(self) -> PanoImage:
        """The betterproto2 PanoImage message of this frame."""
        return PanoImage(
            type=PanoImageType(int(self.type)),
            header=Struct.from_dict(plain_header(self.header)),
            image_array=self.wire_pixels().tolist(),
            shape=list(self.shape),
            bytes_per_pixel=self.bytes_per_pixel,
            file=self.file,
            frame_number=self.frame_number,
            module_id=self.module_id,
        )

    @classmethod
    def from_message(cls, image: PanoImage) -> PanoFrame:
        """A validated frame from a PanoImage message; ImageError if it is invalid (R-PARSE-4)."""
        product = product_for(int(image.type), list(image.shape), image.bytes_per_pixel)
        header = image.header.to_dict() if image.header is not None else {}
        return cls.create(
            product,
            header,
            np.asarray(image.image_array, dtype=np.int64),
            image.module_id,
            image.file,
            image.frame_number,
        )

    def with_module(self, module_id: int) -> PanoFrame:
        """The same frame as if module `module_id` had taken it (simulation, R-SIM-4)."""
        return PanoFrame(
            self.product, self.header, self.pixels, int(module_id), self.file, self.frame_number
        )

    def __repr__(self) -> str:
        return (
            f"PanoFrame({self.product.name}, module {self.module_id}, "
            f"{self.file or '<no file>'}#{self.frame_number})"
        )


def as_frame(image: PanoFrame | PanoImage | Mapping[str, Any]) -> PanoFrame:
    """A PanoFrame from a frame, a PanoImage message or a parsed image dict (R-CLI-7)."""
    if isinstance(image, PanoFrame):
        return image
    if isinstance(image, PanoImage):
        return PanoFrame.from_message(image)
    if isinstance(image, Mapping):
        kind = image["type"]
        image_type = ImageType[kind] if isinstance(kind, str) else ImageType(int(kind))
        product = product_for(image_type, list(image["shape"]), image["bytes_per_pixel"])
        header = {
            k: v
            for k, v in dict(image.get("header") or {}).items()
            if k not in ("wr_unix_timestamp", "pandas_unix_timestamp", "wr_timestamp_valid")
        }
        return PanoFrame.create(
            product,
            header,
            image["image_array"],
            image.get("module_id", 0),
            image.get("file", ""),
            image.get("frame_number", 0),
        )
    raise TypeError(f"cannot upload a {type(image).__name__}: give PanoFrame, PanoImage or dict")
