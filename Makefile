# Fresh clone: `make run` serves the embedded stack on :9090; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
LS_VENV ?= .ls-venv
LS_VERSION ?= 1.23.2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: venv dev-venv ls-venv run test lint audit bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.requirements: requirements.txt | $(VENV)/bin/python
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.requirements-dev: requirements-dev.txt $(VENV)/.requirements
	$(PIP) install -r requirements-dev.txt
	touch $@

venv: $(VENV)/.requirements  ## .venv with the service's requirements

dev-venv: $(VENV)/.requirements-dev  ## .venv plus test and lint tools

ls-venv:  ## Label Studio in its own venv (for the e2e tests); skipped if present
	@if [ -x "$(LS_VENV)/bin/label-studio" ]; then \
		echo "$(LS_VENV): label-studio present"; \
	else \
		$(PYTHON) -m venv $(LS_VENV) && \
		$(LS_VENV)/bin/python -m pip install label-studio==$(LS_VERSION); \
	fi

run: venv  ## embedded Redis + worker(s) + web server on $$HOST:$$PORT (default 0.0.0.0:9090)
	$(PY) -m backend

test: dev-venv ls-venv  ## unit, integration and e2e tests
	LS_VENV="$(abspath $(LS_VENV))" $(PY) -m pytest

lint: dev-venv
	$(PY) -m ruff check backend workers tests scripts

audit: dev-venv  ## pip-audit over requirements.txt (needs PyPI's JSON API or OSV; tests/test_dependency_audit.py skips without)
	$(PY) -m pip_audit -r requirements.txt --no-deps --disable-pip --progress-spinner off

bench: dev-venv ls-venv  ## the engine's, the publisher's and the webhook-load benchmarks (see docs/BENCHMARKS.md, docs/RELIABILITY.md)
	PYTHON=$(PY) bash scripts/bench_engine.sh
	LS_VENV="$(abspath $(LS_VENV))" $(PY) scripts/bench_publish.py
	LS_VENV="$(abspath $(LS_VENV))" $(PY) scripts/bench_webhooks.py

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis
