#!/usr/bin/env bash
# The engine's benchmarks: label efficiency on AG News, TREC-6 and CLINC150 against random and the
# plain reference loop (logistic regression + margin, top-k), then on five data sets of other shapes
# (scripts/make_shapes.py), then scoring and tokenizing speed.
#   scripts/bench_engine.sh [OUT_DIR]        (default runs/bench; several hours on 2 CPU cores:
#   scripts/bench_labels.sh runs the same simulations in parallel, one process per strategy)
# Needs ../shared/data (AG News, TREC-6, CLINC150). Embeddings are cached in data/embeddings.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench}
py=${PYTHON:-.venv/bin/python}
data=${DATA_DIR:-../shared/data}
export PYTHONPATH=.
mkdir -p "$out"
$py -m backend.al.datasets trec-to-tsv "$data/trec6/train.label" "$out/trec6-pool.tsv"
$py -m backend.al.datasets trec-to-tsv "$data/trec6/test.label" "$out/trec6-test.tsv"
common=(--strategy reference,default/mode=head,bald,entropy,margin,random,default --seed-size 20 --batch-size 20
        --budget 500 --seeds 5)
$py -m backend.al.simulate --pool "$data/agnews/pool.tsv" --test "$data/agnews/test.tsv" "${common[@]}" \
    --out "$out/agnews" | tee "$out/agnews.log"
$py -m backend.al.simulate --pool "$out/trec6-pool.tsv" --test "$out/trec6-test.tsv" "${common[@]}" \
    --out "$out/trec6" | tee "$out/trec6.log"
$py -m backend.al.simulate --pool "$data/clinc150/pool.tsv" --test "$data/clinc150/test.tsv" "${common[@]}" \
    --out "$out/clinc150" | tee "$out/clinc150.log"
# other shapes than the three above (scripts/make_shapes.py): the default against random and the reference
$py scripts/make_shapes.py "$out/shapes-data"
for shape in binary rare long trec50 clinc30; do
    $py -m backend.al.simulate --pool "$out/shapes-data/$shape/pool.tsv" --test "$out/shapes-data/$shape/test.tsv" \
        --strategy reference,random,default --seed-size 20 --batch-size 20 --budget 300 --seeds 3 \
        --out "$out/shapes/$shape" | tee "$out/shapes-$shape.log"
done
[ "${SKIP_SCORING:-0}" = 1 ] || $py scripts/bench_scoring.py --pool "$data/agnews/pool.tsv" | tee "$out/scoring.log"
$py scripts/bench_tokenize.py --data-dir "$data" | tee "$out/tokenize.log"
