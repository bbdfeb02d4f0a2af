"""Command-line arguments shared by the examples: which DAQ nodes, and when to stop."""

from __future__ import annotations

import argparse
from pathlib import Path

import panoseti_daq

BUNDLED = Path(panoseti_daq.__file__).parent / "config"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "daq_config", nargs="?", default=str(BUNDLED / "daq_config_grpc_simulate.json")
    )
    parser.add_argument(
        "network_config", nargs="?", default=str(BUNDLED / "network_config_grpc_simulate.json")
    )
    parser.add_argument("--max-frames", type=int, default=20, help="stop after N frames (0: never)")
    parser.add_argument("--no-init", action="store_true", help="do not start the simulation")
    return parser.parse_args()
