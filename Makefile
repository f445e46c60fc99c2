# `make test` and `make demo` work on a fresh machine: they create .venv and install first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo bench bench-search bench-quality clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Two xdist workers, one per core: tests/conftest.py groups the tests (timing-sensitive ones never two at once).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# 12 epochs: the end of the second warm-restart cycle (t0 4, t_mult 2). 12 trials and a 2 x 2 finalize keep the
# demo near 5 minutes on 2 cores; `mmtune sweep` alone runs the space's 24 trials and finalizes 3 x 3.
demo: $(STAMP)
	$(BIN)/mmtune data demo demo_data
	$(BIN)/mmtune data check demo_data
	$(BIN)/mmtune sweep --data demo_data --space search_spaces/default.yaml --name demo --overwrite \
		--num-samples 12 --epochs 12 --finalize-top-k 2 --finalize-seeds 2

bench: $(STAMP)
	$(BIN)/python bench/loop_throughput.py
	$(BIN)/python bench/sweep_overhead.py
	$(BIN)/python bench/faults.py

bench-search: $(STAMP)  # 25-35 minutes on 2 cores
	$(BIN)/python bench/search_efficiency.py --out bench/search_efficiency.json --plot bench/search_efficiency.png \
		--md bench/search_efficiency.md

bench-quality: $(STAMP)  # ~35-40 minutes on 2 cores (estimate); `--smoke` ~3 min, run by the tests
	$(BIN)/python bench/search_quality.py --out bench/search_quality.json --md bench/search_quality.md

clean:
	rm -rf $(VENV) demo_data runs .pytest_cache
