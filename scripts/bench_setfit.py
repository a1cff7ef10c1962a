"""A SetFit-style learner against the frozen encoder: test accuracy of one fit on random labels.

    .venv/bin/python scripts/bench_setfit.py [--datasets agnews] [--labels 100] [--seeds 0,1,2]
        [--iterations 20] [--test-rows 1000] [--threads 2] [--device auto]

The lead for issue 7's GPU aim (AG News >= 0.88 at 100 labels). For each dataset (``../shared/data``),
labelled-set size and seed, the same draws as ``scripts/bench_full_head.py`` (a seeded random sample
of the test set, then a seeded random labelled set), so its full fine-tunes compare seed by seed:

- ``frozen``: the pretrained encoder's normalised mean-pooled embeddings and the ``linear`` kind's
  logistic regression (class weights, its penalty by the labelled set's shape);
- ``setfit``: the encoder first fine-tuned contrastively on pairs of the labelled texts (Tunstall et
  al. 2022): ``--iterations`` rounds of one same-class and one other-class partner for every text,
  the cosine of the two embeddings regressed on 1 / 0 (mean squared error), batches of 16 pairs, one
  epoch, AdamW at 2e-5 with a 10% linear warm-up and a linear decay; then the same logistic
  regression on the tuned encoder's embeddings.

Prints one JSON line per run, then the means and the mean paired difference (setfit - frozen) with
2 standard errors. No active learning: this measures the learner under the loop.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.al.config import EngineConfig  # noqa: E402
from backend.al.datasets import load_split  # noqa: E402
from backend.al.encoder import mean_pool, pick_device, resolve_encoder  # noqa: E402
from backend.al.kinds.full import tokenizer_for  # noqa: E402
from backend.al.kinds.linear import default_l2  # noqa: E402
from backend.al.logistic import fit_logistic  # noqa: E402
from backend.al.tokens import Tokens, tokenize  # noqa: E402
from backend.al.training import class_weights  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
BATCH, LR, WARMUP = 16, 2e-5, 0.1


def embed(encoder, tokens: Tokens, pad: int) -> torch.Tensor:
    """Normalised mean-pooled embeddings (N, D) on the host, dropout off."""
    encoder.eval()
    with torch.no_grad():
        return torch.cat([F.normalize(mean_pool(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask),
                                      dim=-1).cpu()
                          for ids, mask in (tokens.batch(idx, pad) for idx in torch.arange(len(tokens)).split(64))])


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   classes: int) -> float:
    """The ``linear`` kind's logistic regression on train embeddings, scored on the test ones."""
    targets = F.one_hot(train_y, classes).double()
    w, b, _ = fit_logistic(train_x.double(), targets, False, default_l2(len(train_y), classes),
                           weights=class_weights(targets, False).double())
    return float(((test_x.double() @ w + b).argmax(1) == test_y).double().mean())


def pairs_of(labels: list[int], iterations: int, rng: random.Random) -> list[tuple[int, int, float]]:
    """SetFit's pairs: per iteration, each text with one same-class partner (1.0) and one other (0.0)."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    pairs = []
    for _ in range(iterations):
        for i, y in enumerate(labels):
            pairs.append((i, rng.choice([j for j in by_class[y] if j != i] or [i]), 1.0))
            others = [j for j, z in enumerate(labels) if z != y]
            if others:
                pairs.append((i, rng.choice(others), 0.0))
    rng.shuffle(pairs)
    return pairs


def contrastive_tune(encoder, tokens: Tokens, pad: int, labels: list[int], iterations: int, seed: int) -> int:
    """Fine-tune encoder in place on SetFit's pairs; returns the number of steps."""
    torch.manual_seed(seed)
    pairs = pairs_of(labels, iterations, random.Random(seed))
    steps = -(-len(pairs) // BATCH)
    warmup = max(1, int(WARMUP * steps))
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps))
    device = next(encoder.parameters()).device
    encoder.train()
    for step in range(steps):
        batch = pairs[BATCH * step:BATCH * (step + 1)]
        ids, mask = tokens.batch(torch.tensor([p[0] for p in batch] + [p[1] for p in batch]), pad)
        pooled = mean_pool(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        cosine = F.cosine_similarity(pooled[:len(batch)], pooled[len(batch):])
        loss = F.mse_loss(cosine, torch.tensor([p[2] for p in batch], device=device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="agnews")
    p.add_argument("--labels", default="100")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--test-rows", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--encoder", default=EngineConfig().encoder)
    p.add_argument("--data-dir", default=str(DATA), help="the datasets' folder (../shared/data)")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.test_rows < 1:
        p.error("need --iterations >= 1 and --test-rows >= 1")
    from transformers import AutoModel

    torch.set_num_threads(args.threads)
    device, path = pick_device(args.device), resolve_encoder(args.encoder)
    tokenizer = tokenizer_for(path)
    pad = tokenizer.pad_token_id or 0
    results: dict[tuple[str, int, int], dict[str, float]] = {}
    for name in args.datasets.split(","):
        (pool_texts, pool_labels), (test_texts, test_labels) = load_split(Path(args.data_dir), name)
        classes = sorted(set(pool_labels))
        for n in [int(x) for x in args.labels.split(",")]:
            for seed in [int(x) for x in args.seeds.split(",")]:
                rng = random.Random(1000 + seed)  # bench_full_head.py's draws: its fine-tunes compare
                test = rng.sample(range(len(test_texts)), min(args.test_rows, len(test_texts)))
                rows = rng.sample(range(len(pool_texts)), n)
                train_y = [classes.index(pool_labels[i]) for i in rows]
                test_y = torch.tensor([classes.index(test_labels[i]) for i in test])
                train_tokens = tokenize(tokenizer, [pool_texts[i] for i in rows], 128).to(device)
                test_tokens = tokenize(tokenizer, [test_texts[i] for i in test], 128).to(device)
                encoder = AutoModel.from_pretrained(path, dtype=torch.float32).to(device)
                frozen = probe_accuracy(embed(encoder, train_tokens, pad), torch.tensor(train_y),
                                        embed(encoder, test_tokens, pad), test_y, len(classes))
                start = time.perf_counter()
                steps = contrastive_tune(encoder, train_tokens, pad, train_y, args.iterations, seed)
                seconds = time.perf_counter() - start
                tuned = probe_accuracy(embed(encoder, train_tokens, pad), torch.tensor(train_y),
                                       embed(encoder, test_tokens, pad), test_y, len(classes))
                results[name, n, seed] = {"frozen": frozen, "setfit": tuned}
                print(json.dumps({"dataset": name, "labels": n, "seed": seed, "iterations": args.iterations,
                                  "frozen": round(frozen, 4), "setfit": round(tuned, 4), "steps": steps,
                                  "tune_s": round(seconds, 1), "device": device.type}), flush=True)
    print("\ndataset  labels   frozen   setfit  setfit - frozen (2 s.e.), points")
    for name, n in dict.fromkeys((k[0], k[1]) for k in results):
        runs = [v for k, v in results.items() if k[:2] == (name, n)]
        diffs = [100 * (r["setfit"] - r["frozen"]) for r in runs]
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
        print(f"{name:8} {n:6}  {statistics.mean(r['frozen'] for r in runs):7.3f}  "
              f"{statistics.mean(r['setfit'] for r in runs):7.3f}  {statistics.mean(diffs):+.2f} ({2 * se:.2f}), "
              f"{len(runs)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
