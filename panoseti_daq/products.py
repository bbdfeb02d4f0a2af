"""The four PANOSETI data products (R-DP-1, R-DP-2): the one table of their facts."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from .errors import ImageError

__all__ = [
    "PRODUCTS",
    "DataProduct",
    "ImageType",
    "product_for",
    "product_named",
]


class ImageType(enum.IntEnum):
    """Values of the wire enum `daqdata.PanoImage.Type`."""

    UNDEFINED = 0
    PULSE_HEIGHT = 1
    MOVIE = 2


@dataclass(frozen=True)
class DataProduct:
    """One Hashpipe data product: how its images look on disk, on the wire and in numpy."""

    name: str
    image_type: ImageType
    rows: int
    cols: int
    bytes_per_pixel: int
    dtype: np.dtype
    quabos_per_image: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def pixel_count(self) -> int:
        return self.rows * self.cols

    @property
    def pixel_bytes(self) -> int:
        return self.pixel_count * self.bytes_per_pixel

    @property
    def is_movie(self) -> bool:
        return self.image_type is ImageType.MOVIE

    @property
    def file_dtype(self) -> np.dtype:
        """The little-endian dtype of the pixels in a PFF file (R-PFF-1)."""
        return self.dtype.newbyteorder("<")

    @property
    def max_bit_pattern(self) -> int:
        """The largest pixel value on the wire: pixels travel as bit patterns (R-WIRE-3)."""
        return (1 << (8 * self.bytes_per_pixel)) - 1

    def __str__(self) -> str:
        return self.name


PRODUCTS: dict[str, DataProduct] = {
    p.name: p
    for p in (
        DataProduct("img16", ImageType.MOVIE, 32, 32, 2, np.dtype(np.uint16), 4),
        DataProduct("img8", ImageType.MOVIE, 32, 32, 1, np.dtype(np.uint8), 4),
        DataProduct("ph1024", ImageType.PULSE_HEIGHT, 32, 32, 2, np.dtype(np.int16), 4),
        DataProduct("ph256", ImageType.PULSE_HEIGHT, 16, 16, 2, np.dtype(np.int16), 1),
    )
}

_BY_LAYOUT: dict[tuple[int, ...], DataProduct] = {  # (image type, *shape, bytes per pixel)
    (int(p.image_type), p.rows, p.cols, p.bytes_per_pixel): p for p in PRODUCTS.values()
}


def product_named(name: str) -> DataProduct:
    """The data product called `name`; ValueError naming the valid ones otherwise."""
    try:
        return PRODUCTS[name]
    except KeyError:
        raise ValueError(f"unknown data product {name!r}; valid: {', '.join(PRODUCTS)}") from None


def product_for(
    image_type: int, shape: tuple[int, ...] | list[int], bytes_per_pixel: int
) -> DataProduct:
    """The data product of an image's (type, shape, bytes per pixel) (R-DP-2)."""
    key = (int(image_type), *tuple(shape), int(bytes_per_pixel))
    product = _BY_LAYOUT.get(key) if len(shape) == 2 else None
    if product is None:
        try:
            type_name = ImageType(int(image_type)).name
        except ValueError:
            type_name = f"unknown type {int(image_type)}"
        raise ImageError(
            f"no data product has type {type_name}, shape {list(shape)} and "
            f"{bytes_per_pixel} byte(s) per pixel; valid: "
            + ", ".join(
                f"{p.name} ({p.image_type.name} {p.rows}x{p.cols} {p.bytes_per_pixel}B)"
                for p in PRODUCTS.values()
            )
        )
    return product
