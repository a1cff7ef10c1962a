#!/usr/bin/env bash
# The BaaL side-by-side on a GPU machine (no PyPI there): speed on the whole AG News pool, then
# BaaL's loop and ours (python -m backend.al.simulate) on the same small AG News budget.
#   bash bench/vendor_baal.sh                    # here: baal + structlog into .gpu/site
#   bash bench/baal_gpu.sh OUTDIR                # there (the device runner's $OUT)
# The steps are bounded (140 + 170 + 170 + 80 s) to fit one 600 s device call.
# Needs .gpu/minilm (the encoder, any dtype: loaded as float32) and .gpu/data (../shared/data).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bench/baal_gpu.sh OUTDIR}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
ENC="${ENCODER:-.gpu/minilm}"
DATA="${DATA:-.gpu/data}"
T="${T:-20}"
export PYTHONPATH=".gpu/site${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
"$PY" -c 'import sys, torch, transformers, baal; print(sys.version.split()[0], "torch", torch.__version__,
"transformers", transformers.__version__, "baal", baal.__file__, torch.cuda.get_device_name(0))' | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$OUT/env.txt" 2>&1

echo "== speed: the whole pool, T=$T"
timeout 140 "$PY" bench/baal_side_by_side.py speed --device cuda --encoder "$ENC" \
    --pool "$DATA/agnews/pool.tsv" --limit 10001 --fit-on "$DATA/agnews/test.tsv" --fit-labels 20 --mc-samples "$T" --baal-batch-size 64 \
    --methods baal,baal-longest,full,head --out "$OUT/speed" > "$OUT/speed.log" 2>&1
tail -8 "$OUT/speed.log"

CURVE=(--pool "$DATA/agnews/pool.tsv" --test "$DATA/agnews/test.tsv" --limit-pool 2000 --limit-test 1000
       --seed-size 20 --batch-size 20 --budget 120 --mc-samples "$T")
echo "== curve: ours (simulate), full mode + plain BALD, as BaaL"
timeout 170 "$PY" -m backend.al.simulate "${CURVE[@]}" --seeds 2 --encoder "$ENC" \
    --strategy "bald/mode=full" --cache-dir /tmp/baal-bench-cache --out "$OUT/ours" > "$OUT/ours.log" 2>&1
tail -3 "$OUT/ours.log"
echo "== curve: BaaL's loop"
timeout 170 "$PY" bench/baal_side_by_side.py curve --device cuda --encoder "$ENC" "${CURVE[@]}" --seeds 2 \
    --epochs 20 --baal-batch-size 64 --name bald/mode=full --out "$OUT/baal" > "$OUT/baal.log" 2>&1
grep -E "^  seed|^seed|error" "$OUT/baal.log"
"$PY" scripts/compare_curves.py "$OUT/ours/curves.csv" "$OUT/baal/curves.csv" --every 20 | tee "$OUT/compare.txt"
echo "== curve: ours for context, head mode: plain BALD and random (MODEL_MODE=auto picks full on CUDA: too slow here)"
timeout 80 "$PY" -m backend.al.simulate "${CURVE[@]}" --seeds 2 --encoder "$ENC" \
    --strategy "bald/mode=head,random/mode=head" --cache-dir /tmp/baal-bench-cache --out "$OUT/ours-head" \
    > "$OUT/ours-head.log" 2>&1
tail -6 "$OUT/ours-head.log"
ls -R "$OUT"
