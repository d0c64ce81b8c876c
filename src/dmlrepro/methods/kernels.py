"""Faster, bit-identical replacements for two pytorch-metric-learning internals the profile names.

* :func:`masked_logsumexp` for ``lmu.logsumexp`` (Multi-Similarity, Proxy-Anchor and SGAR on it,
  circle, lifted structure): PML fills masked entries with the dtype's smallest finite number, and
  ``exp`` of such an entry takes the CPU's slow underflow path (about 4x an ordinary value, and most
  of a Proxy-Anchor or MS matrix is masked). ``-inf`` gives the same exact zero, so the value and
  the gradient are bit-identical. Installed by :func:`install` when ``dmlrepro.methods`` is imported.
* :func:`multi_similarity_pairs` and :class:`MultiSimilarityMiner`: the MS miner's rule by per-row
  max / min instead of PML's two full sorts of the similarity matrix; the same pairs (row-major
  order), so the loss, which reads them as masks, is bit-identical.

``tests/unit/test_kernels.py`` holds both to PML's own code on random batches.
Measurements: docs/costs.md.
"""
from __future__ import annotations

import math

import torch
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

#: PML's own ``logsumexp``, kept for the cases it still serves and for the tests.
pml_logsumexp = lmu.logsumexp


def masked_logsumexp(x, keep_mask=None, add_one=True, dim=1):
    """``lmu.logsumexp``'s contract: log(1 + sum_{kept} exp(x)) along ``dim`` (0 for a row keeping
    nothing). Only the ``add_one`` form with a mask changes: there the row's maximum is at least 0
    (the added zero), so an excluded entry's exp(-inf - max) is the exact 0 that exp(min - max)
    underflows to, and a fully excluded row never computes -inf - (-inf)."""
    if keep_mask is None or not add_one:
        return pml_logsumexp(x, keep_mask=keep_mask, add_one=add_one, dim=dim)
    x = x.masked_fill(~keep_mask, -math.inf)
    zeros = torch.zeros(x.size(dim - 1), dtype=x.dtype, device=x.device).unsqueeze(dim)
    output = torch.logsumexp(torch.cat([x, zeros], dim=dim), dim=dim, keepdim=True)
    return output.masked_fill(~torch.any(keep_mask, dim=dim, keepdim=True), 0)


def install() -> None:
    """Route PML's losses through :func:`masked_logsumexp` (they look ``lmu.logsumexp`` up at call time)."""
    lmu.logsumexp = masked_logsumexp


@torch.no_grad()
def multi_similarity_pairs(mat, pos, neg, epsilon: float, inverted: bool = True):
    """The MS miner's rule (Wang et al. 2019; PML's ``MultiSimilarityMiner``) on explicit masks:
    keep a positive if s - eps < the anchor's largest negative similarity, a negative if
    s + eps > its smallest positive one (mirrored for a distance). A row without negatives keeps
    no positive, a row without positives no negative, as in PML."""
    if not inverted:  # a distance: flip to a similarity, the rule is symmetric
        mat = -mat
    hardest_neg = mat.masked_fill(~neg, -math.inf).max(1, keepdim=True).values
    easiest_pos = mat.masked_fill(~pos, math.inf).min(1, keepdim=True).values
    a1, p = torch.nonzero(pos & (mat - epsilon < hardest_neg), as_tuple=True)
    a2, n = torch.nonzero(neg & (mat + epsilon > easiest_pos), as_tuple=True)
    return a1, p, a2, n


class MultiSimilarityMiner(pml_miners.MultiSimilarityMiner):
    """PML's MS miner with :func:`multi_similarity_pairs` as its ``mine``."""

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        mat = self.distance(embeddings, ref_emb)
        # PML's convention: ref_labels *is* labels without a ref set, and then (a, a) is no pair
        matches, diffs = (m.bool() for m in lmu.get_matches_and_diffs(labels, ref_labels))
        return multi_similarity_pairs(mat, matches, diffs, self.epsilon, self.distance.is_inverted)
