"""Labelled text files for simulations and benchmarks.

The simulation reads ``text<TAB>label`` TSV without a header. TREC's ``.label`` files
(``COARSE:fine question text`` per line, latin-1) convert with::

    python -m backend.al.datasets trec-to-tsv ../shared/data/trec6/train.label runs/trec6/pool.tsv

A file sorted by class (CLINC150's) needs a random sample rather than its first rows::

    python -m backend.al.datasets sample ../shared/data/clinc150/pool.tsv runs/clinc/pool.tsv --rows 3000
"""

from __future__ import annotations

import argparse
import html
import random
import re
import sys
from pathlib import Path

_AGNEWS_ESCAPES = re.compile(r" #(\d+);")


def clean_text(text: str) -> str:
    """Undo the corpus's HTML-ish escapes (' #39;' -> "'", backslash line breaks)."""
    text = _AGNEWS_ESCAPES.sub(lambda m: html.unescape(f"&#{m.group(1)};"), text)
    return html.unescape(text.replace("\\", " ")).strip()


def load_tsv(path: str | Path) -> tuple[list[str], list[str]]:
    """(texts, labels) from a text<TAB>label file; raises ValueError naming a bad line."""
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            text, sep, label = line.rpartition("\t")
            if not sep or not text.strip() or not label.strip():
                raise ValueError(f"{path}:{number}: expected 'text<TAB>label'")
            texts.append(clean_text(text))
            labels.append(label.strip())
    if not texts:
        raise ValueError(f"{path}: no rows")
    return texts, labels


def load_trec(path: str | Path, fine: bool = False) -> tuple[list[str], list[str]]:
    """(texts, coarse labels) from a TREC question-classification file (latin-1); ``fine``: the
    whole ``COARSE:fine`` tag as the label (TREC's 50 fine classes)."""
    texts, labels = [], []
    with open(path, encoding="latin-1") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            tag, _, text = line.partition(" ")
            coarse, colon, _ = tag.partition(":")
            if not colon or not text:
                raise ValueError(f"{path}:{number}: expected 'COARSE:fine question text'")
            texts.append(text.strip())
            labels.append(tag if fine else coarse)
    return texts, labels


def load_split(data_dir: str | Path, name: str) -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    """((pool texts, labels), (test texts, labels)) of a dataset folder of ``../shared/data``:
    TREC-6's ``train.label`` / ``test.label``, the others' ``pool.tsv`` / ``test.tsv``."""
    folder = Path(data_dir) / name
    if name == "trec6":
        return load_trec(folder / "train.label"), load_trec(folder / "test.label")
    return load_tsv(folder / "pool.tsv"), load_tsv(folder / "test.tsv")


def write_tsv(path: str | Path, texts: list[str], labels: list[str]) -> None:
    """Write text<TAB>label rows (tabs and newlines inside texts become spaces)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for text, label in zip(texts, labels, strict=True):
            f.write(f"{' '.join(text.split())}\t{label}\n")


def sample_rows(texts: list[str], labels: list[str], rows: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded random sample of ``rows`` (text, label) pairs, in random order."""
    pairs = list(zip(texts, labels, strict=True))
    random.Random(seed).shuffle(pairs)
    return [t for t, _ in pairs[:rows]], [y for _, y in pairs[:rows]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.al.datasets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    trec = sub.add_parser("trec-to-tsv", help="convert a TREC .label file to text<TAB>label TSV")
    trec.add_argument("source")
    trec.add_argument("target")
    sample = sub.add_parser("sample", help="write a seeded random sample of a text<TAB>label TSV")
    sample.add_argument("source")
    sample.add_argument("target")
    sample.add_argument("--rows", type=int, required=True)
    sample.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        texts, labels = load_trec(args.source) if args.command == "trec-to-tsv" else load_tsv(args.source)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "sample":
        texts, labels = sample_rows(texts, labels, args.rows, args.seed)
    write_tsv(args.target, texts, labels)
    print(f"wrote {len(texts)} rows, {len(set(labels))} classes to {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
