"""DA (reconstructed): a density-adaptivity regulariser for pair- and triplet-based losses.

Li, Yao, Pan, Chao, Mei, "Deep Metric Learning with Density Adaptivity", IEEE TMM 22(5), 2020
(arXiv 1909.03909). Only the abstract could be read, so this reconstructs what it says, and every
table, MLflow tag and page names it "DA (reconstructed)". On a batch's unit embeddings
x_i = z_i / ||z_i||, for every class c of the batch with n_c samples::

    mu_c = 1/n_c  sum_{y_i = c} x_i                 centre
    s_c  = 1/n_c  sum_{y_i = c} ||x_i - mu_c||      spread (low spread: high density)
    d_c  = min_{c' != c} ||mu_c - mu_c'||           separation
    R    = 1/|C*| sum_{c in C*} [eta * d_c - s_c]_+,   C* = {c : n_c >= 2}
    loss = base(z, y) + weight * R

Why: the base losses let a class collapse once its pairs or triplets are satisfied, which the
abstract blames for overfitting. R spreads a too-dense class (s_c < eta * d_c) until its spread is
eta times the distance to its nearest class, and no further, so the base loss's separation stays.
Arguments (``methods.<m>.regularizer.density``): ``weight``, ``eta`` and ``detach_separation``
(no gradient through d_c). The abstract's claims, edge cases and cost: docs/methods/da.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .criterion import REGULARIZERS, CriterionWrapper

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
