"""Synthetic movie-mode data that looks like the sky (no real movie-mode data is bundled).

SYNTHETIC, not observed: a deterministic sequence (from a seed) of 32x32 images of one module:
a per-pixel pedestal, a smooth sky background with Poisson noise, a few hot pixels, and now and
then a point source drifting across the field. Headers carry 4 quabos with consistent packet
counters and White Rabbit times that agree with the host clock (R-TIME-1 d == 0).
Also: 32x32 pulse-height (ph1024) images assembled from four ph256 quabo images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from . import pff
from .frames import PanoFrame
from .products import product_named
from .timestamps import TAI_UTC_OFFSET_S

__all__ = ["ph1024_from_ph256", "synthetic_movie_frames"]

_NS = 1_000_000_000
# 2024-07-25T04:34:52Z, the panoseti_grpc README's example run.
DEFAULT_START_NS = 1_721_882_092_000_000_000


def _header(index: int, t_ns: int, rng: np.random.Generator) -> dict[str, Any]:
    tv_sec, nsec = divmod(t_ns, _NS)
    header = {}
    for quabo in range(4):
        jitter_ns = int(rng.integers(-8, 9))
        # WR time within a few ns of the frame time, in the same second; the host clock a
        # little later (network and DAQ latency) but in the same second, so d == 0 (R-TIME-1).
        header[f"quabo_{quabo}"] = {
            "pkt_num": (30000 + 1000 * quabo + index) % 65536,
            "pkt_tai": (tv_sec + TAI_UTC_OFFSET_S) % 1024,
            "pkt_nsec": min(max(0, nsec + jitter_ns), _NS - 1),
            "tv_sec": tv_sec,
            "tv_usec": min(nsec // 1000 + int(rng.integers(0, 400)), 999_999),
        }
    return header


def synthetic_movie_frames(
    name: str = "img16",
    count: int = 300,
    module_id: int = 1,
    seed: int = 2024,
    start_ns: int = DEFAULT_START_NS,
    frame_interval_ns: int = 100_000_000,
) -> list[PanoFrame]:
    """`count` SYNTHETIC movie frames of product img16 or img8, deterministic from `seed`.

    Frame i is taken at `start_ns + i * frame_interval_ns` (Unix ns); `frame_number` is i and
    `file` a data file name (R-NAME-2) that says it is synthetic.
    """
    product = product_named(name)
    if not product.is_movie:
        raise ValueError(f"{name} is not a movie-mode product")
    if count < 1 or frame_interval_ns < 1:
        raise ValueError("count and frame_interval_ns must be positive")
    rng = np.random.default_rng(seed)
    start = datetime.fromtimestamp(start_ns // _NS, timezone.utc).strftime("%Y-%m-%dT%H_%M_%SZ")
    file = pff.DataFileName(
        product.name, module_id, 0, product.bytes_per_pixel, start, (("synthetic", "sky"),)
    ).format()
    rows, cols = product.shape
    y, x = np.mgrid[0:rows, 0:cols]
    pedestal = rng.normal(180.0, 12.0, product.shape)
    background = 35.0 + 10.0 * (x / cols) + 6.0 * np.sin(y / rows * np.pi)
    hot = rng.choice(rows * cols, size=3, replace=False)
    frames = []
    for index in range(count):
        sky = rng.poisson(background).astype(np.float64)
        phase = index % 120
        if phase < 40:  # a point source drifting across the field, one pass in three
            cx = 2.0 + phase * (cols - 4) / 40.0
            cy = rows * 0.3 + 0.25 * phase
            sky += 900.0 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.9**2))
        image = pedestal + sky
        image.flat[hot] += 2500.0
        if product.bytes_per_pixel == 1:
            image = image / 8.0
        pixels = np.clip(np.rint(image), 0, product.max_bit_pattern).astype(product.dtype)
        t_ns = start_ns + index * frame_interval_ns
        header = _header(index, t_ns, rng)
        frames.append(PanoFrame(product, header, pixels, module_id, file, index))
    return frames


def ph1024_from_ph256(frames: Sequence[PanoFrame], module_id: int | None = None) -> list[PanoFrame]:
    """ph1024 images from ph256 ones: quabos 0-3 as the four 16x16 quadrants of the module.

    Each output image takes the next ph256 frame of each quabo (by `quabo_num`, or by position
    when the header has none); its header holds the four quabo headers as quabo_0..quabo_3.
    """
    product = product_named("ph1024")
    by_quabo: dict[int, list[PanoFrame]] = {0: [], 1: [], 2: [], 3: []}
    for position, frame in enumerate(frames):
        quabo = int(frame.header.get("quabo_num", position % 4)) % 4
        by_quabo[quabo].append(frame)
    count = min(len(v) for v in by_quabo.values())
    out = []
    for index in range(count):
        parts = [by_quabo[q][index] for q in range(4)]
        pixels = np.block([[parts[0].pixels, parts[1].pixels], [parts[2].pixels, parts[3].pixels]])
        header = {f"quabo_{q}": dict(parts[q].header) for q in range(4)}
        module = parts[0].module_id if module_id is None else module_id
        out.append(PanoFrame(product, header, pixels, module, _ph1024_name(parts[0].file), index))
    return out


def _ph1024_name(ph256_file: str) -> str:
    """The ph256 source file's name with dp_ph1024, marked as assembled from ph256."""
    name = pff.DataFileName.parse(ph256_file)
    if name is None:
        return ph256_file
    return replace(name, dp="ph1024", extra=(*name.extra, ("from", "ph256"))).format()
