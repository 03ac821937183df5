# Two entry points: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv on first use. torch is installed first, from its CPU build,
# and pinned by constraints.txt so that no later install pulls a CUDA build.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format

$(STAMP): pyproject.toml constraints.txt requirements-oracles.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -c constraints.txt -e ".[dev,train,deploy,detection,search]"
	# torchvision and timm are test oracles only; --no-deps keeps their CUDA wheels' needs out
	$(PIP) -c constraints.txt --no-deps -r requirements-oracles.txt
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/mnasnet demo --output report

test: setup
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools

format:
	$(VENV)/bin/ruff format src tests benchmarks tools
	$(VENV)/bin/ruff check --fix src tests benchmarks tools
