"""scripts/make_shapes.py: the derived data sets have the shapes BENCHMARKS.md says; a seed gives the same files."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

from backend.al.datasets import load_tsv

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "make_shapes.py"
_spec = importlib.util.spec_from_file_location("make_shapes", _PATH)
shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shapes)


def test_the_shapes_have_their_class_counts_ratios_and_lengths(tmp_path):
    assert shapes.main([str(tmp_path / "a")]) == 0
    counts = {name: {part: Counter(load_tsv(tmp_path / "a" / name / f"{part}.tsv")[1]) for part in ("pool", "test")}
              for name in ("binary", "rare", "long", "trec50", "clinc30")}
    assert set(counts["binary"]["pool"]) == set(counts["binary"]["test"]) == {"Business", "Sci/Tech"}
    assert counts["rare"]["pool"] == counts["rare"]["test"] == Counter({"Other": 3800, "Sports": 200})
    assert counts["long"]["pool"] == Counter({c: 600 for c in ("Business", "Sci/Tech", "Sports", "World")})
    assert len(counts["trec50"]["pool"]) == 50 and min(counts["trec50"]["pool"].values()) == 4
    assert len(counts["clinc30"]["pool"]) == 30 and sum(counts["clinc30"]["test"].values()) == 900
    assert set(counts["clinc30"]["test"]) <= set(counts["clinc30"]["pool"])
    long_texts, short_texts = (load_tsv(tmp_path / "a" / name / "pool.tsv")[0] for name in ("long", "binary"))
    assert sum(map(len, long_texts)) / len(long_texts) > 3.5 * sum(map(len, short_texts)) / len(short_texts)
    shapes.main([str(tmp_path / "b")])
    for name in counts:
        for part in ("pool.tsv", "test.tsv"):
            assert (tmp_path / "a" / name / part).read_bytes() == (tmp_path / "b" / name / part).read_bytes()
