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
	LS_VENV="$(abspath $(LS_VENV))" $(PY) scripts/bench_loop.py --sizes 10000 --rounds 5 --top-k 1000 --no-cleanup --paired-floors
	LS_VENV="$(abspath $(LS_VENV))" $(PY) scripts/bench_loop.py --sizes 50000 --encoder wide-1-layer --rounds 4 --top-k 1000 --no-cleanup --paired-floors
	LS_VENV="$(abspath $(LS_VENV))" $(PY) scripts/bench_webhooks.py
	$(PY) scripts/bench_shards.py  # 1 vs 4 worker processes on a 100k pool (add --size N for less)

$(BENCH_VENV)/.requirements: requirements.txt bench/requirements-bench.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -r requirements.txt
	$(BENCH_VENV)/bin/python -m pip install --no-deps -r bench/requirements-bench.txt
	touch $@

bench-venv: $(BENCH_VENV)/.requirements  ## .bench-venv: the service's requirements plus PyPI baal (benchmarks only)

# bench-baal's curve: the first 1,000 AG News pool / 500 test rows, 20 seed labels + 4 x 20, T = 5, 2 seeds.
BAAL_CURVE ?= --pool $(AGNEWS)/pool.tsv --test $(AGNEWS)/test.tsv --limit-pool 1000 --limit-test 500 \
	--seed-size 20 --batch-size 20 --budget 100 --mc-samples 5 --seeds 2

bench-baal: venv bench-venv  ## the real BaaL beside our full and head modes on CPU, 1 thread each (~1.5 h idle; GPU: bench/baal_gpu.sh)
	OMP_NUM_THREADS=1 nice -n 10 $(BENCH_VENV)/bin/python bench/baal_side_by_side.py speed --pool $(AGNEWS)/pool.tsv \
		--limit 192 --mc-samples 20 --threads 1 --methods baal,baal-longest,full,head --out $(BENCH_OUT)/speed
	OMP_NUM_THREADS=1 nice -n 10 $(BENCH_VENV)/bin/python bench/baal_side_by_side.py curve $(BAAL_CURVE) \
		--epochs 20 --baal-padding longest --threads 1 --name bald/mode=full --out $(BENCH_OUT)/baal
	OMP_NUM_THREADS=1 nice -n 10 $(PY) -m backend.al.simulate $(BAAL_CURVE) --strategy bald/mode=full \
		--cache-dir $(BENCH_OUT)/cache --out $(BENCH_OUT)/ours
	OMP_NUM_THREADS=1 nice -n 10 $(PY) -m backend.al.simulate $(BAAL_CURVE) \
		--strategy bald/mode=head,random/mode=head,bald,default,random \
		--cache-dir $(BENCH_OUT)/cache --out $(BENCH_OUT)/ours-head
	$(PY) scripts/compare_curves.py $(BENCH_OUT)/ours/curves.csv $(BENCH_OUT)/baal/curves.csv --every 20

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis
