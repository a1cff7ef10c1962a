#!/usr/bin/env bash
# The engine's benchmarks: label efficiency on AG News and TREC-6, then scoring speed.
#   scripts/bench_engine.sh [OUT_DIR]        (default runs/bench; ~1 h on 2 CPU cores)
# Needs ../shared/data (AG News, TREC-6). Embeddings are cached in data/embeddings.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench}
py=${PYTHON:-.venv/bin/python}
data=${DATA_DIR:-../shared/data}
export PYTHONPATH=.
mkdir -p "$out"
$py -m backend.al.datasets trec-to-tsv "$data/trec6/train.label" "$out/trec6-pool.tsv"
$py -m backend.al.datasets trec-to-tsv "$data/trec6/test.label" "$out/trec6-test.tsv"
common=(--strategy bald,entropy,margin,random,default --seed-size 20 --batch-size 20 --budget 500 --seeds 5)
$py -m backend.al.simulate --pool "$data/agnews/pool.tsv" --test "$data/agnews/test.tsv" "${common[@]}" \
    --out "$out/agnews" | tee "$out/agnews.log"
$py -m backend.al.simulate --pool "$out/trec6-pool.tsv" --test "$out/trec6-test.tsv" "${common[@]}" \
    --out "$out/trec6" | tee "$out/trec6.log"
[ "${SKIP_SCORING:-0}" = 1 ] || $py scripts/bench_scoring.py --pool "$data/agnews/pool.tsv" | tee "$out/scoring.log"
