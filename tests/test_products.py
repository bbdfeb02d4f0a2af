"""The data product table (R-DP-1, R-DP-2)."""

from __future__ import annotations

import numpy as np
import pytest

from panoseti_daq import ImageError, ImageType, product_for, product_named
from panoseti_daq.products import PRODUCTS


@pytest.mark.parametrize(
    ("name", "image_type", "shape", "bpp", "dtype"),
    [
        ("img16", ImageType.MOVIE, (32, 32), 2, np.uint16),
        ("img8", ImageType.MOVIE, (32, 32), 1, np.uint8),
        ("ph1024", ImageType.PULSE_HEIGHT, (32, 32), 2, np.int16),
        ("ph256", ImageType.PULSE_HEIGHT, (16, 16), 2, np.int16),
    ],
)
def test_table_matches_spec(name, image_type, shape, bpp, dtype):
    """R-DP-1: the four products with their type, shape, bytes/pixel and parsed dtype."""
    product = product_named(name)
    assert (product.image_type, product.shape, product.bytes_per_pixel) == (image_type, shape, bpp)
    assert product.dtype == np.dtype(dtype)
    assert product_for(image_type, list(shape), bpp) is product


def test_only_four_products():
    """R-DP-1: nothing else is valid."""
    assert set(PRODUCTS) == {"img16", "img8", "ph1024", "ph256"}
    with pytest.raises(ValueError, match="unknown data product 'img32'"):
        product_named("img32")


@pytest.mark.parametrize(
    ("image_type", "shape", "bpp"),
    [
        (ImageType.PULSE_HEIGHT, [32, 32], 1),
        (ImageType.MOVIE, [16, 16], 2),
        (ImageType.UNDEFINED, [32, 32], 2),
        (7, [32, 32], 2),
        (ImageType.MOVIE, [1024], 2),
        (ImageType.MOVIE, [32, 32, 1], 2),
    ],
)
def test_invalid_combinations_name_the_problem(image_type, shape, bpp):
    """R-DP-2: any other (type, shape, bpp) is invalid, with a message naming it."""
    with pytest.raises(ImageError, match="no data product has type"):
        product_for(image_type, shape, bpp)
