# pgcache-admin: `make run` opens the dashboard, `make test` runs every test.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
API_PORT ?= 8000

.PHONY: run test lint api bench setup clean-data help

help:
	@echo "make run    - set up everything and open the dashboard on http://localhost:$(PORT)"
	@echo "make test   - run the whole test suite"
	@echo "make api    - start the admin HTTP API on http://127.0.0.1:$(API_PORT)"
	@echo "make bench  - measure the cache against its baselines (full-scale demo; a few minutes)"
	@echo "make lint   - ruff"

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

setup: $(VENV)/.installed
	$(PY) -m cachelib setup

run: setup
	@$(PY) -m cachelib serve --port $(PORT)

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

api: setup
	$(PY) -m cachelib api --port $(API_PORT)

clean-data:
	-$(PY) -m cachelib db stop
	rm -rf .data

bench: $(VENV)/.installed
	$(PY) bench/run.py
