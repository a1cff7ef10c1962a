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
