"""DA (reconstructed): a density-adaptivity regulariser for pair- and triplet-based losses.

Source, and why "reconstructed"
-------------------------------
Li, Yao, Pan, Chao, Mei, "Deep Metric Learning with Density Adaptivity", IEEE Transactions on
Multimedia 22(5), 2020 (arXiv 1909.03909). Only the abstract could be read: the paper's method
section, equations and hyper-parameters were not found (searched: documentation, code and web
corpora; a full-text copy is indexed but only its first page is retrievable, and no
re-implementation turned up). So this is a reconstruction that does what the abstract says and
nothing more specific, named "DA (reconstructed)" in every table row, in the MLflow tag
``method_note`` and in the README, until the published formula is confirmed. The abstract says:

* a class whose training examples are embedded too tightly (its *density* is too high) makes the
  embedding overfit;
* density is "the measure of data concentration in the representation";
* it is used as a regulariser, pluggable into contrastive, N-pair and triplet losses, that
  "adaptively balances inter-class similarity and intra-class variation", trained end to end.

Definition (one batch)
----------------------
``x_i = z_i / ||z_i||`` are the unit embeddings retrieval ranks (whatever the base loss feeds on),
``y_i`` the labels, ``C`` the classes of the batch, ``n_c`` the number of samples of class ``c``::

    mu_c = 1/n_c  sum_{y_i = c} x_i                 centre (the mean, not renormalised)
    s_c  = 1/n_c  sum_{y_i = c} ||x_i - mu_c||      spread: mean distance to the centre
    d_c  = min_{c' in C, c' != c} ||mu_c - mu_c'||  separation: distance to the nearest other centre
    R    = 1/|C*| sum_{c in C*} [eta * d_c - s_c]_+,   C* = {c in C : n_c >= 2}
    loss = base(z, y) + weight * R

Density is read relative to the neighbourhood: ``rho_c = d_c / s_c`` is how many spreads the
nearest other class lies away; a class is *too dense* when ``rho_c > 1 / eta``, i.e. when its
spread is below ``eta`` times its separation, and ``R`` is the mean shortfall ``eta * d_c - s_c``
over such classes (zero for every class that is spread at least ``eta * d_c``).

Why it balances compactness against separation: the base losses pull positives together and push
negatives apart, and nothing in them stops a class from collapsing once its triplets or pairs are
satisfied (contrastive with ``pos_margin = 0`` keeps pulling to a point). ``dR/ds_c = -1/|C*|``
for a too-dense class, so ``R`` pushes its samples away from their centre until the spread reaches
``eta * d_c`` and then stops: intra-class variation is kept, but only up to a fraction of the
distance to the nearest class, so the base loss's separation is not undone. The target is
*adaptive*: a well-separated class may stay wider, a class close to a neighbour is allowed to be
tight. With ``detach_separation: false`` the target is not a constant: ``dR/dd_c = +eta/|C*|``
also pulls the nearest centres together (a literal reading of "balancing inter-class
similarity"); it works against the base loss, hence not the default.

Parameters (``methods.<m>.regularizer.density``)
-----------------------------------------------
``weight`` (>= 0, default 1.0)
    ``w``: the regulariser's weight in the total loss; 0 gives the base loss (a separate run).
``eta`` (> 0, default 0.5)
    the target ratio of spread to separation: a class counts as too dense while
    ``s_c < eta * d_c``. For reference, two classes whose samples are uniformly spread over
    touching balls of radius r have ``s_c ~ r`` and ``d_c ~ 2 r``, i.e. ``s_c / d_c ~ 0.5``.
``detach_separation`` (bool, default true)
    treat ``eta * d_c`` as a target (no gradient through the centres' distance); see above.

Edge cases: a class with one sample in the batch has ``s_c = 0`` by definition, which says
nothing about its density, so it is left out of ``C*`` (its sample still counts as a centre for
its neighbours' separation). A batch of one class has no separation: ``R = 0``. So does a batch
where no class has two samples. ``R`` is then a zero that keeps the graph (finite gradients, all
zero). Distances are ``sqrt(max(q, 1e-12))`` of their squares: a sample on its centre (a
singleton, coincident points) or coincident centres give a zero gradient, never NaN.
With an augmenter's ``ref_emb``, ``R`` is computed on the batch's own embeddings only.

Cost: one ``unique`` of the labels, a handful of ``N x D`` operations (per-class sums are one
``index_add`` each: no loop over classes) and the ``K x K`` Gram matrix of the centres (K =
classes in the batch); squared distances are expanded (``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``) so no
``N x D`` difference is formed: benchmarks/bench_density.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .pml import REGULARIZERS, CriterionWrapper

LABEL = "DA (reconstructed)"
_EPS = 1e-12  # floor under squared distances (and norms): sqrt has an infinite slope at 0

SCHEMA = {
    "weight": {"type": "number", "minimum": 0, "default": 1.0,
               "description": "w in loss = base + w * R"},
    "eta": {"type": "number", "exclusiveMinimum": 0, "default": 0.5,
            "description": "target ratio of a class's spread to its separation from the nearest class"},
    "detach_separation": {"type": "boolean", "default": True,
                          "description": "no gradient through the separation target eta * d_c"},
}


def _safe_sqrt(q: torch.Tensor) -> torch.Tensor:
    return q.clamp_min(_EPS).sqrt()


def class_statistics(z: torch.Tensor, labels: torch.Tensor):
    """Per batch class, in ``labels.unique()`` order: ``(n_c, s_c, d_c)``, on unit embeddings.

    ``d_c`` is +inf for a class without another class in the batch."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    counts = counts.to(z.dtype)
    x = z * (z * z).sum(1, keepdim=True).clamp_min(_EPS).rsqrt()  # z / ||z||, in fewer ops than normalize
    centres = z.new_zeros(len(counts), z.shape[1]).index_add(0, inverse, x) / counts[:, None]  # mu_c
    gram = centres @ centres.T  # mu_c . mu_c'
    sq = gram.diagonal()  # ||mu_c||^2
    # ||x_i - mu_c||^2 = 1 - 2 x_i . mu_c + ||mu_c||^2 at c = y_i (no N x D difference to form)
    deviation = _safe_sqrt(1 - 2 * (x * centres[inverse]).sum(1) + sq[inverse])
    spread = counts.new_zeros(len(counts)).index_add(0, inverse, deviation) / counts
    own = torch.eye(len(counts), dtype=torch.bool, device=z.device)
    separation = _safe_sqrt(sq[:, None] + sq[None, :] - 2 * gram).masked_fill(own, float("inf")).min(1).values
    return counts, spread, separation


def density_term(z: torch.Tensor, labels: torch.Tensor, eta: float = 0.5, detach_separation: bool = True):
    """R = mean over classes with >= 2 samples (and a neighbour) of [eta * d_c - s_c]_+ (see module doc)."""
    counts, spread, separation = class_statistics(z, labels)
    if detach_separation:
        separation = separation.detach()
    counted = (counts >= 2) & torch.isfinite(separation)  # not singletons, not a lone class
    shortfall = F.relu(eta * separation - spread).masked_fill(~counted, 0.0)
    return shortfall.sum() / counted.sum().clamp_min(1)  # no class counted: a zero with a graph


class DensityRegularized(CriterionWrapper):
    """``base(z, y, ...) + weight * R(z, y)``: DA (reconstructed) around any registry loss."""

    def __init__(self, base, weight: float, eta: float, detach_separation: bool):
        super().__init__(base)
        self.weight, self.eta, self.detach_separation = float(weight), float(eta), bool(detach_separation)

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None, indices_tuple=None):
        loss = self.base(embeddings, labels, ref_emb, ref_labels, indices_tuple)
        if self.weight == 0:
            return loss
        return loss + self.weight * density_term(embeddings, labels, self.eta, self.detach_separation)

    def extra_repr(self) -> str:
        return f"{LABEL}: weight={self.weight}, eta={self.eta}, detach_separation={self.detach_separation}"


@REGULARIZERS.register("density", schema=SCHEMA, label=LABEL)
def density(base, args) -> DensityRegularized:
    """DA (reconstructed): loss = base + weight * mean_c [eta * d_c - s_c]_+ (spread s_c, separation d_c)."""
    return DensityRegularized(base, args["weight"], args["eta"], args["detach_separation"])
