"""The standard losses and miners: validated factories of pytorch-metric-learning classes.

Every entry of ``LOSSES`` / ``MINERS`` is one factory decorated with :func:`.arguments.pml_entry`:
its docstring's first line is its formula (``dmlrepro list losses`` prints it), the rest its
defaults and where they come from. A factory never re-implements a loss: it gets the user's
``loss_args`` / ``miner_args`` checked against the PML class's ``__init__`` signature, with the
paper's defaults filled in, and instantiates the PML class. Three small PML subclasses add what PML
lacks: the IAA code's sum-per-anchor reduction, N-pair's temperature, IAA's hardest-negative miner.

Conventions, with z the head's output before L2 normalisation and x = z / ||z||::

    d(i, j) = ||x_i - x_j||_2  (Euclidean on the unit sphere),    s(i, j) = x_i . x_j

Every loss normalises internally, so z and x give the same value and gradient; N-pair's Sohn form
(``normalize_embeddings: false``) uses the raw z_i . z_j plus an L2 penalty on ||z||, so the
trainer always feeds raw z. Reductions are PML's: the mean over non-zero terms for contrastive and
triplet, over anchors for MS and N-pair, per-proxy means for Proxy-Anchor.
Design notes and evidence: docs/methods/standard.md.
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers
from pytorch_metric_learning import regularizers as pml_regularizers
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..errors import DmlReproError
from ..registry import Registry
from .arguments import pml_entry
from .kernels import MultiSimilarityMiner

LOSSES: Registry = Registry("loss")
MINERS: Registry = Registry("miner")


def allowed_args(kind: str, name: str) -> Dict[str, Any]:
    """The accepted ``loss_args`` (kind='loss') or ``miner_args`` (kind='miner') and their defaults."""
    registry = LOSSES if kind == "loss" else MINERS
    return dict(registry.get(name).defaults)

# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------
@LOSSES.register("contrastive")
@pml_entry("loss_args", pml_losses.ContrastiveLoss, defaults={"pos_margin": 0.0, "neg_margin": 1.0})
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
@pml_entry(
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
@pml_entry(
    "loss_args",
    pml_losses.NPairsLoss,
    extras={"normalize_embeddings": True, "temperature": 0.1, "l2_reg": 0.0},
    supports_ref=False,
)
def npair(args, num_classes, embedding_dim):
    """N-pair (Sohn 2016): mean_i CE(softmax_j(f_i . f_j+ / T), i) + (l2_reg / 2) * mean_batch ||z||^2, one (f_i, f_i+) per class.

    Default: f = x (unit embeddings), temperature T = 0.1 (logits are cosines / T), no L2 penalty
    (why: docs/methods/standard.md). Sohn's form, raw dot products of z plus an L2 penalty, is
    ``{normalize_embeddings: false, temperature: 1.0, l2_reg: 0.002}`` (the reference
    implementations' value); the mean of the penalty runs over the whole batch. PML picks, per class,
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
@pml_entry("loss_args", pml_losses.MultiSimilarityLoss, defaults={"alpha": 2.0, "beta": 50.0, "base": 0.5})
def multi_similarity(args, num_classes, embedding_dim):
    """Multi-Similarity (Wang et al. 2019): mean_i [ 1/alpha log(1 + sum_P e^{-alpha (s_ik - base)}) + 1/beta log(1 + sum_N e^{beta (s_ik - base)}) ].

    Defaults alpha 2, beta 50, base (lambda) 0.5 are PML's; the official MS code (and the IAA
    paper) use beta 40. The pair selection with margin epsilon is the separate
    ``multi_similarity`` miner. Anchors without pairs count as 0 in the mean.
    """
    return pml_losses.MultiSimilarityLoss(**args)


def _proxy_loss(pml_class, args, num_classes, embedding_dim, name=None):
    """A loss with one proxy (or more) per class: C x D parameters drawn from the torch RNG."""
    if num_classes < 1 or embedding_dim < 1:
        raise DmlReproError(f"{name or pml_class.__name__} needs num_classes >= 1 and embedding_dim >= 1, "
                            f"got {num_classes} and {embedding_dim}")
    return pml_class(num_classes=num_classes, embedding_size=embedding_dim, **args)


@LOSSES.register("proxy_anchor")
@pml_entry(
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
    return _proxy_loss(pml_losses.ProxyAnchorLoss, args, num_classes, embedding_dim, name="proxy_anchor")


@LOSSES.register("contrastive_similarity")
@pml_entry(
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
@pml_entry("loss_args", pml_losses.MarginLoss, hidden=("triplets_per_anchor", "learn_beta"))
def margin(args, num_classes, embedding_dim):
    """Margin (Wu et al. 2017): mean over pairs with l > 0 of l = [margin + y_ij (d(i,j) - beta)]_+, y = +1 positive, -1 negative.

    Defaults margin 0.2, beta 1.2 (the paper's and PML's), fixed beta; pair it with the
    ``distance_weighted`` miner as Wu et al. do.
    """
    return pml_losses.MarginLoss(**args)


@LOSSES.register("circle")
@pml_entry("loss_args", pml_losses.CircleLoss)
def circle(args, num_classes, embedding_dim):
    """Circle (Sun et al. 2020): softplus(logsumexp_neg gamma a_n (s_n - Delta_n) + logsumexp_pos -gamma a_p (s_p - Delta_p)), a and Delta from m.

    Defaults m 0.4, gamma 80 (the paper's fine-grained settings, PML's defaults).
    """
    return pml_losses.CircleLoss(**args)


@LOSSES.register("normalized_softmax")
@pml_entry("loss_args", pml_losses.NormalizedSoftmaxLoss, supports_ref=False, lr_multiplier=100.0)
def normalized_softmax(args, num_classes, embedding_dim):
    """Normalized softmax (Zhai & Wu 2019): mean_i CE(softmax_c(cos(x_i, w_c) / temperature), y_i), one proxy w_c per class.

    Default temperature 0.05 (PML's); proxies at 100x the base lr, as Proxy-Anchor (not tuned).
    """
    return _proxy_loss(pml_losses.NormalizedSoftmaxLoss, args, num_classes, embedding_dim)


@LOSSES.register("proxy_nca")
@pml_entry("loss_args", pml_losses.ProxyNCALoss, supports_ref=False, lr_multiplier=100.0)
def proxy_nca(args, num_classes, embedding_dim):
    """Proxy-NCA (Movshovitz-Attias et al. 2017): mean_i -log(e^{-d(x_i,p_y)^2 s} / sum_{c != y} e^{-d(x_i,p_c)^2 s}), s = softmax_scale.

    Default softmax_scale 1 (PML's); proxies at 100x the base lr, as Proxy-Anchor (not tuned).
    """
    return _proxy_loss(pml_losses.ProxyNCALoss, args, num_classes, embedding_dim)


@LOSSES.register("soft_triple")
@pml_entry("loss_args", pml_losses.SoftTripleLoss, supports_ref=False, lr_multiplier=100.0)
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
@pml_entry(
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
@pml_entry("miner_args", HardestNegativeMiner)
def hardest_negative(args, num_classes, embedding_dim):
    """Hardest-negative miner (IAA Eq. 19): every positive (a, p), each with n = argmin_{k: y_k != y_a} d(a, k).

    No arguments. With the triplet loss this is the IAA paper's Triplet, "all available positive
    samples" against "the hardest negative" (Eq. 19), the form of the ``HardNegative`` sampler of
    MDR (kakaoenterprise/AAAI2021_MDR, the code base of IAA's release); anchors without a negative
    give no triplet. Under IAA the candidates are originals + synthetics and only originals anchor.
    """
    return HardestNegativeMiner(**args)


@MINERS.register("multi_similarity")
@pml_entry("miner_args", pml_miners.MultiSimilarityMiner, defaults={"epsilon": 0.1})
def multi_similarity_miner(args, num_classes, embedding_dim):
    """MS miner (Wang et al. 2019): keep positive (i,k) if s_ik - epsilon < max_neg s_i; negative (i,k) if s_ik + epsilon > min_pos s_i.

    Default epsilon 0.1 (the paper's). PML's class with a sort-free ``mine`` (:mod:`.kernels`): the same pairs.
    """
    return MultiSimilarityMiner(**args)


@MINERS.register("batch_hard")
@pml_entry("miner_args", pml_miners.BatchHardMiner)
def batch_hard(args, num_classes, embedding_dim):
    """Batch-hard miner (Hermans et al. 2017): one triplet per anchor: its farthest positive and its nearest negative.

    No arguments.
    """
    return pml_miners.BatchHardMiner(**args)


@MINERS.register("distance_weighted")
@pml_entry("miner_args", pml_miners.DistanceWeightedMiner)
def distance_weighted(args, num_classes, embedding_dim):
    """Distance-weighted sampling (Wu et al. 2017): per anchor, negatives drawn with weight 1/q(d) for d in [cutoff, nonzero_loss_cutoff].

    Defaults cutoff 0.5, nonzero_loss_cutoff 1.4 (the paper's). Draws from the global torch RNG,
    which the trainer re-seeds every epoch.
    """
    return pml_miners.DistanceWeightedMiner(**args)


@MINERS.register("pair_margin")
@pml_entry("miner_args", pml_miners.PairMarginMiner, defaults={"pos_margin": 0.2, "neg_margin": 0.8})
def pair_margin(args, num_classes, embedding_dim):
    """Pair margin miner: keeps positive pairs with d > pos_margin and negative pairs with d < neg_margin.

    Defaults pos_margin 0.2, neg_margin 0.8 (PML's).
    """
    return pml_miners.PairMarginMiner(**args)
