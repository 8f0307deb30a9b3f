# The two set-up commands: `make demo` (the main job) and `make test` (the tests).
# Each creates or updates .venv and installs what it needs. torch is pinned to the
# build that installs offline on the project's CI machines; the code runs on any recent torch.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# pytest processes: each gets its own Prefect test server and moto server; tests of one file stay together
TEST_WORKERS ?= 2

.PHONY: demo test test-fast test-under-load lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	touch $@

# One pip run for everything the tests need (the run set included): each run resolves again.
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.chromium | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)" -e ".[dev,dask]"
	touch $@ $(VENV)/.installed-run

# Debian's Chromium for the browser tests; where it cannot be installed (not root, no apt) those
# tests skip and say why. Never installed by a test.
$(VENV)/.chromium: | $(BIN)/python
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; }; } || \
	  echo "chromium could not be installed: the browser tests will skip"
	touch $@

demo: $(VENV)/.installed-run
	$(BIN)/kbitlaw demo

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

# Everything but the tests marked slow (servers, subprocess training, wheels, browsers).
test-fast: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" --durations=10

# `make test` with two CPU-bound processes beside it, as on a shared CI machine.
test-under-load:
	@bash bench/under_load.sh $(MAKE) test

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

# One table of ratios from interleaved pairs (bench/all.py); `make bench QUICK=1`: under 2 minutes.
bench: $(VENV)/.installed-dev
	$(BIN)/python bench/all.py $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) .kbitlaw
