# panoseti_daq: `make demo` and `make test` work on a fresh machine with only Python 3.
# The Makefile creates .venv and installs the package (with its dev extra) when needed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GEN_DIR := panoseti_daq/_generated
PROTO := schema/daq_data.proto

.PHONY: all setup demo test lint schema schema-check bench soak mutate clean

all: test

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m panoseti_daq.demo

test: $(STAMP) lint schema-check
	$(PY) -m pytest

# ruff (with its ASYNC rules) and mypy (strict on the sans-IO core; see pyproject.toml).
lint: $(STAMP)
	$(PY) -m ruff check --no-cache .
	$(PY) -m ruff format --no-cache --check .
	$(PY) -m mypy

# Regenerate the betterproto2 messages, grpclib stubs and server base from schema/.
schema: $(STAMP)
	$(PY) tools/generate.py $(PROTO) $(GEN_DIR)

# Fail when the committed generated code differs from a fresh generation.
schema-check: $(STAMP)
	$(PY) tools/generate.py --check $(PROTO) $(GEN_DIR)

bench: $(STAMP)
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
