from pathlib import Path

import pytest

from tests.tinybert import make_tiny_bert

DATA = Path(__file__).resolve().parents[4] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def agnews_pool() -> tuple[list[str], list[str]]:
    from backend.al.datasets import load_tsv

    path = DATA / "agnews" / "pool.tsv"
    if not path.exists():
        pytest.fail(f"benchmark data missing: {path}")
    return load_tsv(path)


@pytest.fixture
def run_simulation(agnews_pool, tiny_bert, tmp_path):
    """Run the simulation CLI on AG News slices with the tiny encoder: run(pool_rows, test_rows, *args)
    -> (completed process, output folder)."""
    import subprocess
    import sys

    from backend.al.datasets import write_tsv

    def run(pool_rows: int, test_rows: int, *args: str):
        texts, labels = agnews_pool
        write_tsv(tmp_path / "pool.tsv", texts[:pool_rows], labels[:pool_rows])
        write_tsv(tmp_path / "test.tsv", texts[6000:6000 + test_rows], labels[6000:6000 + test_rows])
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "backend.al.simulate", "--pool", str(tmp_path / "pool.tsv"),
               "--test", str(tmp_path / "test.tsv"), "--out", str(out), "--encoder", str(tiny_bert),
               "--mc-samples", "4", "--cache-dir", str(tmp_path / "cache"), *args]
        root = Path(__file__).resolve().parents[3]
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300), out

    return run
