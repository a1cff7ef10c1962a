"""GPU benchmark of full mode and the plain floor (issue 14), one table from one run.

    python scripts/bench_gpu.py --encoder .gpu/minilm --pool .gpu/data/agnews/pool.tsv --out $OUT
    .venv/bin/python scripts/bench_gpu.py --limit 300 --out /tmp/bench-gpu   # slowly, on a CPU

Measures on the machine's device (CUDA when present), in this order, each step once warm
(a first untimed run loads weights, fills the token cache and warms the kernels):
- tokenize once: the fast tokenizer over the pool (truncation, no padding);
- plain pass: ``TextEncoder.encode`` (tokenize + length-sorted token-budget batches) fp32 and bf16;
- fine-tune on ``--labels`` labels (full mode, the first labels of the pool file), first and warm,
  eager and with each step replayed from a CUDA graph (``Kind.graph_steps``; eager off CUDA);
- token ids of the pool: tokenized into the cache, then read back by a new learner;
- full-mode MC over the pool (token ids already cached, as in a warm worker),
  T = ``--mc-samples``: fp32 (MC_LAYERS = all, 2, 1), bf16 autocast over fp32 weights, and a
  bf16 copy of the weights (MC_LAYERS = all, 1; ``Kind.half_weights``),
  with each variant's top-1000 (or top-10%) BALD agreement with fp32 full MC at seed 0: at
  the same seed and at seed 1, beside fp32's own seed-1-vs-seed-0 agreement (the criterion);
- a whole round: fine-tune + score + rank (no publishing), bf16 full MC (autocast, then bf16 weights,
  then bf16 weights with CUDA graph steps);
- head mode: a cold re-score (empty embedding cache, encoder loaded) and warm re-scores (same
  learner; a new learner reading the disk cache).
Writes ``<out>/bench_gpu.json`` and ``<out>/bench_gpu.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.al.acquisition import bald  # noqa: E402
from backend.al.config import EngineConfig  # noqa: E402
from backend.al.datasets import load_tsv  # noqa: E402
from backend.al.encoder import TextEncoder, bf16_supported, pick_device, resolve_encoder  # noqa: E402
from backend.al.kinds.full import agreement_top, tokenizer_for, top_agreement  # noqa: E402
from backend.al.learner import ActiveLearner  # noqa: E402
from backend.al.tokens import budget_batches, token_budget, tokenize  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


class Rows(list):
    """The table's rows, each printed as it comes (a run cut short still shows what it measured)."""

    def append(self, row: dict) -> None:
        super().append(row)
        print(json.dumps(row), flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=str(ROOT.parent / "shared" / "data" / "agnews" / "pool.tsv"))
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--out", default=None, help="folder for bench_gpu.json and bench_gpu.md")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N pool texts (0 = all)")
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-head", action="store_true", help="leave out the head-mode rows")
    args = parser.parse_args(argv)
    if args.limit < 0 or args.labels < 2 or args.mc_samples < 1:
        parser.error("need --limit >= 0, --labels >= 2 and --mc-samples >= 1")
    return args


def full_learner(args, cache: Path, layers: int, bf16: bool, half_weights: bool = False) -> ActiveLearner:
    learner = ActiveLearner(EngineConfig(encoder=args.encoder, mode="full", strategy="bald", mc_samples=args.mc_samples,
                                         mc_layers=layers, device=args.device, exploration=0.0), cache)
    learner.kind().bf16 = bf16
    learner.kind().half_weights = half_weights
    return learner


# (name, bf16, bf16 weights, MC_LAYERS): fp32 every layer first (the reference and the token-cache rows)
MC_VARIANTS = (("fp32", False, False, 0), ("fp32", False, False, 2), ("fp32", False, False, 1),
               ("bf16 autocast", True, False, 0), ("bf16 weights", True, True, 0), ("bf16 weights", True, True, 1))


def bench_floor(args, texts: list[str], device: torch.device, rows: list[dict]) -> None:
    tok = tokenizer_for(resolve_encoder(args.encoder))
    tokenize(tok, texts[:64], 128)
    seconds, tokens = timed(device, lambda: tokenize(tok, texts, 128))
    batches = budget_batches(tokens.lengths, token_budget(device))
    rows.append({"step": "tokenize once (fast tokenizer on a thread a core, TOKENIZERS_PARALLELISM=false: the service)",
                 "seconds": seconds, "note": f"{sum(tokens.lengths):,} tokens, {len(batches)} plain batches"})
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    seconds, _ = timed(device, lambda: tokenize(tok, texts, 128))
    rows.append({"step": "tokenize once, TOKENIZERS_PARALLELISM=true", "seconds": seconds})
    os.environ["TOKENIZERS_PARALLELISM"] = before or "false"
    for bf16 in (False, True):
        encoder = TextEncoder(args.encoder, device, bf16=bf16)
        encoder.encode(texts[:256])
        seconds, _ = timed(device, lambda enc=encoder: enc.encode(texts))
        native = bf16 and bf16_supported(device)
        rows.append({"step": f"plain encoder pass {'bf16' if bf16 else 'fp32'} (tokenize + sorted pass)",
                     "seconds": seconds, "note": "" if native or not bf16 else "no native bf16: ran fp32"})
        del encoder


def bench_full(args, texts, labels, classes, device, cache: Path, rows: list[dict]) -> None:
    n_labels = min(args.labels, len(texts) // 2)
    reference = full_learner(args, cache, 0, bf16=False)
    seconds, model = timed(device, lambda: reference.fit(texts[:n_labels], labels[:n_labels], classes))
    rows.append({"step": f"fine-tune {n_labels} labels fp32 (first: network load)", "seconds": seconds})
    seconds, model = timed(device, lambda: reference.fit(texts[:n_labels], labels[:n_labels], classes))
    rows.append({"step": f"fine-tune {n_labels} labels fp32 (warm)", "seconds": seconds})
    fast = full_learner(args, cache, 0, bf16=True)
    fast.fit(texts[:n_labels], labels[:n_labels], classes)
    seconds, model = timed(device, lambda: fast.fit(texts[:n_labels], labels[:n_labels], classes))
    rows.append({"step": f"fine-tune {n_labels} labels, bf16 autocast (warm)", "seconds": seconds,
                 "note": f"{model.stats.get('steps')} steps of 16"})
    graphed = full_learner(args, cache, 0, bf16=False)
    graphed.kind().graph_steps = True
    for when in ("first", "warm"):  # graphs are captured per fit: both rows include the captures
        seconds, fitted = timed(device, lambda: graphed.fit(texts[:n_labels], labels[:n_labels], classes))
        rows.append({"step": f"fine-tune {n_labels} labels fp32, CUDA graph steps ({when})", "seconds": seconds,
                     "note": f"{fitted.stats.get('steps')} steps, {fitted.stats.get('graphs', 0)} graphs captured"})
    values = {}
    top = agreement_top(len(texts))
    reference = MC_VARIANTS[0]
    for number, variant in enumerate(MC_VARIANTS):
        precision, bf16, half, layers = variant
        learner = full_learner(args, cache, layers, bf16, half)
        learner.mc_probs(model, texts[:512], seed=0)  # loads the network, warms the kernels
        seconds, _ = timed(device, lambda lr=learner: lr.kind().tokens(texts))  # ids cached: a warm worker
        if number < 2:
            rows.append({"step": f"token ids of the pool: {'tokenize into' if number == 0 else 'read from'} "
                                 f"the disk cache ({'first' if number == 0 else 'new'} learner)", "seconds": seconds})
        seconds, probs = timed(device, lambda lr=learner: lr.mc_probs(model, texts, seed=0))
        values[variant, 0] = bald(probs)
        finite = bool(torch.isfinite(probs).all())
        values[variant, 1] = bald(learner.mc_probs(model, texts, seed=1))
        name = f"full MC T={args.mc_samples} {precision} MC_LAYERS={layers or 'all'}"
        rows.append({"step": name, "seconds": seconds, "finite": finite,
                     "agree_same_seed": top_agreement(values[variant, 0], values[reference, 0], top),
                     "agree_other_seed": top_agreement(values[variant, 1], values[reference, 0], top)})
    own = top_agreement(values[reference, 1], values[reference, 0], top)
    rows.append({"step": f"fp32 full MC seed-to-seed (top {top})", "agree_other_seed": own})
    for row in rows:
        if "agree_other_seed" in row and row is not rows[-1]:
            row["criterion"] = "pass" if row["agree_other_seed"] >= own - 0.02 else "FAIL"
    for half, graphs in ((False, False), (True, False), (True, True)):
        learner = full_learner(args, cache, 0, bf16=True, half_weights=half)
        learner.kind().graph_steps = graphs
        learner.rank(model, texts[:512])

        def round_(lr=learner) -> None:
            fresh = lr.fit(texts[:n_labels], labels[:n_labels], classes)
            lr.rank(fresh, texts)

        seconds, _ = timed(device, round_)
        rows.append({"step": f"whole round: fine-tune {n_labels} + score + rank {len(texts)} "
                             f"(bf16 {'weights' if half else 'autocast'}, MC_LAYERS=all"
                             f"{', CUDA graph steps' if graphs else ''})", "seconds": seconds})


def bench_head(args, texts, labels, classes, device, rows: list[dict]) -> None:
    n_labels = min(args.labels, len(texts) // 2)
    config = EngineConfig(encoder=args.encoder, mode="head", mc_samples=args.mc_samples, device=args.device)
    with tempfile.TemporaryDirectory() as train_cache, tempfile.TemporaryDirectory() as cache:
        model = ActiveLearner(config, Path(train_cache)).fit(texts[:n_labels], labels[:n_labels], classes)
        learner = ActiveLearner(config, Path(cache))
        learner.encoder  # noqa: B018 - loads the encoder: a worker's one-time cost, not the re-score's
        seconds, _ = timed(device, lambda: learner.rank(model, texts))
        rows.append({"step": "head mode cold re-score (tokenize + encode + cache + MC + rank)", "seconds": seconds})
        seconds, _ = timed(device, lambda: learner.rank(model, texts))
        rows.append({"step": "head mode warm re-score (same learner)", "seconds": seconds})
        other = ActiveLearner(config, Path(cache))
        seconds, _ = timed(device, lambda: other.rank(model, texts))
        rows.append({"step": "head mode warm re-score (new learner, disk cache)", "seconds": seconds})


def _cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if row.get(key) is not None else ""


def table(rows: list[dict]) -> str:
    lines = ["| step | seconds | top agreement, same seed | top agreement, seed 1 | criterion |",
             "|---|---|---|---|---|"]
    for row in rows:
        step = row["step"] + (f" ({row['note']})" if row.get("note") else "")
        if row.get("finite") is False:
            step += " NON-FINITE PROBABILITIES"
        lines.append(f"| {step} | {_cell(row, 'seconds', '.3f')} | {_cell(row, 'agree_same_seed', '.3f')} | "
                     f"{_cell(row, 'agree_other_seed', '.3f')} | {row.get('criterion', '')} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    texts, labels = load_tsv(args.pool)
    if args.limit:
        texts, labels = texts[:args.limit], labels[:args.limit]
    classes = sorted(set(labels))
    device = pick_device(args.device)
    torch.manual_seed(0)
    rows: list[dict] = Rows()
    started = time.perf_counter()
    bench_floor(args, texts, device, rows)
    with tempfile.TemporaryDirectory() as cache:
        bench_full(args, texts, labels, classes, device, Path(cache), rows)
    if not args.skip_head:
        bench_head(args, texts, labels, classes, device, rows)
    info = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or "cpu", "torch": torch.__version__, "pool": args.pool, "texts": len(texts),
            "mc_samples": args.mc_samples, "encoder": args.encoder, "total_seconds": time.perf_counter() - started}
    import transformers

    info["transformers"] = transformers.__version__
    text = f"{json.dumps(info)}\n\n{table(rows)}"
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_gpu.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
        (out / "bench_gpu.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
