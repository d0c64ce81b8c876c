"""Metric-learning losses and miners: thin, validated wrappers around pytorch-metric-learning.

Every entry of ``LOSSES`` / ``MINERS`` is one decorated factory whose docstring's first line is its
formula (``dmlrepro list losses`` can print it). The factories never re-implement the standard
losses: they resolve the user's ``loss_args`` / ``miner_args`` against the PML class's
``__init__`` signature (unknown keys and wrongly typed values are a :class:`DmlReproError`),
fill in the defaults documented below, and instantiate the PML class.

Conventions shared by all entries
---------------------------------
* ``z`` is the head's output *before* L2 normalisation (``EmbeddingHead.forward(x, normalize=False)``)
  and ``x = z / ||z||``. Every loss below except ``npair`` normalises internally (PML's default
  ``LpDistance`` / ``CosineSimilarity`` have ``normalize_embeddings=True``), so feeding it ``x``
  instead of ``z`` gives the same value and gradient; ``npair`` too by default (cosine / temperature),
  and its Sohn (2016) form (``normalize_embeddings: false``) uses the raw dot product ``z_i . z_j``
  plus an L2 penalty on ``||z||``: the trainer always feeds raw ``z``.
* ``d(i, j) = ||x_i - x_j||_2`` (Euclidean distance on the unit sphere), ``s(i, j) = x_i . x_j``.
* Reductions are PML's: "mean over non-zero terms" (``AvgNonZeroReducer``) for contrastive and
  triplet, mean over anchors for MS and N-pair, per-proxy means for Proxy-Anchor.

Extension point (IAA, DA, SGAR come later)
------------------------------------------
:class:`Criterion` calls ``loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)``.

* A *regulariser* (e.g. density adaptivity, :mod:`.density`) wraps a base ``Criterion``::

      total = base(z, y) + w * R(z, y)

  It is a :class:`CriterionWrapper` (Criterion's call signature; ``param_groups``, ``mine``,
  ``supports_ref``... of the base plus its own parameters), registered in ``REGULARIZERS`` with
  the JSON schema of its arguments, and configured under the method's ``regularizer:`` key::

      methods.triplet_da: {loss: triplet, ..., regularizer: {density: {weight: 1.0, eta: 0.5}}}

  :func:`build_criterion` builds the base, then wraps it once per ``regularizer`` entry.
* An *augmenter* (IAA) synthesises extra embeddings and calls ``base(z, y, ref_emb=R,
  ref_labels=yR)``: only the ``z`` rows are anchors, the rows of ``R`` are the candidate
  positives/negatives. PML replaces (does not extend) the candidate set with ``ref_emb``, so ``R``
  must contain the originals too, and then an anchor meets itself in ``R``: pass an explicit
  ``indices_tuple`` (built by the augmenter, self-pairs removed) or filter the mined one. Check
  ``Criterion.supports_ref`` first: PML's ``NPairsLoss`` and ``ProxyAnchorLoss`` reject ``ref_emb``.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers
from pytorch_metric_learning import regularizers as pml_regularizers
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..errors import DmlReproError
from ..registry import Registry

__all__ = [
    "LOSSES",
    "MINERS",
    "REGULARIZERS",
    "AUGMENTERS",
    "WRAPPER_KEYS",
    "METHOD_KEYS",
    "Criterion",
    "CriterionWrapper",
    "build_criterion",
    "allowed_args",
    "method_problems",
    "method_labels",
]

LOSSES: Registry = Registry("loss")
MINERS: Registry = Registry("miner")
#: ``fn(base: Criterion, args: dict) -> CriterionWrapper``; metadata ``schema`` (JSON-schema
#: properties of its arguments, each with its ``default``) and ``label`` (how tables name it).
REGULARIZERS: Registry = Registry("regularizer", ("schema", "label"))
#: ``fn(base, args, num_classes, embedding_dim) -> CriterionWrapper`` that synthesises embeddings
#: (IAA, SGAR); same metadata as REGULARIZERS. Wraps the base loss before any regulariser does.
AUGMENTERS: Registry = Registry("augmenter", ("schema", "label"))

#: The method keys whose value maps wrapper names to their arguments, and their registries, in
#: the order build_criterion applies them (innermost first).
WRAPPER_KEYS = {"augmenter": AUGMENTERS, "regularizer": REGULARIZERS}

#: Keys of a ``methods.<name>`` block that :func:`build_criterion` consumes.
METHOD_KEYS = ("loss", "loss_args", "miner", "miner_args", "loss_lr_multiplier", *WRAPPER_KEYS)

#: Constructor arguments that are PML plumbing (objects, not YAML values) or supplied by the
#: builder itself; they are never accepted from ``loss_args`` / ``miner_args``.
_NOT_FROM_CONFIG = {"self", "num_classes", "embedding_size"}


# --------------------------------------------------------------------------------------------
# Argument resolution
# --------------------------------------------------------------------------------------------
def _signature_defaults(cls: type) -> Dict[str, Any]:
    """Named ``__init__`` parameters of a PML class with their defaults (``**kwargs`` excluded)."""
    out: Dict[str, Any] = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in _NOT_FROM_CONFIG:
            continue
        out[p.name] = None if p.default is p.empty else p.default
    return out


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, numbers.Real):
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def _resolve(
    where: str,
    user_args: Optional[Mapping[str, Any]],
    allowed: Dict[str, Any],
    choices: Mapping[str, Tuple[Any, ...]],
    nullable: frozenset = frozenset(),
) -> Dict[str, Any]:
    if user_args is None:
        user_args = {}
    if not isinstance(user_args, Mapping):
        raise DmlReproError(f"{where} must be a mapping of argument names to values, got {user_args!r}")
    for key, value in user_args.items():
        if key not in allowed:
            raise DmlReproError(
                f"unknown key {key!r} in {where}; allowed: {', '.join(sorted(allowed)) or '(none)'}"
            )
        if not (value is None and key in nullable) and not _type_ok(value, allowed[key]):
            raise DmlReproError(
                f"{where}.{key} = {value!r} has the wrong type; expected a "
                f"{type(allowed[key]).__name__} like the default {allowed[key]!r}"
            )
        if key in choices and value not in choices[key]:
            raise DmlReproError(
                f"{where}.{key} = {value!r} is not one of: {', '.join(map(repr, choices[key]))}"
            )
    return {**allowed, **dict(user_args)}


def _entry(
    kind: str,
    pml_class: type,
    *,
    defaults: Optional[Mapping[str, Any]] = None,
    extras: Optional[Mapping[str, Any]] = None,
    hidden: Tuple[str, ...] = (),
    choices: Optional[Mapping[str, Tuple[Any, ...]]] = None,
    supports_ref: bool = True,
    lr_multiplier: float = 1.0,
) -> Callable[[Callable], Callable]:
    """Turn ``fn(args, num_classes, embedding_dim) -> nn.Module`` into a validated registry entry.

    ``defaults`` override the PML signature defaults with the paper's values; ``extras`` are
    wrapper-level arguments the PML class does not have; ``hidden`` are PML arguments that are
    deliberately not configurable here.
    """
    allowed = {k: v for k, v in _signature_defaults(pml_class).items() if k not in hidden}
    unknown = set(defaults or {}) - set(allowed)
    if unknown:  # a programming error in this module, caught at import time
        raise TypeError(f"{pml_class.__name__} has no arguments {sorted(unknown)}")
    allowed.update(defaults or {})
    allowed.update(extras or {})

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def build(user_args=None, num_classes: int = 0, embedding_dim: int = 0, *, where: str = kind):
            return fn(_resolve(where, user_args, allowed, choices or {}), num_classes, embedding_dim)

        build.pml_class = pml_class
        build.defaults = dict(allowed)
        build.choices = dict(choices or {})
        build.formula = (fn.__doc__ or "").strip().splitlines()[0]
        build.supports_ref = supports_ref
        build.lr_multiplier = lr_multiplier
        return build

    return decorator


def allowed_args(kind: str, name: str) -> Dict[str, Any]:
    """The accepted ``loss_args`` (kind='loss') or ``miner_args`` (kind='miner') and their defaults."""
    registry = LOSSES if kind == "loss" else MINERS
    return dict(registry.get(name).defaults)


def wrapper_args(where: str, cfg: Any, registry: Registry = REGULARIZERS) -> Dict[str, Dict[str, Any]]:
    """A method's ``regularizer`` (or ``augmenter``) block, validated: {name: its arguments with
    the defaults filled in}. Unknown names or keys, wrong types and out-of-range values name the key."""
    import jsonschema

    if cfg is None:
        return {}
    if not isinstance(cfg, Mapping):
        raise DmlReproError(f"{where} must map {registry.kind} names to their arguments, got {cfg!r}")
    resolved = {}
    for name, args in cfg.items():
        schema = registry.metadata(name)["schema"]  # an unknown name lists the known ones
        nullable = frozenset(k for k, v in schema.items() if "null" in str(v.get("type")) or None in v.get("enum", ()))
        args = _resolve(f"{where}.{name}", args, {k: v["default"] for k, v in schema.items()}, {}, nullable)
        for e in jsonschema.Draft202012Validator({"properties": schema}).iter_errors(args):
            key = ".".join(map(str, e.absolute_path))
            raise DmlReproError(f"{where}.{name}.{key} = {e.instance!r}: {e.message}")
        resolved[name] = args
    return resolved


def variant_switch(kind: Mapping[str, Any], description: str) -> Dict[str, Any]:
    """The schema of a paper-versus-code switch: null (the default) takes the chosen variant's value."""
    return {**kind, "default": None, "description": f"{description} (null: the variant's value)"}


def resolve_variant(args: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """``args`` with every null switch replaced by the value of ``variants[args["variant"]]``; a
    switch given explicitly wins over its variant."""
    preset = variants[args["variant"]]
    return {**args, **{k: preset[k] if args.get(k) is None else args[k] for k in preset}}


def method_problems(method_cfg: Mapping[str, Any]) -> list:
    """Problems in a method's ``loss_args`` / ``miner_args`` / ``regularizer`` (typos, wrong types),
    found before any training starts; [] when the method is sound."""
    problems = []
    for key, registry in WRAPPER_KEYS.items():
        try:
            wrapper_args(key, method_cfg.get(key), registry)
        except DmlReproError as exc:
            problems.append(str(exc))
    for kind, registry in (("loss", LOSSES), ("miner", MINERS)):
        name = method_cfg.get(kind)
        if name in (None, "none") or name not in registry:
            continue
        entry = registry.get(name)
        try:
            _resolve(f"{kind}_args", method_cfg.get(f"{kind}_args"), entry.defaults, entry.choices)
        except DmlReproError as exc:
            problems.append(str(exc))
    return problems


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------
@LOSSES.register("contrastive")
@_entry("loss_args", pml_losses.ContrastiveLoss, defaults={"pos_margin": 0.0, "neg_margin": 1.0})
def contrastive(args, num_classes, embedding_dim):
    """Contrastive (Hadsell et al. 2006): mean_{pos, >0} [d - pos_margin]_+ + mean_{neg, >0} [neg_margin - d]_+.

    Defaults pos_margin 0, neg_margin 1 (PML's; neg_margin 1 on the unit sphere is cosine 0.5, the
    negative threshold of the IAA code's similarity-form contrastive). Hadsell et al. square the
    hinge terms; PML (and this entry) does not.
    """
    return pml_losses.ContrastiveLoss(**args)


class _SumPerAnchorReducer(pml_reducers.BaseReducer):
    """Sum of every pair's (triplet's) loss divided by the number of anchors (the IAA code's reduction)."""

    def element_reduction(self, losses, loss_indices, embeddings, labels):
        return losses.sum() / max(len(embeddings), 1)

    pos_pair_reduction = neg_pair_reduction = triplet_reduction = element_reduction


#: ``reduction`` of the pair and triplet losses that offer one: PML's mean over the non-zero
#: terms, or the IAA paper's / code's sum over every term divided by the number of anchors B
REDUCTIONS = ("mean_nonzero", "sum_per_anchor")


def _reducer(reduction: str) -> pml_reducers.BaseReducer:
    return _SumPerAnchorReducer() if reduction == "sum_per_anchor" else pml_reducers.AvgNonZeroReducer()


@LOSSES.register("triplet")
@_entry(
    "loss_args",
    pml_losses.TripletMarginLoss,
    defaults={"margin": 0.2},
    extras={"reduction": "mean_nonzero"},
    choices={"reduction": REDUCTIONS},
    hidden=("triplets_per_anchor",),  # int values subsample with the global RNG: not reproducible
)
def triplet(args, num_classes, embedding_dim):
    """Triplet (Schroff et al. 2015): mean over triplets with l > 0 of l = [d(a,p) - d(a,n) + margin]_+.

    Default margin 0.2 (FaceNet's alpha; FaceNet uses squared distances, PML plain ones). All
    triplets of the batch are used unless a miner selects some; ``swap`` uses min(d(a,n), d(p,n));
    ``smooth_loss`` replaces the hinge by softplus. ``reduction: sum_per_anchor`` is the IAA
    paper's 1/n sum_i sum_{(j,k) in T_i} (Eq. 3 and 19) instead of PML's mean over non-zero terms.
    """
    return pml_losses.TripletMarginLoss(reducer=_reducer(args.pop("reduction")), **args)


class ScaledDotProductSimilarity(pml_distances.DotProductSimilarity):
    """Dot-product similarity divided by a temperature: cosine / T when normalising, so the
    softmax of N-pair sees logits in [-1/T, 1/T] instead of raw dot products in the hundreds."""

    def __init__(self, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def compute_mat(self, query_emb, ref_emb):
        return super().compute_mat(query_emb, ref_emb) / self.temperature


@LOSSES.register("npair")
@_entry(
    "loss_args",
    pml_losses.NPairsLoss,
    extras={"normalize_embeddings": True, "temperature": 0.1, "l2_reg": 0.0},
    supports_ref=False,
)
def npair(args, num_classes, embedding_dim):
    """N-pair (Sohn 2016): mean_i CE(softmax_j(f_i . f_j+ / T), i) + (l2_reg / 2) * mean_batch ||z||^2, one (f_i, f_i+) per class.

    Default: f = x (unit embeddings), temperature T = 0.1 (logits are cosines / T), no L2 penalty.
    On features of norm ~28 the raw form's logits reach the hundreds and its softmax saturates
    (loss ~231 at the first epoch on glyphs), so the cosine form with a temperature is the fair
    default. Sohn's form, raw dot products of z plus an L2 penalty, is
    ``{normalize_embeddings: false, temperature: 1.0, l2_reg: 0.002}``: l2_reg 0.002 is the value of
    the reference implementations (TensorFlow ``npairs_loss`` reg_lambda, Paddle ``npair_loss``
    l2_reg), whose penalty 0.25 * l2_reg * (mean ||f_a||^2 + mean ||f_p||^2) equals
    (l2_reg / 2) * mean ||z||^2 when every embedding is in a pair; here the mean runs over the whole
    batch. The trainer logs the mean ||z|| per epoch (``embedding_norm``). PML picks, per class,
    the first two batch positions of that class as (anchor, positive); other images of the class
    are unused by the N-pair term (they still get the L2 penalty). Classes with one image in the
    batch take no part; a batch with no pair gives a zero (but differentiable) loss.
    """
    temperature, l2_reg = float(args["temperature"]), float(args["l2_reg"])
    if temperature <= 0:
        raise DmlReproError(f"npair loss_args.temperature must be > 0, got {temperature}")
    if l2_reg < 0:
        raise DmlReproError(f"npair loss_args.l2_reg must be >= 0, got {l2_reg}")
    distance = ScaledDotProductSimilarity(temperature, normalize_embeddings=bool(args["normalize_embeddings"]))
    if l2_reg > 0:
        return pml_losses.NPairsLoss(
            distance=distance,
            embedding_regularizer=pml_regularizers.LpRegularizer(p=2, power=2),
            embedding_reg_weight=l2_reg / 2.0,
        )
    return pml_losses.NPairsLoss(distance=distance)


@LOSSES.register("multi_similarity")
@_entry("loss_args", pml_losses.MultiSimilarityLoss, defaults={"alpha": 2.0, "beta": 50.0, "base": 0.5})
def multi_similarity(args, num_classes, embedding_dim):
    """Multi-Similarity (Wang et al. 2019): mean_i [ 1/alpha log(1 + sum_P e^{-alpha (s_ik - base)}) + 1/beta log(1 + sum_N e^{beta (s_ik - base)}) ].

    Defaults alpha 2, beta 50, base (lambda) 0.5 are PML's; the official MS code (and the IAA
    paper) use beta 40. The pair selection with margin epsilon is the separate
    ``multi_similarity`` miner. Anchors without pairs count as 0 in the mean.
    """
    return pml_losses.MultiSimilarityLoss(**args)


@LOSSES.register("proxy_anchor")
@_entry(
    "loss_args",
    pml_losses.ProxyAnchorLoss,
    defaults={"margin": 0.1, "alpha": 32.0},
    supports_ref=False,
    lr_multiplier=100.0,
)
def proxy_anchor(args, num_classes, embedding_dim):
    """Proxy-Anchor (Kim et al. 2020): 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} e^{-alpha (s(x,p) - margin)}) + 1/|P| sum_p log(1 + sum_{x in X_p-} e^{alpha (s(x,p) + margin)}).

    s = cosine similarity between embedding and proxy; P = all C proxies, P+ = proxies with a
    positive in the batch. Defaults alpha 32, margin 0.1 and loss_lr_multiplier 100 (proxies at
    100x the base lr) are the paper's / official code's. Proxies: C x D, Kaiming-normal (fan_out)
    init from the torch RNG at construction (seed torch before building). Labels must be
    0..num_classes-1.
    """
    if num_classes < 1 or embedding_dim < 1:
        raise DmlReproError(
            f"proxy_anchor needs num_classes >= 1 and embedding_dim >= 1, got {num_classes} and {embedding_dim}"
        )
    return pml_losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embedding_dim, **args)


@LOSSES.register("contrastive_similarity")
@_entry(
    "loss_args",
    pml_losses.ContrastiveLoss,
    defaults={"pos_margin": 0.8, "neg_margin": 0.5},
    extras={"reduction": "sum_per_anchor"},
    choices={"reduction": REDUCTIONS},
)
def contrastive_similarity(args, num_classes, embedding_dim):
    """Contrastive, similarity form (IAA code): [sum_pos [pos_margin - s]_+ + sum_neg [s - neg_margin]_+] / B.

    s = cosine similarity. Defaults pos_margin 0.8, neg_margin 0.5 and the reduction (the sum over
    every pair divided by the number of anchors B) are the IAA code's ``ContrastiveLoss``;
    ``reduction: mean_nonzero`` is PML's mean over the non-zero terms.
    """
    return pml_losses.ContrastiveLoss(distance=pml_distances.CosineSimilarity(), reducer=_reducer(args.pop("reduction")),
                                      **args)


@LOSSES.register("margin")
@_entry("loss_args", pml_losses.MarginLoss, hidden=("triplets_per_anchor", "learn_beta"))
def margin(args, num_classes, embedding_dim):
    """Margin (Wu et al. 2017): mean over pairs with l > 0 of l = [margin + y_ij (d(i,j) - beta)]_+, y = +1 positive, -1 negative.

    Defaults margin 0.2, beta 1.2 (the paper's and PML's), fixed beta; pair it with the
    ``distance_weighted`` miner as Wu et al. do.
    """
    return pml_losses.MarginLoss(**args)


@LOSSES.register("circle")
@_entry("loss_args", pml_losses.CircleLoss)
def circle(args, num_classes, embedding_dim):
    """Circle (Sun et al. 2020): softplus(logsumexp_neg gamma a_n (s_n - Delta_n) + logsumexp_pos -gamma a_p (s_p - Delta_p)), a and Delta from m.

    Defaults m 0.4, gamma 80 (the paper's fine-grained settings, PML's defaults).
    """
    return pml_losses.CircleLoss(**args)


def _proxy_loss(pml_class, args, num_classes, embedding_dim):
    if num_classes < 1 or embedding_dim < 1:
        raise DmlReproError(f"{pml_class.__name__} needs num_classes >= 1 and embedding_dim >= 1, "
                            f"got {num_classes} and {embedding_dim}")
    return pml_class(num_classes=num_classes, embedding_size=embedding_dim, **args)


@LOSSES.register("normalized_softmax")
@_entry("loss_args", pml_losses.NormalizedSoftmaxLoss, supports_ref=False, lr_multiplier=100.0)
def normalized_softmax(args, num_classes, embedding_dim):
    """Normalized softmax (Zhai & Wu 2019): mean_i CE(softmax_c(cos(x_i, w_c) / temperature), y_i), one proxy w_c per class.

    Default temperature 0.05 (PML's); proxies at 100x the base lr, as Proxy-Anchor (not tuned).
    """
    return _proxy_loss(pml_losses.NormalizedSoftmaxLoss, args, num_classes, embedding_dim)


@LOSSES.register("proxy_nca")
@_entry("loss_args", pml_losses.ProxyNCALoss, supports_ref=False, lr_multiplier=100.0)
def proxy_nca(args, num_classes, embedding_dim):
    """Proxy-NCA (Movshovitz-Attias et al. 2017): mean_i -log(e^{-d(x_i,p_y)^2 s} / sum_{c != y} e^{-d(x_i,p_c)^2 s}), s = softmax_scale.

    Default softmax_scale 1 (PML's); proxies at 100x the base lr, as Proxy-Anchor (not tuned).
    """
    return _proxy_loss(pml_losses.ProxyNCALoss, args, num_classes, embedding_dim)


@LOSSES.register("soft_triple")
@_entry("loss_args", pml_losses.SoftTripleLoss, supports_ref=False, lr_multiplier=100.0)
def soft_triple(args, num_classes, embedding_dim):
    """SoftTriple (Qian et al. 2019): softmax over classes of la (S'_c - margin 1[c = y]), S'_c a soft max over the class's centers with 1/gamma.

    Defaults centers_per_class 10, la 20, gamma 0.1, margin 0.01 (the paper's); centers at 100x the
    base lr (the paper trains them at 100x: 0.01 vs 1e-4).
    """
    return _proxy_loss(pml_losses.SoftTripleLoss, args, num_classes, embedding_dim)


# --------------------------------------------------------------------------------------------
# Miners
# --------------------------------------------------------------------------------------------
_TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


@MINERS.register("triplet_margin")
@_entry(
    "miner_args",
    pml_miners.TripletMarginMiner,
    defaults={"margin": 0.2, "type_of_triplets": "semihard"},
    choices={"type_of_triplets": _TRIPLET_TYPES},
)
def triplet_margin(args, num_classes, embedding_dim):
    """Triplet margin miner: keeps (a, p, n) with d(a,n) - d(a,p) <= margin (semihard: also > 0; hard: <= 0; easy: > margin).

    Defaults margin 0.2 and semi-hard triplets, FaceNet's choices (PML's default type is 'all').
    """
    return pml_miners.TripletMarginMiner(**args)


class HardestNegativeMiner(pml_miners.BaseMiner):
    """Every positive pair (a, p) of the candidate set, each with a's hardest (nearest) negative."""

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        mat = self.distance(embeddings, ref_emb)
        # PML's convention: ref_labels *is* labels when there is no ref set, then (a, a) is no pair
        matches, diffs = (m.bool() for m in lmu.get_matches_and_diffs(labels, ref_labels))
        if self.distance.is_inverted:  # a similarity: the hardest negative is the most similar
            hardest = mat.masked_fill(~diffs, -math.inf).argmax(1)
        else:
            hardest = mat.masked_fill(~diffs, math.inf).argmin(1)
        a, p = torch.nonzero(matches & diffs.any(1, keepdim=True), as_tuple=True)
        return a, p, hardest[a]


@MINERS.register("hardest_negative")
@_entry("miner_args", HardestNegativeMiner)
def hardest_negative(args, num_classes, embedding_dim):
    """Hardest-negative miner (IAA Eq. 19): every positive (a, p), each with n = argmin_{k: y_k != y_a} d(a, k).

    No arguments. With the triplet loss this is the IAA paper's Triplet, "all available positive
    samples" against "the hardest negative" (Eq. 19), the form of the ``HardNegative`` sampler of
    MDR (kakaoenterprise/AAAI2021_MDR, the code base of IAA's release); anchors without a negative
    give no triplet. Under IAA the candidates are originals + synthetics and only originals anchor.
    """
    return HardestNegativeMiner(**args)


@MINERS.register("multi_similarity")
@_entry("miner_args", pml_miners.MultiSimilarityMiner, defaults={"epsilon": 0.1})
def multi_similarity_miner(args, num_classes, embedding_dim):
    """MS miner (Wang et al. 2019): keep positive (i,k) if s_ik - epsilon < max_neg s_i; negative (i,k) if s_ik + epsilon > min_pos s_i.

    Default epsilon 0.1 (the paper's).
    """
    return pml_miners.MultiSimilarityMiner(**args)


@MINERS.register("batch_hard")
@_entry("miner_args", pml_miners.BatchHardMiner)
def batch_hard(args, num_classes, embedding_dim):
    """Batch-hard miner (Hermans et al. 2017): one triplet per anchor: its farthest positive and its nearest negative.

    No arguments.
    """
    return pml_miners.BatchHardMiner(**args)


@MINERS.register("distance_weighted")
@_entry("miner_args", pml_miners.DistanceWeightedMiner)
def distance_weighted(args, num_classes, embedding_dim):
    """Distance-weighted sampling (Wu et al. 2017): per anchor, negatives drawn with weight 1/q(d) for d in [cutoff, nonzero_loss_cutoff].

    Defaults cutoff 0.5, nonzero_loss_cutoff 1.4 (the paper's). Draws from the global torch RNG,
    which the trainer re-seeds every epoch.
    """
    return pml_miners.DistanceWeightedMiner(**args)


@MINERS.register("pair_margin")
@_entry("miner_args", pml_miners.PairMarginMiner, defaults={"pos_margin": 0.2, "neg_margin": 0.8})
def pair_margin(args, num_classes, embedding_dim):
    """Pair margin miner: keeps positive pairs with d > pos_margin and negative pairs with d < neg_margin.

    Defaults pos_margin 0.2, neg_margin 0.8 (PML's).
    """
    return pml_miners.PairMarginMiner(**args)


# --------------------------------------------------------------------------------------------
# Criterion
# --------------------------------------------------------------------------------------------
class Criterion(torch.nn.Module):
    """A base loss plus an optional miner: ``criterion(z, labels) -> scalar``.

    ``parameters()`` holds the loss's trainable tensors (Proxy-Anchor's proxies; empty otherwise);
    give them ``lr * lr_multiplier`` (see :meth:`param_groups`).
    """

    def __init__(
        self,
        loss: torch.nn.Module,
        miner: Optional[torch.nn.Module] = None,
        *,
        lr_multiplier: float = 1.0,
        name: str = "",
        supports_ref: bool = True,
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.lr_multiplier = float(lr_multiplier)
        self.name = name
        self.supports_ref = supports_ref
        #: labels must lie in [0, num_classes) when the loss owns per-class parameters
        self.num_classes = num_classes

    def mine(self, embeddings, labels, ref_emb=None, ref_labels=None):
        """The miner's indices tuple, or None (all pairs / triplets) without a miner."""
        if self.miner is None:
            return None
        return self.miner(embeddings, labels, ref_emb, ref_labels)

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None, indices_tuple=None):
        """Loss of a batch. ``ref_emb``/``ref_labels``: candidate set replacing the batch (augmenters);
        ``indices_tuple``: explicit pairs/triplets (skips the miner)."""
        self._check(embeddings, labels, ref_emb, ref_labels)
        if indices_tuple is None:
            indices_tuple = self.mine(embeddings, labels, ref_emb, ref_labels)
        return self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def start_epoch(self, epoch: int, epochs: int, train_embeddings: Callable) -> None:
        """Called by the trainer before each epoch's first step (after the epoch's generators are
        re-seeded). ``train_embeddings(augmented=False)`` returns (z, labels) of the whole training
        set (raw, un-normalised, no gradient; each image's plain view, or with ``augmented`` one
        view drawn as the training steps draw theirs), computed on demand: wrappers that keep
        statistics (IAA) use it; the base loss has nothing to do."""

    def clip_gradients(self, parameters: list, max_norm: Optional[float] = None) -> None:
        """Clip a step's gradients (after backward, before the optimizer step; AMP unscaled): their
        global norm at the trainer's ``max_norm`` (None: no clipping). A method whose released code
        clips otherwise overrides it (SGAR's code variant clips each value)."""
        if max_norm:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def param_groups(self, lr: float) -> list:
        """Optimizer parameter groups for the loss's own parameters ([] when it has none)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr * self.lr_multiplier, "name": f"loss:{self.name}"}] if params else []

    def _check(self, embeddings, labels, ref_emb, ref_labels):
        if embeddings.ndim != 2 or labels.ndim != 1 or len(labels) != len(embeddings):
            raise ValueError(
                f"expected embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
            )
        if (ref_emb is None) != (ref_labels is None):
            raise ValueError("ref_emb and ref_labels go together")
        if ref_emb is not None and not self.supports_ref:
            raise ValueError(f"loss {self.name!r} does not accept ref_emb/ref_labels (PML limitation)")
        if not torch.isfinite(embeddings).all():
            raise FloatingPointError(
                f"non-finite embeddings reached loss {self.name!r} (diverged training?); "
                "try a lower train.lr or loss_lr_multiplier"
            )
        if self.num_classes is not None and len(labels):
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"loss {self.name!r} needs labels in [0, {self.num_classes}), got range [{lo}, {hi}]"
                )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, lr_multiplier={self.lr_multiplier}"


class CriterionWrapper(torch.nn.Module):
    """A method composed around a base :class:`Criterion` (DA's regulariser; IAA's augmenter and
    SGAR later). ``forward`` keeps Criterion's signature; everything else is the base's, plus the
    wrapper's own trainable parameters (at the base lr) if it has any."""

    def __init__(self, base: torch.nn.Module):
        super().__init__()
        self.base = base

    name = property(lambda self: self.base.name)
    supports_ref = property(lambda self: self.base.supports_ref)
    lr_multiplier = property(lambda self: self.base.lr_multiplier)
    num_classes = property(lambda self: self.base.num_classes)

    def mine(self, embeddings, labels, ref_emb=None, ref_labels=None):
        return self.base.mine(embeddings, labels, ref_emb, ref_labels)

    def start_epoch(self, epoch: int, epochs: int, train_embeddings: Callable) -> None:
        self.base.start_epoch(epoch, epochs, train_embeddings)

    def clip_gradients(self, parameters: list, max_norm: Optional[float] = None) -> None:
        self.base.clip_gradients(parameters, max_norm)

    def param_groups(self, lr: float) -> list:
        own = [p for n, p in self.named_parameters() if not n.startswith("base.") and p.requires_grad]
        return self.base.param_groups(lr) + ([{"params": own, "lr": lr, "name": f"wrapper:{self.name}"}] if own else [])


def build_criterion(
    method_cfg: Mapping[str, Any], num_classes: int, embedding_dim: int, *, name: Optional[str] = None
) -> torch.nn.Module:
    """Build the Criterion of one ``methods.<name>`` block of params.yaml.

    Keys: ``loss`` (required, a LOSSES name), ``loss_args`` (mapping, optional), ``miner``
    (optional, a MINERS name or null), ``miner_args`` (mapping, optional, needs ``miner``),
    ``loss_lr_multiplier`` (optional positive number; default per loss: 100 for proxy_anchor,
    1 otherwise). ``num_classes`` = number of training classes (labels 0..C-1),
    ``embedding_dim`` = head output size. ``name`` only improves error messages.
    ``regularizer`` (optional mapping, a REGULARIZERS name -> its arguments) wraps the base
    Criterion in each regularizer in turn (a :class:`CriterionWrapper`).
    Seed torch before calling: Proxy-Anchor draws its proxies from the torch RNG.
    """
    where = f"methods.{name}" if name else "method"
    if not isinstance(method_cfg, Mapping):
        raise DmlReproError(f"{where} must be a mapping with at least a 'loss' key, got {method_cfg!r}")
    unknown = sorted(set(method_cfg) - set(METHOD_KEYS))
    if unknown:
        raise DmlReproError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; allowed: {', '.join(METHOD_KEYS)}"
        )
    loss_name = method_cfg.get("loss")
    if loss_name is None:
        raise DmlReproError(f"{where} has no 'loss'; available: {', '.join(LOSSES.names())}")
    if loss_name == "none":
        raise DmlReproError(
            f"{where}: loss 'none' (frozen backbone) trains nothing and has no criterion; "
            "the trainer handles it before building one"
        )
    loss_entry = LOSSES.get(loss_name)
    loss = loss_entry(method_cfg.get("loss_args"), num_classes, embedding_dim, where=f"{where}.loss_args")

    miner = None
    miner_name = method_cfg.get("miner")
    if miner_name is not None:
        miner = MINERS.get(miner_name)(method_cfg.get("miner_args"), num_classes, embedding_dim,
                                       where=f"{where}.miner_args")
    elif method_cfg.get("miner_args"):
        raise DmlReproError(f"{where}.miner_args is set but {where}.miner is not; add a miner or drop miner_args")

    lr_mult = method_cfg.get("loss_lr_multiplier", loss_entry.lr_multiplier)
    if (
        not isinstance(lr_mult, numbers.Real)
        or isinstance(lr_mult, bool)
        or not math.isfinite(lr_mult)
        or lr_mult <= 0
    ):
        raise DmlReproError(f"{where}.loss_lr_multiplier must be a positive number, got {lr_mult!r}")

    criterion = Criterion(
        loss,
        miner,
        lr_multiplier=float(lr_mult),
        name=str(loss_name),
        supports_ref=loss_entry.supports_ref,
        num_classes=num_classes if any(True for _ in loss.parameters()) else None,  # proxies: labels < C
    )
    for aug_name, args in wrapper_args(f"{where}.augmenter", method_cfg.get("augmenter"), AUGMENTERS).items():
        criterion = AUGMENTERS.get(aug_name)(criterion, args, num_classes, embedding_dim)
    for reg_name, args in wrapper_args(f"{where}.regularizer", method_cfg.get("regularizer")).items():
        criterion = REGULARIZERS.get(reg_name)(criterion, args)
    return criterion


def method_labels(method_cfg: Mapping[str, Any]) -> list:
    """How tables and MLflow name what wraps the base loss, e.g. ['DA (reconstructed)']."""
    return [registry.metadata(n)["label"] for key, registry in WRAPPER_KEYS.items()
            for n in (method_cfg.get(key) or {}) if n in registry]
