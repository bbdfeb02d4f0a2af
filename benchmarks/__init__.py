"""Benchmarks of panoseti_daq: `python -m benchmarks [name ...]` (run by `make bench`).

Each module here that defines `run() -> list[dict]` is one benchmark; the runner prints every
result dict as one JSON line. Benchmarks measure, they do not assert: they are not tests.
"""
