"""Paths of the data files shipped inside the package (panoseti_daq/data/)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
# The simulation's and the demo's configuration files (server, hp_io, daq_config, network).
BUNDLED_CONFIG_DIR = DATA_DIR / "config"
# Real on-sky pulse-height frames (NGC 7331), replayed by the simulation.
NGC7331_PH256 = DATA_DIR / "start_2025-08-01T10_22_13Z.dp_ph256.bpp_2.module_254.seqno_0.pff"
NGC7331_MODULE_ID = 254
