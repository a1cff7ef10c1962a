"""The ``full`` kind: the whole transformer fine-tuned, MC dropout through its dropout layers.

The classic BaaL recipe, for workers with a GPU. At scoring time every ``nn.Dropout``
of the network is swapped for a :class:`ConsistentDropout` whose T masks are drawn once
per seed and shared by every text, so a text's probabilities do not depend on the batch
or shard it is scored in.

Speed (docs/BENCHMARKS.md, "GPU: full mode and the plain floor"): each text is tokenized once
(``backend/al/tokens.py``, cached beside the embeddings); a pool is scored in length-sorted
batches filled to a token budget with the T copies stacked into one pass, probabilities stay
on the device until the end, and on CUDA scoring runs on a bf16 copy of the weights (training
keeps fp32 weights and arithmetic). ``mc_layers = k`` samples dropout only in the last k encoder layers and the
classifier: the layers below run once per text. ``Kind.graph_steps`` (off until measured on a
GPU) replays each fine-tune step from a CUDA graph.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from backend.al.encoder import bf16_supported, mean_pool
from backend.al.kinds.base import KindBase, Model, Progress, keep_masks, logits_to_probs, stats_of
from backend.al.kinds.linear import default_l2
from backend.al.logistic import fit_logistic
from backend.al.propagation import Check
from backend.al.tokens import TokenCache, Tokens, budget_batches, token_budget, tokenize, tokenizer_identity
from backend.al.training import StaticBatches, TrainConfig, class_weights, fit

TRAINING = TrainConfig(lr=5e-5, weight_decay=0.01, batch_size=16, tiny_steps=60, max_epochs=4, patience=1)
GRAPH_LENGTH_MULTIPLE = 32
"""With ``Kind.graph_steps``: training batches padded to a multiple of this many tokens (at most
max_length), so 128-token texts need at most 4 lengths, times 2 batch sizes (full and the last)."""

MCRun = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""run(input_ids (B, L), attention_mask (B, L)) -> MC logits (B, T, C)."""


class FullClassifier(nn.Module):
    """The whole transformer plus a linear layer, fine-tuned end to end."""

    def __init__(self, encoder_path: str, classes: int, dropout: float = 0.1) -> None:
        from transformers import AutoModel

        super().__init__()
        # An explicit dtype: transformers 5 keeps a checkpoint's stored dtype, and fp16
        # weights fine-tune to NaN.
        self.encoder = AutoModel.from_pretrained(encoder_path, dtype=torch.float32)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(self.encoder.config.hidden_size, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for a tokenised batch."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.out(self.drop(mean_pool(hidden, attention_mask)))

    def layers(self) -> nn.ModuleList:
        """The encoder's stack of transformer layers (BERT-style ``encoder.layer``)."""
        stack = getattr(getattr(self.encoder, "encoder", None), "layer", None)
        if not isinstance(stack, nn.ModuleList):
            raise ValueError(f"mc_layers needs a BERT-style encoder (encoder.layer); "
                             f"{type(self.encoder).__name__} has none: use mc_layers=0")
        return stack

    @contextmanager
    def mc_dropout(self, samples: int, seed: int, positions: int, layers: int = 0) -> Iterator[MCRun]:
        """A function scoring batches with T consistent dropout masks, drawn once for all batches.

        ``layers`` = 0 samples dropout everywhere (embeddings, every layer, classifier); k > 0
        only in the last k layers and the classifier, the layers below running once per text
        (deterministic) before their output is repeated T times. ``positions``: the longest
        sequence any batch may have (the tokenizer's max_length); masks are drawn at that length.
        """
        if layers < 0:
            raise ValueError(f"mc_layers must be >= 0, got {layers}")
        first = 0
        if layers:
            stack = self.layers()
            if layers > len(stack):
                raise ValueError(f"mc_layers={layers} but the encoder has {len(stack)} layers")
            first = len(stack) - layers
            prefixes = tuple(f"encoder.encoder.layer.{i}." for i in range(first, len(stack))) + ("drop",)
        else:
            prefixes = ("",)
        with consistent_dropout(self, samples, seed, positions, prefixes):

            def run(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                b = input_ids.shape[0]
                if not layers:
                    ids, mask = input_ids.repeat_interleave(samples, 0), attention_mask.repeat_interleave(samples, 0)
                    return self(ids, mask).view(b, samples, -1)
                with _repeated_from(self.layers(), first, b, samples):
                    hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                pooled = mean_pool(hidden, attention_mask.repeat_interleave(samples, 0))
                return self.out(self.drop(pooled)).view(b, samples, -1)

            yield run

    @torch.inference_mode()
    def mc_logits(self, batch: dict[str, torch.Tensor], samples: int, seed: int = 0,
                  positions: int = 512, layers: int = 0) -> torch.Tensor:
        """T stochastic passes with consistent dropout masks, batched as one. -> (B, T, C).

        ``positions`` is the longest sequence any batch scored with the same masks may have
        (the tokenizer's max_length): masks are drawn at that length and sliced.
        """
        with self.mc_dropout(samples, seed, positions, layers) as run:
            return run(batch["input_ids"], batch["attention_mask"])


@contextmanager
def _repeated_from(stack: nn.ModuleList, first: int, rows: int, samples: int) -> Iterator[None]:
    """Repeat each of ``rows`` items ``samples`` times (item-major) where layer ``first`` starts.

    Forward pre-hooks on layers first.. repeat their tensor inputs that still have ``rows``
    items (the hidden states once, the attention mask every time the encoder passes it).
    """
    def repeat(x):
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == rows:
            return x.repeat_interleave(samples, 0)
        return x

    def hook(_module, args, kwargs):
        return tuple(repeat(a) for a in args), {k: repeat(v) for k, v in kwargs.items()}

    handles = [] if samples == 1 else [layer.register_forward_pre_hook(hook, with_kwargs=True)
                                       for layer in stack[first:]]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ConsistentDropout(nn.Module):
    """Dropout with T masks drawn once and shared by every item of an item-major (B*T, ...) batch.

    Item b's sample t sees mask t, whatever the batch holds; masks over a sequence axis
    are sliced to the batch's length, so padding does not move them either. ``p`` reads
    0: a module that only passes ``p`` on to a fused kernel (BERT's attention
    probabilities) cannot get consistent masks, so it samples nothing.
    """

    p = 0.0

    def __init__(self, rate: float, samples: int, seed: int, positions: int) -> None:
        super().__init__()
        self.rate, self.samples, self.seed, self.positions = rate, samples, seed, positions
        self._masks: dict[tuple, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return f"rate={self.rate}, samples={self.samples}, seed={self.seed}"

    def _mask(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        # Drawn at a fixed size per feature width and sliced, so every sequence length
        # sees the same masks on its first positions; kept per dtype (bf16 under autocast).
        full = (self.positions, shape[-1]) if len(shape) == 2 else shape
        if (full, dtype) not in self._masks:
            generator = torch.Generator().manual_seed(self.seed)
            self._masks[full, dtype] = keep_masks(self.samples, full, self.rate, generator).to(device, dtype)
        mask = self._masks[full, dtype]
        if len(shape) == 2 and shape[0] > self.positions:
            raise ValueError(f"sequence of {shape[0]} tokens is longer than the masks' {self.positions}")
        return mask[:, :shape[0]] if len(shape) == 2 else mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B*T, ...) item-major -> same shape, masked per sample."""
        rest = tuple(x.shape[1:])
        per_item = x.view(-1, self.samples, *rest)
        return (per_item * self._mask(rest, x.device, x.dtype)).view_as(x)


@contextmanager
def consistent_dropout(net: nn.Module, samples: int, seed: int, positions: int,
                       prefixes: tuple[str, ...] = ("",)) -> Iterator[None]:
    """Swap the ``nn.Dropout`` modules of net whose names start with one of ``prefixes`` (all by
    default) for :class:`ConsistentDropout` (each with its own seed, from its index among all
    of net's dropouts); net runs in eval mode, so the others drop nothing.

    ``positions``: the longest sequence the masks must cover (the tokenizer's max_length).
    """
    swapped = []
    for index, (name, module) in enumerate((n, m) for n, m in net.named_modules() if isinstance(m, nn.Dropout)):
        if not name.startswith(prefixes):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attr, ConsistentDropout(module.p, samples, seed * 1_000_003 + index, positions))
        swapped.append((parent, attr, module))
    was_training = net.training
    # ConsistentDropout masks in any mode; eval turns the unswapped dropouts (and the fused
    # attention dropout, which reads ``p``) off. A BERT-style encoder has no batch norm.
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)
        for parent, attr, module in swapped:
            setattr(parent, attr, module)


def tokenizer_for(encoder_path: str):
    """The tokenizer that goes with a full-mode encoder."""
    from transformers import AutoTokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return AutoTokenizer.from_pretrained(encoder_path)


def _token_root(backbone) -> Path | None:
    """Where a backbone keeps token ids: ``tokens/`` beside its embedding cache, if it has one."""
    root = getattr(backbone, "cache_dir", None)
    if root is None:
        cache_dir = getattr(getattr(backbone, "cache", None), "dir", None)
        root = Path(cache_dir).parent if cache_dir is not None else None
    return Path(root) / "tokens" if root is not None else None


class Kind(KindBase):
    """The whole encoder fine-tuned (``MODEL_MODE=full``): slower, better with enough labels."""

    name = "full"
    encodes_per_score = True
    bf16: bool | None = None
    """bf16 scoring: None on CUDA only, True wherever native, False never."""
    half_weights: bool = True
    """Where bf16 is on, score with a bf16 copy of the network rather than under bf16 autocast
    over the fp32 weights: on an H100, 1.6-1.7 s against 4.2-5.2 s for MC over 10k texts (T = 20),
    with the same top-1000 agreement with fp32 (docs/BENCHMARKS.md, section 6)."""
    train_bf16: bool = False
    """bf16 autocast while fine-tuning (fp32 master weights either way). Off: on an H100 it did
    not pay for 160 small steps of 16 (two runs: 4.0 and 3.2 s, against 2.7 and 3.3 s in fp32)."""
    graph_steps: bool = False
    """On CUDA, replay each fine-tune step from a CUDA graph (``training.GraphedSteps``), batches
    padded to multiples of ``GRAPH_LENGTH_MULTIPLE`` tokens so that a few graphs serve them all.
    Off until measured on a GPU: the 160 steps of 16 are launch-bound (17-25 ms a step on an H100)."""

    def __init__(self, backbone) -> None:
        super().__init__(backbone)
        self._tokenizer = None
        self._token_cache: TokenCache | None = None
        self._nets: dict[tuple[int, int], tuple[FullClassifier, dict[str, torch.Tensor]]] = {}
        self._half_nets: dict[tuple[int, int], FullClassifier] = {}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = tokenizer_for(self.backbone.encoder_path)
        return self._tokenizer

    def tokens(self, texts: Sequence[str]) -> Tokens:
        """Token ids of texts on the device, each text tokenized once (cached beside the embeddings)."""
        cfg = self.backbone.config
        if self._token_cache is None:
            identity = tokenizer_identity(self.backbone.encoder_path, cfg.max_length)
            self._token_cache = TokenCache(_token_root(self.backbone), identity)
        return tokenize(self.tokenizer, texts, cfg.max_length, self._token_cache).to(self.backbone.device)

    def _bf16(self) -> bool:
        device = self.backbone.device
        wanted = device.type == "cuda" if self.bf16 is None else self.bf16
        return wanted and bf16_supported(device)

    def _autocast(self):
        return torch.autocast(self.backbone.device.type, dtype=torch.bfloat16) if self._bf16() else nullcontext()

    def _scoring_network(self, classes: int, state: dict[str, torch.Tensor]):
        """(network, context factory) for scoring: the fp32 network under autocast, or its bf16 copy."""
        if not (self.half_weights and self._bf16()):
            return self._network(classes, state), self._autocast
        key = (classes, self.backbone.config.seed)
        with torch.inference_mode(False):
            if key not in self._half_nets:  # built once from the fp32 network, then loaded directly
                self._half_nets[key] = copy.deepcopy(self._network(classes, state)).to(torch.bfloat16)
            else:
                self._half_nets[key].load_state_dict(state)  # cast to bf16 as it is copied in
        return self._half_nets[key], nullcontext

    def _network(self, classes: int, state: dict[str, torch.Tensor] | None) -> FullClassifier:
        """A network with ``state`` (or the seeded initial weights), built once per class count and reused."""
        key = (classes, self.backbone.config.seed)
        with torch.inference_mode(False):  # never inference tensors: the same network is trained later
            return self._load(key, state)

    def _load(self, key: tuple[int, int], state: dict[str, torch.Tensor] | None) -> FullClassifier:
        classes = key[0]
        if key not in self._nets:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.backbone.config.seed)
                net = FullClassifier(self.backbone.encoder_path, classes)
            initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
            self._nets[key] = (net.to(self.backbone.device), initial)
        net, initial = self._nets[key]
        net.load_state_dict(state if state is not None else initial)
        return net

    def fit(self, texts: Sequence[str], targets: torch.Tensor, classes: list[str], multilabel: bool,
            previous: Model | None, progress: Progress | None, pool: Sequence[str] = (),
            check: Check | None = None) -> Model:
        """Fine-tune the encoder and a linear layer (seeded), or continue from ``previous``."""
        net = self._network(len(classes), previous.state if previous is not None else None)
        tokens, pad = self.tokens(texts), self.tokenizer.pad_token_id or 0
        if previous is None and self.backbone.config.full_head == "probe":
            probe_head(net, tokens, pad, targets.to(self.backbone.device), multilabel)

        def logits(m: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
            with self._autocast() if self.train_bf16 else nullcontext():
                out = m(*inputs)
            return out.float()

        def forward(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            return logits(m, tokens.batch(idx, pad))

        cap = self.backbone.config.max_length
        static = StaticBatches(lambda idx: tokens.batch(idx, pad, GRAPH_LENGTH_MULTIPLE, cap), logits) \
            if self.graph_steps else None
        fit_stats = fit(net, forward, len(texts), targets.to(self.backbone.device), multilabel,
                        dataclasses.replace(TRAINING, seed=self.backbone.config.seed,
                                            min_epochs=self.backbone.config.full_epochs), progress, static)
        return Model(classes=list(classes), multilabel=multilabel, encoder=self.backbone.identity, kind=self.name,
                     state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                     n_train=len(texts), stats=stats_of(targets, previous is not None, fit_stats))

    def mc_probs(self, model: Model, texts: Sequence[str], seed: int,
                 progress: Progress | None) -> torch.Tensor:
        """(N, T, C), T consistent dropout masks per layer drawn from ``seed``.

        Length-sorted batches filled to the device's token budget (T copies included), results
        scattered back to input order on the device and copied to the host once.
        """
        cfg, device = self.backbone.config, self.backbone.device
        samples = cfg.mc_samples
        net, precision = self._scoring_network(len(model.classes), model.state)
        tokens, pad = self.tokens(texts), self.tokenizer.pad_token_id or 0
        out = torch.empty(len(texts), samples, len(model.classes), device=device)
        done = 0
        with torch.inference_mode(), net.mc_dropout(samples, seed, cfg.max_length, cfg.mc_layers) as run:
            for idx in budget_batches(tokens.lengths, token_budget(device), copies=samples):
                ids, mask = tokens.batch(idx, pad)
                with precision():
                    logits = run(ids, mask)
                out[idx.to(device)] = logits_to_probs(logits.float(), model.multilabel)
                done += len(idx)
                if progress:
                    progress(done, len(texts))
        return out.cpu()


def probe_head(net: FullClassifier, tokens: Tokens, pad: int, targets: torch.Tensor, multilabel: bool) -> None:
    """Start the classifier from a logistic regression on the pretrained encoder's pooled outputs
    of the labelled texts ("linear probing, then fine-tuning", Kumar et al. 2022), not from random
    weights: the fine-tune begins at the frozen encoder's accuracy, and the first steps do not push
    a random layer's gradients into the encoder. The regression is the ``linear`` kind's (class
    weights, its penalty by the labelled set's shape) on outputs scaled to unit mean norm, the scale
    MiniLM's sentence embeddings have, and folded back into the layer's weights."""
    net.eval()
    with torch.no_grad():
        pooled = torch.cat([mean_pool(net.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
                            for ids, mask in (tokens.batch(idx, pad)
                                              for idx in torch.arange(len(tokens)).split(64))])
        scale = pooled.norm(dim=1).mean().clamp_min(1e-6)
        l2 = default_l2(targets.shape[0], targets.shape[1])
        w, b, _ = fit_logistic((pooled / scale).double().cpu(), targets.double().cpu(), multilabel, l2,
                               weights=class_weights(targets, multilabel).double().cpu())
        net.out.weight.copy_((w.T / scale.cpu()).to(net.out.weight))
        net.out.bias.copy_(b.to(net.out.bias))


def agreement_top(n: int) -> int:
    """How many top tasks the agreement criterion compares: 1000, or 10% of a smaller pool (>= 1)."""
    return 1000 if n >= 10_000 else max(1, n // 10)


def top_agreement(a: torch.Tensor, b: torch.Tensor, top: int | None = None) -> float:
    """Share of the ``top`` highest-valued tasks two acquisition value vectors (N,) have in common.

    The criterion for a scoring speed-up (issue 14): its top tasks' agreement with fp32 full
    MC must be at least fp32's own agreement with itself under another dropout seed.
    """
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"need two value vectors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    top = agreement_top(a.numel()) if top is None else min(top, a.numel())
    if top < 1:
        raise ValueError("need at least one task to compare")
    ours, theirs = set(a.float().topk(top).indices.tolist()), set(b.float().topk(top).indices.tolist())
    return len(ours & theirs) / top
