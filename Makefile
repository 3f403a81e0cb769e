# Two commands set up a fresh machine: `make demo` and `make test` (see README).
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export DO_NOT_TRACK := 1
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: setup prepare tools demo demo-handbook production-demo test lint ui serve bench bench-training bench-scorer bench-serving clean

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

# MLP_ENV=production on this machine: Postgres (pgserver), an MLflow tracking server, Redis, Snowflake
# through the fakesnow server, NATS; the whole asset graph on them (slower: about 4 minutes)
production-demo: prepare
	$(VENV)/bin/mlp stack demo

# promtool (Debian package prometheus) for the alert-rule tests; the server the package ships is
# stopped and disabled right after a fresh install (only promtool is wanted). Debian's chromium for
# the reviewer page's browser test (Playwright drives it through executable_path: no browser download).
tools:
	@command -v chromium >/dev/null 2>&1 || { \
	  $(APT_GET) install -y --no-install-recommends chromium \
	    || { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends chromium; }; \
	}
	@command -v promtool >/dev/null 2>&1 || { \
	  $(APT_GET) install -y --no-install-recommends prometheus \
	    || { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends prometheus; } || exit 1; \
	  if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now prometheus; \
	  else $(SUDO) update-rc.d prometheus disable >/dev/null 2>&1; $(SUDO) invoke-rc.d prometheus stop >/dev/null 2>&1; true; fi; \
	}

test: prepare tools
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
