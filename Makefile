# sobot-panel: `make run` starts the demo, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	PANEL_DEMO=1 $(PY) -m sobot_panel serve

# Debian's Chromium drives the browser tests (Playwright never downloads a browser here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-noto-cjk; }

test: $(VENV)/.installed-dev chromium
	$(PY) -m pytest -q

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check service tests bench
	$(VENV)/bin/ruff format --check service tests bench
	$(VENV)/bin/mypy --strict service

# The benches reuse the tests' fake customer API (dev extra); matplotlib (bench extra) draws the PNG,
# wrk (when installed: apt-get install wrk) drives the HTTP load, else a Python load generator does.
bench: $(VENV)/.installed-dev
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m bench all

clean:
	rm -rf $(VENV) .panel-data tests/artifacts .pytest_cache .mypy_cache .ruff_cache
