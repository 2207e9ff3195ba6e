# One way to set up and run, on a CPU laptop or a GPU box.
# torch is installed first and pinned: on a CPU-only machine a bare range would pull a multi-GB CUDA build.
# GPU users: `make venv TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"` or similar.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
CONFIG ?= experiments/configs/default.yaml

.PHONY: venv search smoke test test-fast lint clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

search: venv  ## run the main job (the embedded synthetic task, CPU-friendly)
	$(PY) experiments/search.py --config $(CONFIG)

smoke: venv
	$(PY) experiments/search.py --config experiments/configs/smoke.yaml

FAST := -m "not slow and not cluster" --durations=15 --timeout=300
SLOW := -m "(slow or cluster) and not isolated" --durations=15 --timeout=1800
ISOLATED := -m isolated --durations=5 --timeout=1800

# The whole suite: lint, the fast tests (no Ray at all), the slow and cluster tests (one shared cluster), then the
# tests that start a Ray cluster of their own (autoscaling, token auth), in a session of their own: one Ray at a time.
test: venv
	$(PY) -m ruff check .
	ADL_TESTS_NO_RAY=1 $(PY) -m pytest -q $(FAST)
	$(PY) -m pytest -q $(SLOW)
	$(PY) -m pytest -q $(ISOLATED)

test-fast: venv  ## the fast tests only; starts no Ray (the run fails if anything does)
	ADL_TESTS_NO_RAY=1 $(PY) -m pytest -q $(FAST)

lint: venv
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) results .pytest_cache
