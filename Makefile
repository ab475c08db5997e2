# Two entry points (README): `make run` sets up and runs the main job, `make test` sets up and
# runs the tests. Both create .venv on first use; torch==2.13.0 (CPU) is installed before
# anything else so that no dependency can pull a CUDA build of torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test wheel-check lint bench

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rmdiag run --out runs/default

test: $(STAMP)
	$(PY) -m ruff check rmdiag evaluators trainers tests benchmarks
	$(PY) -m pytest -q
	bash .ci/wheel_check.sh $(PY)

# the wheel in a fresh venv, run from outside the checkout (.ci/wheel_check.sh); part of `test`
wheel-check: $(STAMP)
	bash .ci/wheel_check.sh $(PY)

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
