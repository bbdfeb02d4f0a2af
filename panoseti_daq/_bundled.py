"""Paths of the data files shipped inside the package."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
NGC7331_PH256 = DATA_DIR / "start_2025-08-01T10_22_13Z.dp_ph256.bpp_2.module_254.seqno_0.pff"
NGC7331_MODULE_ID = 254
