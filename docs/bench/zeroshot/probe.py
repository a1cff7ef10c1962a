"""Zero-shot cold start probes (docs/BENCHMARKS.md, "Zero-shot cold start"); run from the repo root:

    nice -n 10 .venv/bin/python docs/bench/zeroshot/probe.py --cache-dir /tmp/simcache > docs/bench/zeroshot/probe.txt

1. per dataset and naming: the pool's mean spread of name similarities, whether the cold start uses
   zero-shot, and the zero-shot accuracy on the test set ("label-name agreement");
2. the first model (20 labels, MLP head) from each seed set: random, clusters (today's cold start),
   zero-shot lanes ordered surest-first (the first version) and the shipped zero-shot order;
3. the first model with the label names added as one labelled example per class.
Data as in the BENCHMARKS section (runs/*.tsv made by `backend.al.datasets`).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from backend.al.datasets import load_tsv  # noqa: E402
from backend.al.learner import ActiveLearner, EngineConfig  # noqa: E402
from backend.al.ranking import cold_start_order, kmeans  # noqa: E402
from backend.al.zeroshot import label_prompt, zero_shot_scores  # noqa: E402

SETS = {"agnews": ("../shared/data/agnews/pool.tsv", "../shared/data/agnews/test.tsv", 3000, 2000),
        "trec6": ("runs/trec6-pool.tsv", "runs/trec6-test.tsv", 0, 0),
        "clinc": ("runs/clinc-pool.tsv", "runs/clinc-test.tsv", 0, 0)}
TREC_WORDS = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human", "LOC": "location",
              "NUM": "number"}


def surest_first(probs, x, seed):
    """The first version's order: coverage, then class lanes surest-first inside each cluster."""
    assign, _ = kmeans(x, 20, torch.Generator().manual_seed(seed))
    n, c = probs.shape
    classes = torch.argsort(-probs.max(0).values, stable=True).tolist()
    taken, order = torch.zeros(n, dtype=torch.bool), []
    for k in classes:
        ranked = torch.argsort(-probs[:, k], stable=True)
        pick = int(ranked[~taken[ranked]][0])
        taken[pick] = True
        order.append(pick)
    pred, conf = probs.argmax(1), probs.max(1).values
    lanes = []
    for k in classes:
        members = [int(i) for i in torch.argsort(-conf, stable=True) if pred[i] == k and not taken[i]]
        groups = {}
        for i in members:
            groups.setdefault(int(assign[i]), []).append(i)
        queues = sorted(groups.values(), key=len, reverse=True)
        lanes.append([q[j] for j in range(len(queues[0])) for q in queues if j < len(q)] if queues else [])
    return order + [lane[j] for j in range(max(map(len, lanes))) for lane in lanes if j < len(lane)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache-dir", default="data/embeddings")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    learner = ActiveLearner(EngineConfig(mode="head"), cache_dir=Path(args.cache_dir))
    for name, (pool_path, test_path, limit_pool, limit_test) in SETS.items():
        texts, labels = load_tsv(pool_path)
        test, test_labels = load_tsv(test_path)
        if limit_pool:
            texts, labels, test, test_labels = texts[:limit_pool], labels[:limit_pool], test[:limit_test], test_labels[:limit_test]
        classes = sorted(set(labels) | set(test_labels))
        gold = torch.tensor([classes.index(y) for y in test_labels])
        x, xt = learner.embed(texts), learner.embed(test)
        namings = {"names": classes, "letters": [chr(65 + i % 26) + str(i // 26 or "") for i in range(len(classes))],
                   "LABEL_k": [f"LABEL_{i}" for i in range(len(classes))]}
        if name == "trec6":
            namings["words"] = [TREC_WORDS[c] for c in classes]
        for naming, names in namings.items():
            scored = learner.score(None, texts, label_names=names)
            used = learner.order(scored, x).probs is not None
            test_probs, _ = zero_shot_scores(xt, learner.embed([label_prompt(n) for n in names]))
            agreement = float((test_probs.argmax(1) == gold).float().mean())
            print(f"1 {name:7} {naming:8} mean spread {float(scored.values.mean()):.4f}  zero-shot used {used!s:5}  "
                  f"test agreement {agreement:.4f}", flush=True)
        probs = learner.score(None, texts, label_names=classes).probs
        prompts = [label_prompt(c) for c in classes]

        def first_model(idx, with_names=False):
            model = learner.fit([texts[i] for i in idx] + (prompts if with_names else []),
                                [labels[i] for i in idx] + (classes if with_names else []), classes)
            return float((learner.predict_proba(model, test).argmax(1) == gold).float().mean())

        results: dict[str, list[float]] = {}
        for seed in range(args.seeds):
            seed_sets = {
                "random": torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:20].tolist(),
                "clusters": cold_start_order(x, 20, seed)[0][:20].tolist(),
                "zero-shot surest-first": surest_first(probs, x, seed)[:20],
                "zero-shot (shipped)": cold_start_order(x, 20, seed, zero_shot=probs)[0][:20].tolist(),
            }
            for arm, idx in seed_sets.items():
                results.setdefault(arm, []).append(first_model(idx))
            results.setdefault("clusters + names as examples", []).append(first_model(seed_sets["clusters"], True))
        for arm, accs in results.items():
            print(f"2 {name:7} first model (20 labels) {arm:30} {sum(accs) / len(accs):.4f}  {[round(a, 4) for a in accs]}",
                  flush=True)


if __name__ == "__main__":
    main()
