# One command each: `make demo` runs backshift end to end on a sample tree, `make test` runs
# the whole suite. Both create .venv and install what they need, system packages included.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: all venv legacy-venv sysdeps test test-fast lint demo bench bench-memory bench-peers docs clean bytecode

all: test

$(STAMP): pyproject.toml | sysdeps
	@$(PY) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed: installing python3-venv"; \
	  SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3-venv >/dev/null; \
	  $(PY) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install -q -e '.[test,mount]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import apsw, xxhash, click, tabulate, pyfastcdc, zstandard, pytest, pyfuse3, trio"
	@$(MAKE) -s bytecode
	@touch $(STAMP)

# Byte-compile the package as a wheel install does. An editable install leaves that to the
# first import, which an environment with PYTHONDONTWRITEBYTECODE=1 never does: then every
# command compiles cli.py, catalog.py, ... again (10-20 ms of each start). Stale files are
# harmless: Python checks each against its source and recompiles in memory.
bytecode:
	@$(BIN)/python -m compileall -q backshift >/dev/null

venv: $(STAMP)

# The original backshift 1.62, for import-legacy's end-to-end tests: its own venv, because
# its distribution is also named "backshift" and it installs generic top-level modules.
LEGACY_VENV := .venv-legacy
$(LEGACY_VENV)/bin/backshift:
	$(PY) -m venv $(LEGACY_VENV)
	$(LEGACY_VENV)/bin/python -m pip install -q backshift==1.62 2>&1 | grep -v "^WARNING: Location" || true
	@test -x $@

.venv-legacy: $(LEGACY_VENV)/bin/backshift

legacy-venv: .venv-legacy

sysdeps:
	@sh tools/ensure-sysdeps.sh

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) sysdeps lint .venv-legacy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) sysdeps
	$(BIN)/python -m pytest -m "not slow" -x -q $(PYTEST_ARGS)

demo: $(STAMP) sysdeps
	@sh tools/demo.sh

bench: $(STAMP) sysdeps bytecode
	$(BIN)/python -m bench $(BENCH_ARGS)

# Peak RSS of check --read-data and expire on a 1M-file catalog (bench/memory.py; its
# repository is built once into bench/cache/, ~4 minutes and ~4 GB)
bench-memory: $(STAMP) bytecode
	$(BIN)/python -m bench.memory

bench-peers: $(STAMP)
	@sh tools/install-peers.sh

clean:
	rm -rf $(VENV) $(LEGACY_VENV) build *.egg-info demo-work .pytest_cache
