"""Tokenizing a pool: the tokenizer's Python wrapper in one call against ``tokens.encode_ids`` on threads.

    .venv/bin/python scripts/bench_tokenize.py                       # AG News, CLINC150, TREC-6 pools
    .venv/bin/python scripts/bench_tokenize.py --threads 1,2 --repeats 5

Each pool of ../shared/data (AG News 10,001, CLINC150 15,000, TREC-6 5,452 texts) with the default
encoder's fast tokenizer, truncated at 128 tokens, unpadded, no cache: the wrapper
(``tokenizer(texts, truncation=True, ...)``, the code before threads) and ``encode_ids`` at each
thread count, the Rust thread pool off in both (``TOKENIZERS_PARALLELISM=false``, as the service).
Prints the best of ``--repeats`` runs in seconds, and checks that every variant gives the wrapper's ids.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.al.datasets import load_split  # noqa: E402
from backend.al.encoder import resolve_encoder  # noqa: E402
from backend.al.tokens import encode_ids, tokenizing_threads  # noqa: E402


def best_of(repeats: int, fn) -> tuple[float, list]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--datasets", default="agnews,clinc150,trec6")
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--threads", default="", help="comma-separated thread counts (default: 1 and this machine's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(args.encoder))
    counts = sorted({int(t) for t in args.threads.split(",") if t} or {1, tokenizing_threads(1 << 30)})
    print(f"cores usable: {tokenizing_threads(1 << 30)}; thread counts: {counts}; best of {args.repeats}")
    for name in args.datasets.split(","):
        texts = load_split(Path(args.data_dir), name)[0][0]
        wrapper, expected = best_of(args.repeats, lambda texts=texts: tokenizer(
            texts, truncation=True, max_length=128, padding=False, return_attention_mask=False,
            return_token_type_ids=False)["input_ids"])
        cells = [f"wrapper {wrapper:.3f} s"]
        for threads in counts:
            seconds, ids = best_of(args.repeats, lambda t=threads, texts=texts: encode_ids(tokenizer, texts, 128,
                                                                                            threads=t))
            if ids != expected:
                raise SystemExit(f"{name}: encode_ids on {threads} threads gave other ids than the wrapper")
            cells.append(f"{threads} thread{'s' if threads > 1 else ''} {seconds:.3f} s")
        print(f"{name} ({len(texts):,} texts, {sum(map(len, expected)):,} tokens): " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
