# Fresh clone: `make run` serves the embedded stack on :9090; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
LS_VENV ?= .ls-venv
LS_VERSION ?= 1.23.2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

BENCH_VENV ?= .bench-venv
BENCH_OUT ?= runs/bench-baal
AGNEWS ?= ../shared/data/agnews

.PHONY: venv dev-venv ls-venv bench-venv run test lint audit bench bench-baal clean

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
	$(PY) -m ruff check backend workers tests scripts bench

audit: dev-venv  ## pip-audit over requirements.txt (needs PyPI's JSON API or OSV; tests/test_dependency_audit.py skips without)
	$(PY) -m pip_audit -r requirements.txt --no-deps --disable-pip --progress-spinner off

bench: dev-venv ls-venv  ## the engine's, the publisher's and the webhook-load benchmarks (see docs/BENCHMARKS.md, docs/RELIABILITY.md; BaaL beside ours: make bench-baal)
	PYTHON=$(PY) bash scripts/bench_engine.sh
	LS_VENV="$(abspath $(LS_VENV))" $(PY) scripts/bench_publish.py
	LS_VENV="$(abspath $(LS_VENV))" $(PY) scripts/bench_loop.py --sizes 10000
	LS_VENV="$(abspath $(LS_VENV))" $(PY) scripts/bench_loop.py --sizes 50000 --encoder wide-1-layer --rounds 1 --no-cleanup
	LS_VENV="$(abspath $(LS_VENV))" $(PY) scripts/bench_webhooks.py
	$(PY) scripts/bench_shards.py  # 1 vs 4 worker processes on a 100k pool (add --size N for less)

$(BENCH_VENV)/.requirements: requirements.txt bench/requirements-bench.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -r requirements.txt
	$(BENCH_VENV)/bin/python -m pip install --no-deps -r bench/requirements-bench.txt
	touch $@

bench-venv: $(BENCH_VENV)/.requirements  ## .bench-venv: the service's requirements plus PyPI baal (benchmarks only)

bench-baal: venv bench-venv  ## the real BaaL beside our full and head modes, small, on CPU (GPU: bench/baal_gpu.sh)
	nice -n 10 $(BENCH_VENV)/bin/python bench/baal_side_by_side.py speed --pool $(AGNEWS)/pool.tsv \
		--limit 48 --mc-samples 20 --full-unfitted --out $(BENCH_OUT)/speed
	nice -n 10 $(BENCH_VENV)/bin/python bench/baal_side_by_side.py curve --pool $(AGNEWS)/pool.tsv \
		--test $(AGNEWS)/test.tsv --limit-pool 100 --limit-test 100 --seed-size 10 --batch-size 10 --budget 30 \
		--mc-samples 3 --epochs 3 --baal-padding longest --name bald/mode=full --out $(BENCH_OUT)/baal
	nice -n 10 $(PY) -m backend.al.simulate --pool $(AGNEWS)/pool.tsv --test $(AGNEWS)/test.tsv \
		--limit-pool 100 --limit-test 100 --seed-size 10 --batch-size 10 --budget 30 --mc-samples 3 --seeds 1 \
		--strategy bald/mode=full --cache-dir $(BENCH_OUT)/cache --out $(BENCH_OUT)/ours
	$(PY) scripts/compare_curves.py $(BENCH_OUT)/ours/curves.csv $(BENCH_OUT)/baal/curves.csv --every 10

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis
