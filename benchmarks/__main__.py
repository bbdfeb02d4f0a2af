"""Run the benchmarks: `python -m benchmarks` runs all, `python -m benchmarks codec` one."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    """Names of the benchmark modules in this package."""
    here = str(Path(__file__).resolve().parent)
    return sorted(
        info.name
        for info in pkgutil.iter_modules([here])
        if not info.ispkg and not info.name.startswith("_")
    )


def rounded(value):
    """Floats to whole numbers from 1000 up, else 4 significant digits, in nested dicts and
    lists: lines people read."""
    if isinstance(value, float):
        return round(value) if abs(value) >= 1000 else float(f"{value:.4g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(names)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}")
    for name in args.names or names:
        module = importlib.import_module(f"{__package__}.{name}")
        run = getattr(module, "run", None)
        if run is None:
            continue
        for result in run():
            print(json.dumps(rounded({"benchmark": name, **result})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
