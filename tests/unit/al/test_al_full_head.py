"""Full mode's starting classifier layer (``FULL_HEAD``): a logistic regression on the pretrained
encoder's pooled outputs ("probe") or random weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.al.config import EngineConfig
from backend.al.datasets import load_tsv
from backend.al.encoder import mean_pool
from backend.al.kinds.full import FullClassifier, probe_head
from backend.al.kinds.linear import default_l2
from backend.al.learner import ActiveLearner, encode_targets
from backend.al.logistic import fit_logistic
from backend.al.training import class_weights
from tests.tinybert import make_tiny_bert

DATA = Path(__file__).resolve().parents[4] / "shared" / "data" / "agnews" / "pool.tsv"


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-head"), hidden=48))


@pytest.fixture(scope="module")
def labelled() -> tuple[list[str], list[str], list[str]]:
    texts, labels = load_tsv(DATA)
    return texts[:48], labels[:48], sorted(set(labels))


def _pooled(net: FullClassifier, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return mean_pool(net.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


@pytest.mark.parametrize("multilabel", [False, True])
def test_the_probed_layer_is_the_logistic_regression_on_the_pooled_outputs(encoder_path, labelled, multilabel):
    texts, labels, classes = labelled
    learner = ActiveLearner(EngineConfig(encoder=encoder_path, mode="full", device="cpu"))
    kind = learner.kind("full")
    net = kind._network(len(classes), None)
    tokens, pad = kind.tokens(texts), kind.tokenizer.pad_token_id or 0
    targets = encode_targets([[y] for y in labels] if multilabel else labels, classes, multilabel)
    before = net.out.weight.detach().clone()
    probe_head(net, tokens, pad, targets, multilabel)
    assert not torch.allclose(before, net.out.weight)

    ids, mask = tokens.batch(torch.arange(len(texts)), pad)
    pooled = _pooled(net, ids, mask).double()
    scale = pooled.norm(dim=1).mean()
    w, b, _ = fit_logistic(pooled / scale, targets.double(), multilabel, default_l2(len(texts), len(classes)),
                           weights=class_weights(targets, multilabel).double())
    with torch.no_grad():
        logits = net(ids, mask).double()  # eval mode: dropout off
    torch.testing.assert_close(logits, pooled / scale @ w + b, atol=1e-4, rtol=1e-4)
    if not multilabel:  # the probe labels its own training texts better than chance
        assert (logits.argmax(1) == targets.argmax(1)).double().mean() > 1 / len(classes) + 0.2


def test_a_probed_fine_tune_starts_from_the_probe_and_still_trains(encoder_path, labelled, tmp_path):
    texts, labels, classes = labelled
    models = {head: ActiveLearner(EngineConfig(encoder=encoder_path, mode="full", device="cpu", full_head=head,
                                               mc_samples=2), tmp_path / head).fit(texts, labels, classes)
              for head in ("probe", "random")}
    probe, random = models["probe"], models["random"]
    assert probe.stats["steps"] == random.stats["steps"] == 60
    assert not torch.allclose(probe.state["out.weight"], random.state["out.weight"])
    # the encoder moved from the pretrained weights in both: the probe is a start, not a frozen layer
    pretrained = FullClassifier(encoder_path, len(classes)).state_dict()
    for model in (probe, random):
        assert not torch.allclose(model.state["encoder.encoder.layer.0.attention.self.query.weight"],
                                  pretrained["encoder.encoder.layer.0.attention.self.query.weight"])


def test_full_head_is_validated():
    assert EngineConfig().full_head in ("probe", "random")
    with pytest.raises(ValueError, match="full_head"):
        EngineConfig(full_head="linear")
