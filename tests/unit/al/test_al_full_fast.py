"""Full mode's fast path: MC_LAYERS, bf16, and the ranking-agreement criterion for each speed-up.

A speed-up passes when the top 10% (top 1000 of a big pool) of its BALD ranking agrees with
fp32 full MC at least as well as fp32 full MC agrees with itself under other dropout seeds,
minus a small tolerance (issue 14). Self-contained fixtures, so that on a GPU machine without
the service's dependencies this runs as
``AL_TEST_ENCODER=<model folder> AL_TEST_POOL=<pool.tsv> python -m pytest --noconftest -m gpu <this file>``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

from backend.al.acquisition import bald
from backend.al.config import EngineConfig
from backend.al.datasets import load_tsv
from backend.al.encoder import bf16_supported
from backend.al.kinds.base import Model
from backend.al.kinds.full import FullClassifier, agreement_top, consistent_dropout, top_agreement
from backend.al.learner import ActiveLearner
from backend.al.tokens import from_lists
from tests.tinybert import make_tiny_bert

DATA = Path(__file__).resolve().parents[4] / "shared" / "data" / "agnews" / "pool.tsv"
TOLERANCE = 0.05  # a few tasks of the top 10%: the seed-to-seed agreement is itself noisy
REFERENCE_SEED, OTHER_SEEDS = 0, (1, 2)


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory) -> str:
    return os.environ.get("AL_TEST_ENCODER") or str(make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-fast")))


@pytest.fixture(scope="module")
def pool() -> tuple[list[str], list[str]]:
    path = Path(os.environ.get("AL_TEST_POOL") or DATA)
    if not path.exists():
        pytest.fail(f"benchmark data missing: {path}")
    return load_tsv(path)


def _learner(encoder: str, cache, device: str = "cpu", **overrides) -> ActiveLearner:
    return ActiveLearner(EngineConfig(encoder=encoder, mode="full", strategy="bald", device=device, **overrides),
                         cache)


def _bald(learner: ActiveLearner, model, texts: list[str], seed: int) -> torch.Tensor:
    probs = learner.mc_probs(model, texts, seed=seed)
    assert torch.isfinite(probs).all()
    return bald(probs)


def _check_agreement(reference: ActiveLearner, variants: dict[str, ActiveLearner], model, texts,
                     asserted: tuple[str, ...] | None = None) -> dict:
    """Each variant's mean top agreement with the reference seed against fp32's own, per other seed;
    the criterion is asserted for the variants named in ``asserted`` (all by default)."""
    ref = _bald(reference, model, texts, REFERENCE_SEED)
    top = agreement_top(len(texts))
    own = sum(top_agreement(_bald(reference, model, texts, s), ref, top) for s in OTHER_SEEDS) / len(OTHER_SEEDS)
    shares = {name: sum(top_agreement(_bald(v, model, texts, s), ref, top) for s in OTHER_SEEDS) / len(OTHER_SEEDS)
              for name, v in variants.items()}
    shares["fp32 seed-to-seed"] = own
    assert own >= 3 * min(1.0, top / len(texts)), f"fp32's own agreement {own:.3f} is near chance: no test"
    for name, share in shares.items():
        if asserted is not None and name not in asserted:
            continue
        assert share >= own - TOLERANCE, f"{name}: top-{top} agreement {share:.3f} < fp32 seed-to-seed {own:.3f}"
    return shares


def test_mc_layers_repeats_the_lower_layers_output_exactly(encoder_path):
    """k > 0 runs the lower layers once and repeats their output: the same numbers as running
    them T times with their dropout off, and a text scores the same in any batch."""
    net = FullClassifier(encoder_path, 3).eval()
    layers = len(net.layers())
    tokens = from_lists([[101, 2000 + i, *range(3000, 3000 + i), 102] for i in range(6)])
    ids, mask = tokens.batch(range(6), 0)
    samples = 5
    prefixes = (f"encoder.encoder.layer.{layers - 1}.", "drop")
    with torch.inference_mode(), consistent_dropout(net, samples, 7, 32, prefixes):
        slow = net(ids.repeat_interleave(samples, 0), mask.repeat_interleave(samples, 0)).view(6, samples, -1)
    fast = net.mc_logits({"input_ids": ids, "attention_mask": mask}, samples, seed=7, positions=32, layers=1)
    assert torch.allclose(fast, slow, atol=1e-5) and fast.std(dim=1).max() > 0
    one_ids, one_mask = tokens.batch([4], 0)
    alone = net.mc_logits({"input_ids": one_ids, "attention_mask": one_mask}, samples, seed=7, positions=32, layers=1)
    assert torch.allclose(alone[0], fast[4], atol=1e-5)
    everything = net.mc_logits({"input_ids": ids, "attention_mask": mask}, samples, seed=7, positions=32)
    assert not torch.allclose(everything, fast, atol=1e-3)  # k = 0 samples the lower layers too
    with pytest.raises(ValueError, match=f"mc_layers={layers + 1} but the encoder has {layers} layers"):
        net.mc_logits({"input_ids": ids, "attention_mask": mask}, samples, layers=layers + 1)
    with pytest.raises(ValueError, match="mc_layers must be >= 0"):
        EngineConfig(mc_layers=-1)


def test_full_epochs_sets_the_fewest_epochs_of_each_fine_tune(encoder_path, pool, tmp_path):
    texts, labels = pool
    texts, labels = texts[:40], labels[:40]  # 3 batches of 16: 5 epochs are 15 steps, so 60 apply
    classes = sorted(set(labels))
    assert _learner(encoder_path, tmp_path, mc_samples=2).fit(texts, labels, classes).stats["steps"] == 60
    longer = _learner(encoder_path, tmp_path, mc_samples=2, full_epochs=30).fit(texts, labels, classes)
    assert longer.stats["steps"] == 90
    with pytest.raises(ValueError, match="full_epochs"):
        EngineConfig(full_epochs=0)


def _untrained(learner: ActiveLearner, classes: list[str]) -> Model:
    """The seeded initial network as a model, its output layer scaled up: the tiny random BERT
    learns nothing from a few labels (skipping the fit keeps this fast on a loaded CPU), and with
    the initial near-zero logits every text is equally uncertain, so the top of the ranking
    would be MC noise alone (agreement at chance, 10%, whatever the variant)."""
    state = {k: v.clone() for k, v in learner.kind()._network(len(classes), None).state_dict().items()}
    state["out.weight"] *= 10
    return Model(classes, False, learner.identity, "full", state, 0)


def test_mc_layers_keeps_the_top_of_the_bald_ranking(encoder_path, pool, tmp_path):
    """On the tiny random model the cheaper MC passes; on MiniLM and AG News it does not
    (docs/BENCHMARKS.md), which is why MC_LAYERS defaults to 0 (every layer)."""
    texts, labels = pool
    reference = _learner(encoder_path, tmp_path, mc_samples=10)
    model = _untrained(reference, sorted(set(labels)))
    variants = {"mc_layers=1": _learner(encoder_path, tmp_path, mc_samples=10, mc_layers=1)}
    print(_check_agreement(reference, variants, model, texts[1000:1200]))


def _bf16_against_fp32(encoder_path, pool, tmp_path, half_weights: bool):
    """(fp32 reference learner, an untrained model, a bf16 learner: autocast or bf16 weights)."""
    reference = _learner(encoder_path, tmp_path, mc_samples=10)
    reference.kind().bf16 = False
    model = _untrained(reference, sorted(set(pool[1])))
    fast = _learner(encoder_path, tmp_path, mc_samples=10)
    fast.kind().bf16, fast.kind().half_weights = True, half_weights
    return reference, model, fast


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bf16")
def test_bf16_autocast_keeps_the_top_of_the_bald_ranking_on_cpu(encoder_path, pool, tmp_path):
    reference, model, fast = _bf16_against_fp32(encoder_path, pool, tmp_path, half_weights=False)
    net, precision = fast.kind()._scoring_network(len(model.classes), model.state)
    assert {p.dtype for p in net.parameters()} == {torch.float32} and precision == fast.kind()._autocast
    _check_agreement(reference, {"bf16": fast}, model, pool[0][1000:1200])


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bf16")
def test_scoring_with_bf16_weights_keeps_the_ranking_and_trains_in_fp32(encoder_path, pool, tmp_path):
    texts, labels = pool
    reference, model, half = _bf16_against_fp32(encoder_path, pool, tmp_path, half_weights=True)
    net, precision = half.kind()._scoring_network(len(model.classes), model.state)
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16} and precision is contextlib.nullcontext
    _check_agreement(reference, {"bf16 weights": half}, model, texts[1000:1200])
    # the bf16 copy is the scoring network's alone: training still runs on fp32 master weights
    trained = half.fit(texts[:40], labels[:40], sorted(set(labels)))
    assert {v.dtype for v in trained.state.values() if v.is_floating_point()} == {torch.float32}
    assert {p.dtype for p in half.kind()._network(len(model.classes), None).parameters()} == {torch.float32}
    # a second model's scores come from its own weights, copied into the same bf16 network
    again, _ = half.kind()._scoring_network(len(model.classes), trained.state)
    assert again is net and torch.equal(net.out.weight, trained.state["out.weight"].to(net.out.weight))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_fast_full_path_on_cuda(encoder_path, pool, tmp_path):
    """bf16 autocast and MC_LAYERS on the GPU: finite probabilities, the agreement criterion
    against fp32 full MC, and a text's scores independent of its batch."""
    texts, labels = pool
    reference = _learner(encoder_path, tmp_path, device="cuda")
    reference.kind().bf16 = False
    fast = _learner(encoder_path, tmp_path, device="cuda")
    assert isinstance(fast.kind()._autocast(), torch.autocast)  # bf16 by default on CUDA
    model = fast.fit(texts[:200], labels[:200], sorted(set(labels)))
    assert all(torch.isfinite(v).all() for v in model.state.values())
    scored = texts[1000:3000]
    half = _learner(encoder_path, tmp_path, device="cuda")
    half.kind().half_weights = True
    variants = {"bf16": fast, "bf16 weights": half,
                **{f"bf16 mc_layers={k}": _learner(encoder_path, tmp_path, device="cuda", mc_layers=k) for k in (1, 2)}}
    # MC_LAYERS is only reported: on MiniLM and AG News it falls below the criterion
    # (docs/BENCHMARKS.md, "GPU: full mode and the plain floor"), so it stays opt-in.
    shares = _check_agreement(reference, variants, model, scored, asserted=("bf16", "bf16 weights"))
    print("top agreement with fp32 full MC:", shares)
    assert all(0 <= share <= 1 for share in shares.values())
    whole = fast.mc_probs(model, scored[:300], seed=3)
    alone = torch.cat([fast.mc_probs(model, [scored[i]], seed=3) for i in (0, 150, 299)])
    # bf16 rounds differently with other padding; masks shared by batch, or not, differ by ~0.1-0.5
    assert torch.allclose(alone, whole[[0, 150, 299]], atol=5e-2)


def test_a_network_first_built_for_scoring_can_still_be_trained(encoder_path, tmp_path):
    kind = _learner(encoder_path, tmp_path).kind()
    with torch.inference_mode():
        net = kind._network(3, None)
    assert not any(p.is_inference() for p in net.parameters())


def test_batches_padded_for_graphs_give_the_unpadded_logits(encoder_path, pool):
    """Graph steps pad a batch to a multiple of GRAPH_LENGTH_MULTIPLE tokens (at most max_length): the
    attention mask hides the padding, so logits stay the unpadded batch's."""
    from backend.al.kinds.full import GRAPH_LENGTH_MULTIPLE, tokenizer_for
    from backend.al.tokens import tokenize

    texts, _ = pool
    tokens = tokenize(tokenizer_for(encoder_path), texts[:40], 128)
    net = FullClassifier(encoder_path, 4).eval()
    idx = torch.arange(40)
    for rows in (idx[:16], idx[16:40], idx[7:8]):
        ids, mask = tokens.batch(rows, 0)
        padded_ids, padded_mask = tokens.batch(rows, 0, GRAPH_LENGTH_MULTIPLE, 128)
        assert padded_ids.shape[1] % GRAPH_LENGTH_MULTIPLE == 0 and padded_ids.shape[1] >= ids.shape[1]
        assert torch.equal(padded_ids[:, :ids.shape[1]], ids) and not padded_mask[:, ids.shape[1]:].any()
        with torch.no_grad():
            assert torch.allclose(net(ids, mask), net(padded_ids, padded_mask), atol=1e-5)
    # never beyond the cap, never below the longest text
    assert tokens.batch(idx, 0, 1000, 128)[0].shape[1] == 128
    assert tokens.batch(idx, 0, GRAPH_LENGTH_MULTIPLE, 8)[0].shape[1] == max(tokens.lengths)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fine_tuning_from_cuda_graphs_learns_as_the_eager_steps_do(encoder_path, pool, tmp_path):
    """Kind.graph_steps on CUDA: every step replays a captured graph; the model is as accurate as
    the eager steps' within seed noise (its dropout masks are drawn differently)."""
    texts, labels = pool
    classes = sorted(set(labels))
    truth = torch.tensor([classes.index(y) for y in labels[2000:2600]])
    accuracy = {}
    for graphs in (False, True):
        learner = _learner(encoder_path, tmp_path, device="cuda")
        learner.kind().graph_steps = graphs
        model = learner.fit(texts[:300], labels[:300], classes)
        assert all(torch.isfinite(v).all() for v in model.state.values())
        net = learner.kind()._network(len(classes), None)
        assert all(p.grad is None for p in net.parameters())
        accuracy[graphs] = float((learner.predict_proba(model, texts[2000:2600]).argmax(1) == truth).float().mean())
    print("accuracy, eager / graph steps:", accuracy)
    assert accuracy[True] >= accuracy[False] - 0.05
