# Two commands set up a fresh machine: `make demo` and `make test` (see README).
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export DO_NOT_TRACK := 1
export DBT_SEND_ANONYMOUS_USAGE_STATS := false

.PHONY: setup prepare demo demo-handbook test lint ui serve bench bench-training bench-scorer bench-serving clean

$(VENV)/.synced: pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	$(PYTHON) -m uv sync --frozen --python $(PYTHON)
	@touch $@

setup: $(VENV)/.synced

prepare: setup
	$(VENV)/bin/mlp prepare

demo: prepare
	$(VENV)/bin/mlp demo

demo-handbook: prepare
	$(VENV)/bin/mlp demo --source handbook

test: prepare
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check .

ui: prepare
	$(VENV)/bin/mlp ui

serve: prepare
	$(VENV)/bin/mlp serve

bench: prepare
	$(VENV)/bin/python bench/bench_features.py

bench-training: prepare
	$(VENV)/bin/python bench/bench_training.py

bench-scorer: prepare
	$(VENV)/bin/python bench/bench_scorer.py

bench-serving: prepare   # uses wrk (Debian package) when installed, else its own asyncio client
	$(VENV)/bin/python bench/bench_serving.py

clean:
	rm -rf data dbt_project/target dbt_project/logs
