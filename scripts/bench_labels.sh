#!/usr/bin/env bash
# Labels saved, in parallel: one simulation process per (dataset, strategy), then one summary per dataset.
#   scripts/bench_labels.sh OUT_DIR "STRATEGY STRATEGY ..." [DATASET ...]
# DATASET: agnews, trec6, clinc150 (default: all three). Environment: PYTHON, DATA_DIR (../shared/data),
# ENCODER (the packaged MiniLM), SEEDS (5), FIRST_SEED (0), BUDGET (500), NOISE (0), JOBS (parallel processes, nproc),
# CACHE (OUT_DIR/embeddings). Pool and test texts are embedded first, one dataset at a time (on a GPU
# when there is one); the simulations then run on the CPU, one thread each (CUDA hidden), so their
# numbers are the CPU engine's whatever machine runs them. Strategies with 'random' in the list get
# the summary (ratio = labels random needs for its final accuracy / labels the strategy needs).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/bench_labels.sh OUT_DIR "STRATEGIES" [DATASET ...]}
strategies=${2:?give a space-separated list of strategies}
shift 2
datasets=("$@")
[ ${#datasets[@]} -gt 0 ] || datasets=(agnews trec6 clinc150)
py=${PYTHON:-.venv/bin/python}
data=${DATA_DIR:-../shared/data}
encoder=${ENCODER:-all-MiniLM-L6-v2}
cache=${CACHE:-$out/embeddings}
export PYTHONPATH=.
mkdir -p "$out"
for ds in "${datasets[@]}"; do
    if [ "$ds" = trec6 ]; then
        $py -m backend.al.datasets trec-to-tsv "$data/trec6/train.label" "$out/trec6-pool.tsv"
        $py -m backend.al.datasets trec-to-tsv "$data/trec6/test.label" "$out/trec6-test.tsv"
        echo "$out/trec6-pool.tsv $out/trec6-test.tsv" >"$out/$ds.files"
    else
        echo "$data/$ds/pool.tsv $data/$ds/test.tsv" >"$out/$ds.files"
    fi
    read -r pool test <"$out/$ds.files"
    $py -m backend.al.simulate --pool "$pool" --test "$test" --strategy random --budget 20 --seeds 1 \
        --encoder "$encoder" --cache-dir "$cache" --out "$out/$ds/.embed" >/dev/null
done
jobs_file="$out/jobs.txt"
: >"$jobs_file"
for ds in "${datasets[@]}"; do
    for s in $strategies; do
        echo "$ds $s" >>"$jobs_file"
    done
done
run_one() {
    local ds=$1 s=$2
    local pool test dir
    read -r pool test <"$out/$ds.files"
    dir="$out/$ds/$(echo "$s" | tr '/=' '_-')"
    CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $py -m backend.al.simulate --pool "$pool" \
        --test "$test" --strategy "$s" --seed-size 20 --batch-size 20 --budget "${BUDGET:-500}" \
        --seeds "${SEEDS:-5}" --first-seed "${FIRST_SEED:-0}" --label-noise "${NOISE:-0}" --encoder "$encoder" --cache-dir "$cache" \
        --out "$dir" >"$dir.log" 2>&1 && echo "done $ds $s" || echo "FAILED $ds $s (see $dir.log)"
}
export -f run_one
export out py encoder cache
mkdir -p "${datasets[@]/#/$out/}"
xargs -P "${JOBS:-$(nproc)}" -L 1 bash -c 'run_one "$0" "$1"' <"$jobs_file"
for ds in "${datasets[@]}"; do
    echo "== $ds"
    $py scripts/summarize_curves.py "$out/$ds"/*/curves.csv --out "$out/$ds-curves.csv" || true
done
