"""The ``setfit`` kind: its pairs, the contrastive tune, and the kind through the engine."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.al.config import EngineConfig
from backend.al.encoder import encode_tokens
from backend.al.kinds.setfit import ENCODER, contrastive_tune, pairs_of
from backend.al.learner import ActiveLearner, encode_targets
from backend.al.store import ModelStore


def _one_hot(classes: list[int], n: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(classes), n).float()


def test_pairs_give_each_anchor_a_partner_sharing_its_class_and_one_that_does_not():
    classes = [0, 0, 1, 1, 1, 2, 3, 3]  # class 2 has one text: its positive partner is itself
    targets = _one_hot(classes, 4)
    pairs = pairs_of(targets, torch.Generator().manual_seed(0), iterations=3)
    anchors = pairs[:, 0].long()
    assert len(pairs) == 2 * 3 * len(classes)
    assert torch.equal(torch.bincount(anchors, minlength=8), torch.full((8,), 6))  # 3 iterations x 2 pairs
    for anchor, partner, target in pairs.tolist():
        a, p = int(anchor), int(partner)
        if target == 1.0:
            assert classes[a] == classes[p] and (a != p or classes.count(classes[a]) == 1)
        else:
            assert target == 0.0 and classes[a] != classes[p]
    again = pairs_of(targets, torch.Generator().manual_seed(0), iterations=3)
    assert torch.equal(pairs, again)
    assert not torch.equal(pairs, pairs_of(targets, torch.Generator().manual_seed(1), iterations=3))
    assert len(pairs_of(targets, torch.Generator().manual_seed(0), iterations=20, max_pairs=10)) == 10


def test_multi_label_pairs_are_scored_by_jaccard_similarity():
    targets = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.float32)
    pairs = pairs_of(targets, torch.Generator().manual_seed(0), iterations=5)
    for anchor, partner, target in pairs.tolist():
        a, p = targets[int(anchor)].bool(), targets[int(partner)].bool()
        assert abs(target - float((a & p).sum()) / float((a | p).sum())) < 1e-6


def test_the_tune_pulls_a_class_together_and_pushes_the_others_away(tiny_bert, agnews_pool):
    from transformers import AutoModel

    from backend.al.kinds.full import tokenizer_for
    from backend.al.tokens import tokenize

    texts, labels = agnews_pool
    texts, labels = texts[:60], labels[:60]
    classes = sorted(set(labels))
    targets = _one_hot([classes.index(y) for y in labels], len(classes))
    tokens = tokenize(tokenizer_for(str(tiny_bert)), texts, 64)
    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(tiny_bert, dtype=torch.float32)
    same = targets @ targets.T - torch.eye(len(texts))

    def gap() -> float:
        x = encode_tokens(encoder, tokens, 0, bf16=False)
        cos = x @ x.T
        return float(cos[same > 0].mean() - cos[(targets @ targets.T) == 0].mean())

    before = gap()
    # a random tiny BERT needs a larger step than a pretrained encoder's 2e-5 to move in a few steps
    pairs = pairs_of(targets, torch.Generator().manual_seed(0), iterations=4)
    assert contrastive_tune(encoder, tokens, 0, pairs, lr=3e-3) == -(-len(pairs) // 16) == 30
    after = gap()
    assert after > before + 0.1, (before, after)


def test_the_kind_through_the_engine(tiny_bert, agnews_pool, tmp_path, monkeypatch):
    monkeypatch.setattr("backend.al.kinds.setfit.ITERATIONS", 3)  # 240 pairs: a short tune
    texts, labels = agnews_pool
    classes = sorted(set(labels))
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="setfit", strategy="bald", mc_samples=5),
                            tmp_path)
    model = learner.fit(texts[:40], labels[:40], classes)
    assert model.kind == "setfit" and model.stats["tune_pairs"] == 240
    tuned = {k: v for k, v in model.state.items() if k.startswith(ENCODER)}
    kind = learner.kind("setfit")
    pretrained = kind._pretrained
    assert tuned and any(not torch.equal(v, pretrained[k[len(ENCODER):]]) for k, v in tuned.items())
    pool = texts[1000:1100]
    probs = learner.mc_probs(model, pool)
    assert probs.shape == (100, 5, 4) and torch.allclose(probs.sum(-1), torch.ones(100, 5), atol=1e-5)
    assert probs.std(dim=1).max() > 0  # BALD reads posterior samples
    # a text's scores do not depend on what else is scored with it
    alone = torch.cat([learner.mc_probs(model, [pool[i]]) for i in (0, 37, 99)])
    assert torch.allclose(alone, probs[[0, 37, 99]], atol=1e-4)
    # saved and loaded, and each fit starts again from the pretrained encoder: the same labels, the same model
    store = ModelStore(tmp_path / "models")
    loaded = store.load(1, store.save(1, model))
    assert torch.allclose(learner.mc_probs(loaded, pool), probs, atol=1e-6)
    learner.fit(texts[40:80], labels[40:80], classes)
    again = learner.fit(texts[:40], labels[:40], classes)
    assert all(torch.equal(again.state[k], v) for k, v in model.state.items())
    # tuned embeddings separate the labelled classes better than the pretrained ones
    truth = encode_targets(labels[:40], classes, False).argmax(1)
    assert float((learner.predict_proba(model, texts[:40]).argmax(1) == truth).float().mean()) > 0.5


def test_multi_label_sets_fit_and_score(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setattr("backend.al.kinds.setfit.ITERATIONS", 3)
    texts = ["rates rise and markets fall", "the cup final", "a chip for phones", "markets and chips",
             "the final whistle", "phones and rates"] * 3
    labels = [["econ"], ["sport"], ["tech"], ["econ", "tech"], ["sport"], ["tech", "econ"]] * 3
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="setfit", mc_samples=3), tmp_path)
    model = learner.fit(texts, labels, ["econ", "sport", "tech"], multilabel=True)
    probs = learner.mc_probs(model, texts[:6])
    assert model.multilabel and probs.shape[0] == 6 and probs.shape[-1] == 3
    assert ((probs >= 0) & (probs <= 1)).all()
