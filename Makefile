# panoseti_daq: `make demo` and `make test` work on a fresh machine with only Python 3.
# The Makefile creates .venv and installs the package (with its dev extra) when needed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GEN_DIR := panoseti_daq/_generated
PROTO := schema/daq_data.proto schema/ublox_control.proto

.PHONY: all setup demo demo-ublox test lint schema schema-check bench bench-full soak mutate clean

all: test

# The first run installs for a minute or two, quietly: say so, and what is being installed.
$(STAMP): pyproject.toml
	@echo "panoseti_daq: setting up $(VENV) (once; this takes a minute or two)"
	@test -x $(PY) || { echo "  [1/3] creating the virtual environment $(VENV) with $(PYTHON)"; \
		$(PYTHON) -m venv $(VENV); }
	@echo "  [2/3] upgrading pip"
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "  [3/3] installing panoseti_daq and its dependencies: grpclib, betterproto2,"
	@echo "        trio, numpy, pandas, matplotlib, rich, and for the tests pytest,"
	@echo "        hypothesis, grpcio, ruff and mypy"
	@$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)
	@echo "panoseti_daq: installed. The commands are in $(VENV)/bin: run them as"
	@echo "  $(VENV)/bin/panoseti-daq ...  or activate first:  . $(VENV)/bin/activate"

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m panoseti_daq.demo

# A simulated ZED-F9T, a server that owns it, InitF9t and a live capture (docs/ublox.md).
demo-ublox: $(STAMP)
	$(PY) -m panoseti_daq.ublox.demo

test: $(STAMP) lint schema-check
	$(PY) -m pytest

# ruff (with its ASYNC rules) and mypy (strict on the sans-IO core; see pyproject.toml).
lint: $(STAMP)
	$(PY) -m ruff check --no-cache .
	$(PY) -m ruff format --no-cache --check .
	$(PY) -m mypy

# Regenerate the betterproto2 messages and descriptors from schema/.
schema: $(STAMP)
	$(PY) tools/generate.py $(PROTO) $(GEN_DIR)

# Fail when the committed generated code differs from a fresh generation.
schema-check: $(STAMP)
	$(PY) tools/generate.py --check $(PROTO) $(GEN_DIR)

# Within 5 minutes: the codec, and server CPU per frame at 3,000 img16/s (relay and Hashpipe
# socket) as ratios to the grpcio reference relay, measured side by side (docs/performance.md);
# healthy viewers beside a hostile peer (docs/limits.md).
bench: $(STAMP)
	$(PY) -m benchmarks codec cpu hostile_load

# Every benchmark, the long end-to-end scenarios included (about half an hour).
bench-full: $(STAMP)
	$(PY) -m benchmarks

# Not in CI: 10 minutes of load, printing the server's memory, descriptors and threads; then
# 2 + 2 minutes of healthy viewers without and with a hostile peer (benchmarks/hostile_load.py).
soak: $(STAMP)
	$(PY) -m benchmarks.soak --minutes 10 --rate 5000
	$(PY) -m benchmarks.hostile_load --seconds 120

# Not in CI: mutation testing of the server's rule modules and the codec ([tool.mutmut] in
# pyproject.toml); prints the score and every surviving mutant.
mutate: $(STAMP)
	$(PY) tools/mutate.py 'panoseti_daq.server*'
	$(PY) tools/mutate.py --codec

clean:
	rm -rf mutants $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis build *.egg-info
