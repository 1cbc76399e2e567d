# Two commands do all set-up on a fresh machine:
#   make study   -- creates .venv if missing, installs scg, runs the main job
#   make test    -- creates .venv if missing, installs scg + test deps, runs `make check`, then the tests
#   make check   -- lint (ruff check), formatting (ruff format --check) and types (mypy on scg/)
#   make gpu     -- on a CUDA machine: CUDA tests, every study, the benchmarks, one report in runs/gpu
#                   (without CUDA: the same pipeline at smoke size on the CPU, and the report says so)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: study check test gpu install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

study: $(STAMP)
	$(BIN)/scg-study compare --out runs/compare

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: check
	$(BIN)/python -m pytest -q -p no:cacheprovider

gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu.py --out runs/gpu

clean:
	rm -rf $(VENV) runs
