"""Encoder, MC-dropout head, full mode, embedding cache and model store."""

import multiprocessing as mp

import pytest
import torch

from backend.al.embeddings import EmbeddingCache, text_key
from backend.al.encoder import TextEncoder, bf16_supported, pick_device
from backend.al.kinds.head import MCDropoutHead
from backend.al.learner import ActiveLearner, EngineConfig, Model, NotEnoughLabels, encode_targets
from backend.al.store import CheckpointError, ModelStore

TEXTS = ["stocks fell sharply today", "the team won the cup final", "new chip doubles battery life",
         "rebels seized the capital", "shares rallied on earnings", "striker scores twice in derby"]
LABELS = ["Business", "Sports", "Sci/Tech", "World", "Business", "Sports"]
CLASSES = ["Business", "Sci/Tech", "Sports", "World"]


def test_mc_head_batched_samples_shape_and_spread():
    head = MCDropoutHead(dim=8, classes=3, hidden=16, dropout=0.5)
    x = torch.randn(5, 8)
    logits = head.mc_logits(x, samples=7, generator=torch.Generator().manual_seed(0))
    assert logits.shape == (5, 7, 3)
    assert logits.std(dim=1).mean() > 0  # the samples differ: dropout is on
    again = head.mc_logits(x, samples=7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits, again)


def test_mc_head_mean_approaches_deterministic_forward():
    torch.manual_seed(0)
    head = MCDropoutHead(dim=8, classes=3, hidden=64, dropout=0.2).eval()
    x = torch.randn(4, 8)
    mc = head.mc_logits(x, samples=4000, generator=torch.Generator().manual_seed(1)).mean(dim=1)
    assert torch.allclose(mc, head(x), atol=0.05)  # inverted dropout keeps the expectation


def test_mc_head_rejects_bad_dropout():
    with pytest.raises(ValueError, match="dropout"):
        MCDropoutHead(4, 2, dropout=0.0)


def test_encoder_is_deterministic_normalised_and_length_order_free(tiny_bert):
    enc = TextEncoder(str(tiny_bert), batch_size=2)
    a = enc.encode(TEXTS)
    b = enc.encode(list(reversed(TEXTS)))
    assert a.shape == (len(TEXTS), 32)
    assert torch.allclose(a.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-4)
    assert torch.allclose(a, b.flip(0), atol=1e-3)


def test_bf16_embeddings_keep_accuracy(tiny_bert):
    if not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no native bf16; the encoder runs fp32 here")
    fp32 = TextEncoder(str(tiny_bert), bf16=False).encode(TEXTS)
    bf16 = TextEncoder(str(tiny_bert), bf16=True).encode(TEXTS)
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min() > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_plain_pass_on_cuda_runs_bf16_weights_and_keeps_the_embeddings(tiny_bert):
    fp32 = TextEncoder(str(tiny_bert), device="cuda", bf16=False)
    bf16 = TextEncoder(str(tiny_bert), device="cuda", bf16=True)
    assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    a, b = fp32.encode(TEXTS), bf16.encode(TEXTS)
    assert a.dtype == b.dtype == torch.float32 and b.device.type == "cpu"
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert pick_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")


def test_embedding_cache_roundtrip_and_encoder_isolation(tmp_path):
    a = EmbeddingCache(tmp_path, "enc-a")
    a.put([(text_key("x"), torch.ones(3)), (text_key("y"), torch.zeros(3))])
    fresh = EmbeddingCache(tmp_path, "enc-a")
    got = fresh.get([text_key("x"), text_key("y"), text_key("z")])
    assert set(got) == {text_key("x"), text_key("y")} and torch.equal(got[text_key("x")], torch.ones(3))
    assert EmbeddingCache(tmp_path, "enc-b").get([text_key("x")]) == {}


def _fill(root, start, count):
    cache = EmbeddingCache(root, "shared")
    for i in range(start, start + count):
        cache.put([(text_key(f"text {i}"), torch.full((4,), float(i)))])


def test_embedding_cache_is_safe_for_concurrent_writers(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_fill, args=(tmp_path, k * 200, 200)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    got = EmbeddingCache(tmp_path, "shared").get([text_key(f"text {i}") for i in range(600)])
    assert len(got) == 600  # no writer lost another's entries
    assert all(float(got[text_key(f"text {i}")][0]) == i for i in range(600))


def test_learner_embeds_once_then_reads_the_cache(tiny_bert, tmp_path):
    cfg = EngineConfig(encoder=str(tiny_bert))
    first = ActiveLearner(cfg, cache_dir=tmp_path)
    x = first.embed(TEXTS + TEXTS[:2])
    assert x.shape == (8, 32) and torch.equal(x[0], x[6])
    second = ActiveLearner(cfg, cache_dir=tmp_path)
    assert torch.allclose(second.embed(TEXTS), x[:6])
    assert second._encoder is None  # warm: the encoder was never loaded


def test_fit_predict_rank_head_mode(tiny_bert, tmp_path):
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="head", mc_samples=5, exploration=0.0),
                            tmp_path)
    model = learner.fit(TEXTS, LABELS, CLASSES)
    assert model.classes == CLASSES and model.n_train == 6 and model.kind == "head"
    probs = learner.mc_probs(model, TEXTS)
    assert probs.shape == (6, 5, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(6, 5), atol=1e-5)
    ranking = learner.rank(model, TEXTS)
    assert torch.equal(torch.sort(ranking.order).values, torch.arange(6))
    assert ranking.probs.shape == (6, 4) and ranking.strategy == "margin"
    assert ranking.scores[ranking.order[0]] == 0


def test_fit_is_reproducible(tiny_bert, tmp_path):
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert)), tmp_path)
    a, b = learner.fit(TEXTS, LABELS, CLASSES), learner.fit(TEXTS, LABELS, CLASSES)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_warm_start_uses_previous_weights(tiny_bert, tmp_path):
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="head", warm_start=True), tmp_path)
    first = learner.fit(TEXTS, LABELS, CLASSES)
    second = learner.fit(TEXTS, LABELS, CLASSES, previous=first)
    fresh = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="head"), tmp_path).fit(TEXTS, LABELS, CLASSES,
                                                                                           previous=first)
    assert fresh.stats["warm_start"] is False  # the default trains from scratch
    assert second.stats["warm_start"] is True and first.stats["warm_start"] is False
    other_classes = learner.fit(TEXTS, LABELS, CLASSES + ["Extra"], previous=first)
    assert other_classes.stats["warm_start"] is False  # incompatible head: start over


def test_multilabel_fit_and_probs(tiny_bert, tmp_path):
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mc_samples=4, strategy="bald"), tmp_path)
    labels = [["Business"], ["Sports"], ["Sci/Tech", "Business"], ["World"], [], ["Sports", "World"]]
    model = learner.fit(TEXTS, labels, CLASSES, multilabel=True)
    probs = learner.mc_probs(model, TEXTS)
    assert probs.shape == (6, 4, 4) and model.multilabel
    assert learner.rank(model, TEXTS).values.shape == (6,)


def test_cold_start_rank_without_model(tiny_bert, tmp_path):
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), cold_start_clusters=3), tmp_path)
    ranking = learner.rank(None, TEXTS)
    assert ranking.strategy == "cold_start" and ranking.probs is None
    assert torch.equal(torch.sort(ranking.order).values, torch.arange(6))


def test_fit_rejects_bad_labels(tiny_bert, tmp_path):
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert)), tmp_path)
    with pytest.raises(NotEnoughLabels, match="at least 2 classes"):
        learner.fit(TEXTS[:2], ["Sports", "Sports"], CLASSES)
    with pytest.raises(ValueError, match="not one of the classes"):
        learner.fit(TEXTS[:2], ["Sports", "Weather"], CLASSES)
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        learner.fit(TEXTS[:3], ["Sports", "World"], CLASSES)


def test_encode_targets_pinned():
    assert encode_targets(["b", "a"], ["a", "b"], False).tolist() == [[0, 1], [1, 0]]
    assert encode_targets([["a", "b"], []], ["a", "b"], True).tolist() == [[1, 1], [0, 0]]


def test_full_mode_mc_dropout_through_the_transformer(tiny_bert, tmp_path):
    learner = ActiveLearner(EngineConfig(encoder=str(tiny_bert), mode="full", mc_samples=3, exploration=0.0),
                            tmp_path)
    model = learner.fit(TEXTS, LABELS, CLASSES)
    assert model.kind == "full" and any(k.startswith("encoder.") for k in model.state)
    probs = learner.mc_probs(model, TEXTS)
    assert probs.shape == (6, 3, 4)
    assert probs.std(dim=1).max() > 0  # dropout inside the transformer makes the samples differ
    assert learner.rank(model, TEXTS).order.shape == (6,)


def _model(n: int = 3) -> Model:
    return Model(classes=["a", "b"], multilabel=False, encoder="enc", kind="head",
                 state={"w": torch.full((2,), float(n))}, n_train=n, arch={"hidden": 4})


def test_store_versions_current_load_prune_reset(tmp_path):
    store = ModelStore(tmp_path, keep=2)
    assert store.current(7) is None and store.load(7) is None
    versions = [store.save(7, _model(n)) for n in range(1, 5)]
    assert versions[0].startswith("p7-v0001-") and versions[3].startswith("p7-v0004-")
    assert store.current(7) == versions[3]
    assert store.versions(7) == versions[2:]  # pruned to the newest two
    loaded = store.load(7)
    assert loaded.n_train == 4 and torch.equal(loaded.state["w"], torch.full((2,), 4.0))
    assert store.load(7, versions[2]).n_train == 3
    assert store.load(7, versions[0]) is None
    assert store.current(8) is None  # projects are separate
    store.reset(7)
    assert store.current(7) is None and store.load(7) is None
    with pytest.raises(ValueError, match="not a model version"):
        store.load(7, "../../etc/passwd")


def test_store_leaves_no_temp_files(tmp_path):
    store = ModelStore(tmp_path)
    store.save(1, _model())
    names = sorted(p.name for p in (tmp_path / "project-1").iterdir())
    assert len(names) == 2 and "CURRENT" in names and not any(n.endswith(".tmp") for n in names)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not torch", "not a model"])
def test_store_reports_an_unreadable_checkpoint_in_one_line(tmp_path, damage):
    store = ModelStore(tmp_path)
    version = store.save(1, _model())
    path = tmp_path / "project-1" / f"{version}.pt"
    data = path.read_bytes()
    if damage == "not a model":
        torch.save({"format": 2, "weights": torch.zeros(2)}, path)
    else:
        path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "not torch": b"hello"}[damage])
    with pytest.raises(CheckpointError, match=f"checkpoint {version} of project 1 is unreadable") as caught:
        store.load(1)
    assert "\n" not in str(caught.value)
