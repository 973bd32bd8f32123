# pgcache-admin: `make run` opens the dashboard, `make test` runs every test.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
API_PORT ?= 8000
STRESS_SECONDS ?= 25

.PHONY: run test stress lint api bench setup screenshots clean-data help

help:
	@echo "make run    - set up everything and open the dashboard on http://localhost:$(PORT)"
	@echo "make test   - run the whole test suite"
	@echo "make stress - hunt stale reads: each maintenance action against readers and writers, $(STRESS_SECONDS) s each per server"
	@echo "make api    - start the admin HTTP API on http://127.0.0.1:$(API_PORT)"
	@echo "make bench  - measure the cache against its baselines (full-scale demo; a few minutes)"
	@echo "make lint   - ruff"
	@echo "make screenshots - retake the README's screenshots from the demo (docs/screenshots/)"

# make run installs what the dashboard, API and CLI need; the test and tooling packages
# (pytest, playwright, schemathesis, hypothesis, ruff) come in for make test / lint only.
$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	@touch $@

setup: $(VENV)/.installed
	$(PY) -m cachelib setup

run: setup
	@$(PY) -m cachelib serve --port $(PORT)

test: $(VENV)/.dev-installed
	$(PY) -m pytest

# The table is printed whether or not the tests pass; the exit status is pytest's.
stress: $(VENV)/.dev-installed
	@rm -f tests/artifacts/stress.json
	@CACHELIB_STRESS_SECONDS=$(STRESS_SECONDS) $(PY) -m pytest tests/test_stress.py; status=$$?; \
	  $(PY) -m tests.test_stress; exit $$status

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .

api: setup
	$(PY) -m cachelib api --port $(API_PORT)

screenshots: setup $(VENV)/.dev-installed
	$(PY) -m tests.screenshots

clean-data:
	-$(PY) -m cachelib db stop
	rm -rf .data

bench: $(VENV)/.installed
	$(PY) bench/run.py
