"""IAA (intra-class adaptive augmentation, Fu et al. TMM 2022): the class statistics against numpy,
the neighbor correction on a hand-checkable case, the law of the synthetics (a statistical test with
a tolerance from the sample size), the anchor / candidate structure the base loss receives, the
gradient path, every ``code``-variant difference, and the losses / configuration checks.

Expected values come from numpy re-implementations of the formulas (PAPERS.md section 1, the
module docstring, the released code ``intra.py`` / ``losses.py``) or from hand computations, never
from the functions under test."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmlrepro.errors import DmlReproError
from dmlrepro.methods import build_criterion
from dmlrepro.study.runs import RunPaths, criterion_config
from dmlrepro.methods.iaa import (
    IntraClassAugmenter,
    class_moments,
    correction_weight,
    lambda_factor,
    momentum_merge,
    nearest_classes,
    neighbor_correction,
    per_class_subset,
)

from test_training import setup  # noqa: F401,E402  (fixture)

F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def iaa(loss="multi_similarity", miner="default", num_classes=4, dim=8, loss_args=None, **args):
    """A base loss (+ miner) wrapped in IAA, built through the registry like the trainer does."""
    cfg = {"loss": loss, "augmenter": {"iaa": args}}
    if miner == "default":
        miner = "multi_similarity" if loss == "multi_similarity" else None
    if miner:
        cfg["miner"] = miner
    if loss_args:
        cfg["loss_args"] = loss_args
    crit = build_criterion(cfg, num_classes, dim, name="m")
    assert isinstance(crit, IntraClassAugmenter)
    return crit


def clustered(num_classes, per_class, dim, spread=0.3, seed=0, scale=3.0):
    """Raw embeddings: per class a centre (norm ~ scale) plus N(0, spread^2) noise; labels sorted."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)
    centres = scale * centres / centres.norm(dim=1, keepdim=True)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def np_moments(z, y, c):
    """Per-class ML mean and variance (divide by n), numpy, class without rows: 0."""
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y)
    d = z.shape[1]
    n, mean, var = np.zeros(c), np.zeros((c, d)), np.zeros((c, d))
    for k in range(c):
        rows = z[y == k]
        n[k] = len(rows)
        if len(rows):
            mean[k] = rows.mean(0)
            var[k] = ((rows - mean[k]) ** 2).mean(0)
    return n, mean, var


def np_merge(mean, var, seen, new_mean, new_var, n, momentum):
    """The released code's ``update_diag`` rule, per class, in plain Python/numpy."""
    mean, var, seen = mean.copy(), var.copy(), seen.copy()
    for k in range(len(n)):
        if n[k] == 0:
            continue
        w = max(n[k] / (n[k] + seen[k]), 1 - momentum)
        var[k] = (1 - w) * var[k] + w * new_var[k] + w * (1 - w) * (mean[k] - new_mean[k]) ** 2
        mean[k] = (1 - w) * mean[k] + w * new_mean[k]
        seen[k] += n[k]
    return mean, var, seen


def np_alpha(n, tau=40, beta=0.1):
    return 1.0 / (1.0 + math.log(1.0 + beta * (n - 1))) if n <= tau else 0.0


def np_correction(mean, var, counts, K, tau=40, beta=0.1, gamma=0.1, alpha=None, scale_mean=1.0,
                  scale_cov=1.0, normalize=True, only=None):
    """The paper's neighbor correction, one class at a time (numpy); ``only``: just these classes.
    Means are compared by their element-wise squares, for the neighbours (Eq. 11) and in the weights
    (Eq. 13; the released ``intra.py`` takes both from ``cdist(mean.pow(2), mean.pow(2))``)."""
    mean, var, counts = (np.asarray(a, dtype=np.float64) for a in (mean, var, counts))
    c = len(counts)
    elig = counts >= 2
    glob = (counts[elig, None] * var[elig]).sum(0) / counts[elig].sum()
    sq = mean ** 2
    out = var.copy()
    for k in range(c) if only is None else only:
        a = np_alpha(counts[k], tau, beta) if alpha is None else alpha
        cand = [i for i in range(c) if i != k and elig[i]]
        dist = np.linalg.norm(sq[cand] - sq[k], axis=1)
        nb = [cand[j] for j in np.argsort(dist, kind="stable")[:K]]
        dm = np.array([np.linalg.norm(sq[i] - sq[k]) for i in nb])  # Eq. (13): ||mu_i^2 - mu_k^2||
        dc = np.array([np.linalg.norm(var[i] - var[k]) for i in nb])
        if normalize:
            dm = (dm - dm.min()) / (dm.max() - dm.min()) if dm.max() > dm.min() else 0 * dm
            dc = (dc - dc.min()) / (dc.max() - dc.min()) if dc.max() > dc.min() else 0 * dc
        e = np.zeros(len(nb))
        if scale_mean is not None:
            e -= dm ** 2 / (2 * scale_mean ** 2)
        if scale_cov is not None:
            e -= dc ** 2 / (2 * scale_cov ** 2)
        w = counts[nb] * np.exp(e)
        nbv = (w[:, None] * var[nb]).sum(0) / w.sum()
        out[k] = (1 - a) * var[k] + a * ((1 - gamma) * nbv + gamma * glob)
    return out, glob


class Recorder(torch.nn.Module):
    """Stands in for the PML loss inside the base Criterion: records what it receives."""

    def __init__(self, loss):
        super().__init__()
        self.inner, self.calls = loss, []

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        self.calls.append({"emb": embeddings.detach().clone(), "labels": labels.clone(),
                           "tuple": None if indices_tuple is None else tuple(t.clone() for t in indices_tuple),
                           "ref": None if ref_emb is None else ref_emb.detach().clone(),
                           "ref_labels": None if ref_labels is None else ref_labels.clone()})
        return self.inner(embeddings, labels, indices_tuple, ref_emb, ref_labels)


def record(crit):
    crit.base.loss = Recorder(crit.base.loss)
    return crit.base.loss


def activate(crit, z, y, epoch=1, epochs=10):
    crit.start_epoch(epoch, epochs, lambda **_: (z, y))
    assert crit.active
    return crit


# ================================================================================================
# 1. statistics
# ================================================================================================
def test_class_moments_match_numpy_including_an_empty_class():
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0, 2, 2, 0, 4, 2, 0, 0, 4, 2, 5])  # classes 1 and 3 have no rows, 5 has one
    z = 2.0 * torch.randn(len(y), 3, generator=g, dtype=F64) + 1.0
    n, m, v = class_moments(z, y, 6)
    rn, rm, rv = np_moments(z.numpy(), y.numpy(), 6)
    np.testing.assert_allclose(n.numpy(), rn)
    np.testing.assert_allclose(m.numpy(), rm, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(v.numpy(), rv, rtol=1e-12, atol=1e-12)
    assert n[1] == 0 and (m[1] == 0).all() and (v[1] == 0).all()  # empty class: 0, not NaN
    assert (v[5] == 0).all()  # one row: ML variance 0
    # chunked passes give the same answer as one pass
    _, m2, v2 = class_moments(z, y, 6, chunk=3)
    np.testing.assert_allclose(m2.numpy(), rm, atol=1e-12)
    np.testing.assert_allclose(v2.numpy(), rv, atol=1e-12)


def test_class_moments_is_the_ml_estimate_not_the_unbiased_one():
    z = torch.tensor([[0.0], [2.0]], dtype=F64)  # by hand: mean 1, ML var ((1)^2 + (1)^2)/2 = 1 (unbiased: 2)
    _, m, v = class_moments(z, torch.tensor([0, 0]), 1)
    assert float(m) == 1.0 and float(v) == 1.0


def test_momentum_merge_matches_the_hand_rule_first_update_and_clamp():
    rng = np.random.default_rng(0)
    c, d, mom = 4, 3, 0.2
    zeros = np.zeros((c, d))
    new_m, new_v = rng.normal(size=(c, d)), rng.random((c, d))
    n1 = np.array([5.0, 3.0, 0.0, 10.0])
    # first update (seen 0): the plain estimate for classes with rows, 0 for the one without
    m, v, s = momentum_merge(torch.zeros(c, d, dtype=F64), torch.zeros(c, d, dtype=F64), torch.zeros(c, dtype=F64),
                             torch.tensor(new_m), torch.tensor(new_v), torch.tensor(n1), mom)
    np.testing.assert_allclose(m.numpy()[[0, 1, 3]], new_m[[0, 1, 3]], rtol=1e-12)
    np.testing.assert_allclose(v.numpy()[[0, 1, 3]], new_v[[0, 1, 3]], rtol=1e-12)
    assert (m[2] == 0).all() and (v[2] == 0).all()
    np.testing.assert_allclose(s.numpy(), n1)
    # second update: w = n / (n + seen) with the clamp at 1 - momentum = 0.8 active for class 3
    # (10 / 20 = 0.5 -> 0.8) and inactive for class 2 (4 / (4 + 0) = 1)
    m2n, v2n = rng.normal(size=(c, d)), rng.random((c, d))
    n2 = np.array([0.0, 30.0, 4.0, 10.0])
    ref = np_merge(m.numpy(), v.numpy(), s.numpy(), m2n, v2n, n2, mom)
    got = momentum_merge(m, v, s, torch.tensor(m2n), torch.tensor(v2n), torch.tensor(n2), mom)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-12, atol=1e-12)
    # class 1 by hand: w = 30 / 33 (above the clamp)
    w = 30 / 33
    by_hand = (1 - w) * v.numpy()[1] + w * v2n[1] + w * (1 - w) * (m.numpy()[1] - m2n[1]) ** 2
    np.testing.assert_allclose(got[1].numpy()[1], by_hand, rtol=1e-12)
    # class 0 had no new rows: unchanged
    np.testing.assert_array_equal(got[0].numpy()[0], m.numpy()[0])


def test_per_class_subset_keeps_min_n_and_class_size_rows_and_is_seeded():
    sizes = [1, 2, 3, 5, 8, 13]
    y = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]  # classes interleaved
    for n in (1, 3, 5):
        mask = per_class_subset(y, n, torch.Generator().manual_seed(7))
        assert mask.dtype == torch.bool and mask.shape == y.shape
        kept = torch.bincount(y[mask], minlength=len(sizes)).tolist()
        assert kept == [min(n, s) for s in sizes]
        again = per_class_subset(y, n, torch.Generator().manual_seed(7))
        assert torch.equal(mask, again)
    masks = {tuple(per_class_subset(y, 3, torch.Generator().manual_seed(s)).tolist()) for s in range(6)}
    assert len(masks) > 1  # the seed picks which rows


def test_update_statistics_paper_reestimates_code_merges():
    c, d = 3, 4
    z1, y1 = clustered(c, 6, d, seed=1)
    z2, y2 = clustered(c, 5, d, seed=2)
    z2 = z2 + 0.5  # the second estimate differs from the first
    paper, code = iaa(num_classes=c, dim=d), iaa(num_classes=c, dim=d, variant="code")
    for crit in (paper, code):
        crit.update_statistics(z1, y1)
        crit.update_statistics(z2, y2)
    n2, m2, v2 = np_moments(z2, y2, c)
    np.testing.assert_allclose(paper.mean.numpy(), m2, rtol=1e-5, atol=1e-5)  # old state forgotten
    np.testing.assert_allclose(paper.var.numpy(), v2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(paper.sample_var.numpy(), v2, rtol=1e-5, atol=1e-5)  # 3 classes: no correction
    n1, m1, v1 = np_moments(z1, y1, c)
    rm, rv, rs = np_merge(m1, v1, n1, m2, v2, n2, 0.2)
    np.testing.assert_allclose(code.mean.numpy(), rm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(code.var.numpy(), rv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(code.seen.numpy(), rs)
    assert not np.allclose(rv, v2, atol=1e-3)  # the two rules really differ here
    # explicit switch wins over the variant
    forced = iaa(num_classes=c, dim=d, variant="code", statistics="reestimate")
    forced.update_statistics(z1, y1)
    forced.update_statistics(z2, y2)
    np.testing.assert_allclose(forced.var.numpy(), v2, rtol=1e-5, atol=1e-5)


def test_samples_per_class_estimates_from_n_rows_per_class():
    z, y = clustered(4, 9, 3, seed=4)
    crit = iaa(num_classes=4, dim=3, samples_per_class=3)
    crit.update_statistics(z, y)
    assert crit.counts.tolist() == [3.0] * 4
    full = iaa(num_classes=4, dim=3)
    full.update_statistics(z, y)
    assert full.counts.tolist() == [9.0] * 4
    assert not torch.allclose(crit.var, full.var)
    # the subset is fixed for a run: a second refresh uses the same rows
    before = crit.var.clone()
    crit.update_statistics(z, y)
    assert torch.equal(before, crit.var)


# ================================================================================================
# 2. neighbor correction
# ================================================================================================
# 5 classes in 2-d, K = 2. Squared means: c0 (1, 0), c1 (1.44, 0), c2 (0, 1), c3 (0.25, 0.81),
# c4 (2.25, 0.04). Class 2 has one sample (never a neighbour, not in Sigma_global); class 4 has 41
# (above tau = 40). By hand, ||mu_i^2 - mu_k^2||:
#   c0: c1 0.44, c3 1.104, c4 1.251 -> {1, 3}     c1: c0 0.44, c4 0.811, c3 1.423 -> {0, 4}
#   c2: c3 0.314, c0 1.414 (c1 1.753, c4 2.446) -> {3, 0}   c3: c0 1.104, c1 1.423 -> {0, 1}
#   c4: c1 0.811, c0 1.251 -> {1, 0}
MEAN = torch.tensor([[1.0, 0.0], [1.2, 0.0], [0.0, 1.0], [0.5, 0.9], [1.5, 0.2]], dtype=F64)
VAR = torch.tensor([[1.0, 1.0], [2.0, 1.0], [0.0, 0.0], [0.5, 3.0], [0.4, 0.6]], dtype=F64)
COUNTS = torch.tensor([3.0, 6.0, 1.0, 10.0, 41.0], dtype=F64)
NEIGHBOURS = [{1, 3}, {0, 4}, {3, 0}, {0, 1}, {1, 0}]
# Sigma_global over classes 0, 1, 3, 4 (n = 3, 6, 10, 41; sum 60):
GLOBAL = np.array([(3 * 1 + 6 * 2 + 10 * 0.5 + 41 * 0.4) / 60, (3 * 1 + 6 * 1 + 10 * 3 + 41 * 0.6) / 60])


def test_neighbour_sets_of_the_hand_example():
    idx = nearest_classes(MEAN.square(), COUNTS >= 2, 2)
    assert [set(r) for r in idx.tolist()] == NEIGHBOURS
    assert 2 not in idx.flatten().tolist()  # the single-sample class is nobody's neighbour


def test_neighbor_correction_hand_computed_classes_0_and_2():
    cr, glob = neighbor_correction(MEAN, VAR, COUNTS, neighbors=2)
    np.testing.assert_allclose(glob.numpy(), GLOBAL, rtol=1e-12)  # (0.60667, 1.06): n = 1 class left out
    # class 0 (n = 3): neighbours 1 and 3; d_m = 0.44 vs 1.104, d_cv = 1 vs 2.06, so after min-max over
    # the two neighbours class 1 has (0, 0) and class 3 (1, 1): w_1 = 6, w_3 = 10 e^{-1/2 - 1/2}
    w1, w3 = 6.0, 10.0 * math.exp(-1.0)
    nb = (w1 * VAR[1].numpy() + w3 * VAR[3].numpy()) / (w1 + w3)
    a = 1 / (1 + math.log(1 + 0.1 * 2))
    expect0 = (1 - a) * VAR[0].numpy() + a * (0.9 * nb + 0.1 * GLOBAL)
    np.testing.assert_allclose(cr[0].numpy(), expect0, rtol=1e-12)
    np.testing.assert_allclose(cr[0].numpy(), [1.29395, 1.58373], atol=2e-5)  # the numbers, by hand
    # class 2 (n = 1, var 0, a(1) = 1): neighbours 3 (d_m 0.314, d_cv 3.04) and 0 (1.414, 1.414):
    # class 3 gets (0, 1), class 0 (1, 0): both e^{-1/2}, so w = n: (10 var_3 + 3 var_0) / 13
    nb2 = (10 * VAR[3].numpy() + 3 * VAR[0].numpy()) / 13
    np.testing.assert_allclose(cr[2].numpy(), 0.9 * nb2 + 0.1 * GLOBAL, rtol=1e-12)
    # class 4 (n = 41 > tau = 40): untouched
    np.testing.assert_array_equal(cr[4].numpy(), VAR[4].numpy())
    # every class against the numpy reference
    ref, _ = np_correction(MEAN, VAR, COUNTS, K=2)
    np.testing.assert_allclose(cr.numpy(), ref, rtol=1e-12)


def test_mean_distance_of_the_weights_is_on_squared_means_as_eq_13_by_hand():
    """Without the min-max normalisation the weights are Eq. (13) itself, w_i = n_i exp(-||mu_i^2 -
    mu_k^2||^2 / 2 - ||Sigma_i - Sigma_k||^2 / 2); with two neighbours min-max hides the form of d_m,
    so a third neighbour shows it there too."""
    cr, _ = neighbor_correction(MEAN, VAR, COUNTS, neighbors=2, normalize_distances=False)
    # class 0: squared means (1, 0), (1.44, 0), (0.25, 0.81): d_m = 0.44 and sqrt(0.75^2 + 0.81^2);
    # variances (1, 1), (2, 1), (0.5, 3): d_cv = 1 and sqrt(0.5^2 + 2^2)
    dm1, dm3 = 0.44, math.sqrt(0.75 ** 2 + 0.81 ** 2)
    dc1, dc3 = 1.0, math.sqrt(0.5 ** 2 + 2.0 ** 2)
    w1, w3 = 6 * math.exp(-dm1 ** 2 / 2 - dc1 ** 2 / 2), 10 * math.exp(-dm3 ** 2 / 2 - dc3 ** 2 / 2)
    nb = (w1 * VAR[1].numpy() + w3 * VAR[3].numpy()) / (w1 + w3)
    a = 1 / (1 + math.log(1.2))
    expect = (1 - a) * VAR[0].numpy() + a * (0.9 * nb + 0.1 * GLOBAL)
    np.testing.assert_allclose(cr[0].numpy(), expect, rtol=1e-12)
    # ||mu_i - mu_k|| (0.2 and sqrt(0.25 + 0.81)) would give another value
    wp1, wp3 = 6 * math.exp(-0.04 / 2 - dc1 ** 2 / 2), 10 * math.exp(-1.06 / 2 - dc3 ** 2 / 2)
    plain = (1 - a) * VAR[0].numpy() + a * (0.9 * (wp1 * VAR[1].numpy() + wp3 * VAR[3].numpy()) / (wp1 + wp3)
                                           + 0.1 * GLOBAL)
    assert np.abs(plain - expect).max() > 1e-4  # far beyond the rtol 1e-12 above
    # K = 3 with min-max: class 0's third neighbour is class 4 (squared mean (2.25, 0.04))
    for normalize in (True, False):
        cr3, _ = neighbor_correction(MEAN, VAR, COUNTS, neighbors=3, normalize_distances=normalize)
        ref3, _ = np_correction(MEAN, VAR, COUNTS, K=3, normalize=normalize)
        np.testing.assert_allclose(cr3.numpy(), ref3, rtol=1e-12)


def test_alpha_schedule_and_the_tau_boundary():
    n = torch.tensor([1.0, 2.0, 3.0, 39.0, 40.0, 41.0, 100.0], dtype=F64)
    got = correction_weight(n, tau=40, beta=0.1).tolist()
    assert got[0] == 1.0  # log(1 + 0) = 0
    expect = [1 / (1 + math.log(1 + 0.1 * (k - 1))) if k <= 40 else 0.0 for k in n.tolist()]
    assert got == pytest.approx(expect, rel=1e-12)
    assert got[4] == pytest.approx(1 / (1 + math.log(4.9)), rel=1e-12) and got[4] > 0  # n = tau: corrected
    assert got[5] == 0.0  # n = tau + 1: not
    # in the full correction: class 4 has n = 41; tau = 41 corrects it, tau = 40 does not
    at_tau, _ = neighbor_correction(MEAN, VAR, COUNTS, neighbors=2, tau=41)
    ref, _ = np_correction(MEAN, VAR, COUNTS, K=2, tau=41)
    np.testing.assert_allclose(at_tau.numpy(), ref, rtol=1e-12)
    assert not np.allclose(at_tau[4].numpy(), VAR[4].numpy())
    above, _ = neighbor_correction(MEAN, VAR, COUNTS, neighbors=2, tau=40)
    np.testing.assert_array_equal(above[4].numpy(), VAR[4].numpy())


@pytest.mark.parametrize("kw", [
    {"alpha": 0.5}, {"alpha": 1.0}, {"alpha": 0.0},
    {"scale_mean": None, "scale_cov": None}, {"scale_mean": None}, {"scale_mean": 0.5, "scale_cov": 2.0},
    {"gamma": 0.0}, {"gamma": 1.0}, {"gamma": 0.3, "beta": 0.5},
])
def test_neighbor_correction_switches_match_the_reference(kw):
    cr, _ = neighbor_correction(MEAN, VAR, COUNTS, neighbors=2, **kw)
    ref, _ = np_correction(MEAN, VAR, COUNTS, K=2, **kw)
    np.testing.assert_allclose(cr.numpy(), ref, rtol=1e-12, atol=1e-15)


def test_infinite_scales_weigh_neighbours_by_their_counts_only():
    cr, _ = neighbor_correction(MEAN, VAR, COUNTS, neighbors=2, scale_mean=None, scale_cov=None)
    nb = (6 * VAR[1].numpy() + 10 * VAR[3].numpy()) / 16  # class 0's neighbours 1 (n 6) and 3 (n 10)
    a = 1 / (1 + math.log(1.2))
    np.testing.assert_allclose(cr[0].numpy(), (1 - a) * VAR[0].numpy() + a * (0.9 * nb + 0.1 * GLOBAL), rtol=1e-12)
    # a fixed alpha = 1 replaces Sigma_k entirely, also for the class above tau; gamma = 1: Sigma_global
    cr, _ = neighbor_correction(MEAN, VAR, COUNTS, neighbors=2, alpha=1.0, gamma=1.0)
    np.testing.assert_allclose(cr.numpy(), np.tile(GLOBAL, (5, 1)), rtol=1e-12)


def test_neighbor_correction_larger_random_case_matches_the_reference():
    g = torch.Generator().manual_seed(5)
    c, d = 60, 6
    mean = torch.randn(c, d, generator=g, dtype=F64)
    var = torch.rand(c, d, generator=g, dtype=F64)
    counts = torch.randint(1, 60, (c,), generator=g).to(F64)
    var[counts == 1] = 0
    cr, glob = neighbor_correction(mean, var, counts, neighbors=7)
    ref, rglob = np_correction(mean, var, counts, K=7)
    np.testing.assert_allclose(glob.numpy(), rglob, rtol=1e-12)
    np.testing.assert_allclose(cr.numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block", [3, 7, 64, 2048])
def test_nearest_classes_matches_brute_force(block):
    g = torch.Generator().manual_seed(11)
    c, d, k = 150, 5, 6
    pts = torch.randn(c, d, generator=g, dtype=F64)
    eligible = torch.rand(c, generator=g) < 0.8
    idx = nearest_classes(pts, eligible, k, block=block)
    dist = torch.cdist(pts, pts)
    dist.fill_diagonal_(math.inf)
    dist[:, ~eligible] = math.inf
    ref = torch.topk(dist, k, dim=1, largest=False).indices
    assert idx.shape == (c, k)
    assert [set(r) for r in idx.tolist()] == [set(r) for r in ref.tolist()]


# ================================================================================================
# 3. generation
# ================================================================================================
def _stats_crit(dim=4, n_train=400, **args):
    """IAA over 2 classes whose training embeddings have per-dimension std (2, 0.5, 1, 3) / (1, 1, 0.2, 0.7)."""
    g = torch.Generator().manual_seed(21)
    std = torch.tensor([[2.0, 0.5, 1.0, 3.0], [1.0, 1.0, 0.2, 0.7]])
    y = torch.arange(2).repeat_interleave(n_train)
    z = torch.tensor([[1.0, -1.0, 2.0, 0.0], [0.0, 3.0, -2.0, 1.0]])[y] + std[y] * torch.randn(len(y), dim, generator=g)
    crit = iaa(num_classes=2, dim=dim, **args)
    crit.update_statistics(z, y)
    _, mean, var = np_moments(z, y, 2)  # the target, independently of the module
    return crit, mean, var, z, y


def _check_law(resid, target_var, name):
    """resid (n, d) should be N(0, diag(target_var)) independent draws: per-dimension sample variance
    within 5 standard errors (sd of s^2 = sigma^2 sqrt(2 / (n - 1))), mean within 5 SE, and the
    off-diagonal covariances within 5 SE (sd sigma_i sigma_j / sqrt(n))."""
    r = resid.double().numpy()
    n = len(r)
    cov = np.cov(r, rowvar=False)
    sd = np.sqrt(target_var)
    tol_var = 5 * target_var * math.sqrt(2 / (n - 1))
    assert np.all(np.abs(np.diag(cov) - target_var) < tol_var), (name, np.diag(cov), target_var)
    assert np.all(np.abs(r.mean(0)) < 5 * sd / math.sqrt(n)), (name, r.mean(0))
    off = ~np.eye(len(sd), dtype=bool)
    assert np.all(np.abs(cov[off]) < (5 * np.outer(sd, sd) / math.sqrt(n))[off]), (name, cov)


def test_dynamic_synthetics_are_normal_around_the_sample_with_lambda_sigma():
    crit, _, var, z, y = _stats_crit(lam=0.7)
    torch.manual_seed(0)
    zb, yb = z[::2], y[::2]  # 400 originals
    resid = {0: [], 1: []}
    for _ in range(5):  # 5 calls x 3 copies x 200 per class = 3,000 draws per class
        s, sl = crit.synthesize(zb, yb)
        assert s.shape == (3 * len(zb), 4) and torch.equal(sl, yb.repeat(3))
        r = s - zb.repeat(3, 1)
        for k in (0, 1):
            resid[k].append(r[sl == k])
    for k in (0, 1):
        _check_law(torch.cat(resid[k]), 0.7 * var[k], f"class {k}")


def test_fixed_synthetics_are_centred_on_the_class_mean():
    crit, mean, var, z, y = _stats_crit(lam=0.5, sampling="fixed")
    torch.manual_seed(1)
    zb, yb = z[::2], y[::2]
    s, sl = crit.synthesize(zb, yb)
    for k in (0, 1):
        _check_law(s[sl == k] - torch.tensor(mean[k], dtype=s.dtype), 0.5 * var[k], f"class {k}")
    # and not around z_i: the residual to z_i has the class spread added
    r = (s - zb.repeat(3, 1))[sl == 0].double().numpy()
    assert r.var(0)[3] > 1.3 * 0.5 * var[0][3]


@pytest.mark.parametrize("covariance", ["identity", "global"])
def test_identity_and_global_covariance(covariance):
    crit, _, var, z, y = _stats_crit(lam=0.8, covariance=covariance)
    target = np.ones(4) if covariance == "identity" else (var[0] + var[1]) / 2  # 400 rows each
    torch.manual_seed(2)
    zb, yb = z[::2], y[::2]
    s, sl = crit.synthesize(zb, yb)
    r = s - zb.repeat(3, 1)
    for k in (0, 1):
        _check_law(r[sl == k], 0.8 * target, f"{covariance} class {k}")


def test_cumulative_sqrt_code_copy_m_uses_sigma_to_the_one_over_2_to_the_m_plus_1():
    crit, _, var, z, y = _stats_crit(lam=0.6, cumulative_sqrt=True)
    paper, *_ = _stats_crit(lam=0.6)
    torch.manual_seed(3)
    zb, yb = z, y  # 800 originals, 400 per class and copy
    s, sl = crit.synthesize(zb, yb)
    torch.manual_seed(3)
    sp, _ = paper.synthesize(zb, yb)
    b = len(zb)
    for m in range(3):
        rows = slice(m * b, (m + 1) * b)
        r, rp = s[rows] - zb, sp[rows] - zb
        for k in (0, 1):
            std = var[k] ** (1 / 2 ** (m + 1)) * math.sqrt(0.6)  # the code's cumulative square root
            _check_law(r[yb == k], std ** 2, f"code copy {m} class {k}")
            _check_law(rp[yb == k], 0.6 * var[k], f"paper copy {m} class {k}")  # sqrt(Sigma) for all


def test_lambda_factor_steps_strictly_after_40_60_80_percent():
    # the released code's lamda_epoch: ratio <= 0.4 -> 1, <= 0.6 -> 0.9, <= 0.8 -> 0.75, else 0.6
    cases = {0.0: 1.0, 0.4: 1.0, 0.41: 0.9, 0.6: 0.9, 0.61: 0.75, 0.8: 0.75, 0.81: 0.6, 1.0: 0.6}
    assert {p: lambda_factor(p) for p in cases} == cases
    assert [lambda_factor(e / 100) for e in (40, 41, 60, 61, 80, 81)] == [1.0, 0.9, 0.9, 0.75, 0.75, 0.6]


def test_lambda_decay_scales_the_noise_by_sqrt_of_the_factor():
    z, y = clustered(2, 8, 4, seed=6)
    crit = iaa(num_classes=2, dim=4, lam=0.8, lambda_decay=True)
    resid = {}
    for epoch in (1, 4, 5, 7, 9, 10):
        crit.start_epoch(epoch, 10, lambda **_: (z, y))
        torch.manual_seed(9)
        s, _ = crit.synthesize(z, y)
        resid[epoch] = s - z.repeat(3, 1)
    expect = {1: 1.0, 4: 1.0, 5: 0.9, 7: 0.75, 9: 0.6, 10: 0.6}
    for epoch, f in expect.items():
        # the statistics do not change (same z each refresh), only lambda: residual ~ sqrt(lambda)
        torch.testing.assert_close(resid[epoch], resid[1] * math.sqrt(f), rtol=1e-5, atol=1e-6)
    paper = iaa(num_classes=2, dim=4, lam=0.8)
    paper.start_epoch(9, 10, lambda **_: (z, y))
    assert paper.lam_now == 0.8


# ================================================================================================
# 4. synthetics are candidates, never anchors
# ================================================================================================
BASES = [
    ("multi_similarity", "multi_similarity"),
    ("contrastive_similarity", None),
    ("contrastive", None),
    ("triplet", "triplet_margin"),
    ("triplet", None),
    ("triplet", "distance_weighted"),
    ("triplet", "hardest_negative"),
    ("margin", "distance_weighted"),
    ("circle", None),
]


@pytest.mark.parametrize("loss,miner", BASES)
@pytest.mark.parametrize("variant", ["paper", "code"])
def test_synthetics_are_never_anchors(loss, miner, variant):
    c, dim, b = 4, 8, 16
    z, y = clustered(c, 10, dim, spread=0.8, seed=7)
    args = {"variant": variant, "start": 0.0}
    if miner == "triplet_margin":
        crit = build_criterion({"loss": loss, "miner": miner, "miner_args": {"type_of_triplets": "all", "margin": 5.0},
                                "augmenter": {"iaa": args}}, c, dim, name="m")
    else:
        crit = iaa(loss, miner, num_classes=c, dim=dim, **args)
    activate(crit, z, y)
    rec = record(crit)
    zb, yb = clustered(c, 4, dim, spread=0.8, seed=8)
    torch.manual_seed(0)
    loss_value = crit(zb.requires_grad_(True), yb)
    assert torch.isfinite(loss_value)
    call = rec.calls[-1]
    assert torch.equal(call["emb"], zb.detach()) and len(call["emb"]) == b  # only the originals are anchors
    assert len(call["ref"]) == 4 * b and torch.equal(call["ref"][:b], zb.detach())
    assert torch.equal(call["ref_labels"], yb.repeat(4))
    t = call["tuple"]
    if len(t) == 4:
        a1, p, a2, n = t
        anchors, pos, neg = torch.cat([a1, a2]), [(a1, p)], n
    else:
        a, p, n = t
        anchors, pos, neg = a, [(a, p)], n
    assert len(anchors) and anchors.max() < b and anchors.min() >= 0
    a, p = pos[0]
    assert len(p) and not (p == a).any()  # no pair of an anchor with itself
    assert (torch.cat([p, neg]) >= b).any()  # synthetics are candidates
    assert (yb.repeat(4)[p] == yb[a]).all() and (yb.repeat(4)[neg] != yb[a2 if len(t) == 4 else a]).all()
    own = (p >= b) & (p % b == a)
    if variant == "code":
        assert not own.any()  # the released code's positive mask drops an anchor's own copies
    elif miner is None:  # all pairs: every own copy is a positive in the paper
        assert int(own.sum()) == 3 * b


def test_own_copies_switch_overrides_the_variant():
    c, dim = 4, 8
    z, y = clustered(c, 10, dim, seed=7)
    for variant, flag in (("paper", True), ("code", False)):
        crit = activate(iaa("contrastive_similarity", num_classes=c, dim=dim, variant=variant, start=0.0,
                            exclude_own_copies=flag), z, y)
        rec = record(crit)
        zb, yb = clustered(c, 4, dim, seed=8)
        crit(zb, yb)
        a, p = rec.calls[-1]["tuple"][:2]
        assert bool(((p >= 16) & (p % 16 == a)).any()) is (not flag)


def test_inactive_or_eval_mode_passes_the_batch_through():
    z, y = clustered(4, 10, 8, seed=7)
    crit = iaa(num_classes=4, dim=8)
    rec = record(crit)
    zb, yb = clustered(4, 4, 8, seed=8)
    crit(zb, yb)  # before any statistics: no synthesis
    assert rec.calls[-1]["ref"] is None
    activate(crit, z, y)
    crit.eval()
    crit(zb, yb)
    assert rec.calls[-1]["ref"] is None
    crit.train()
    crit(zb, yb)
    assert rec.calls[-1]["ref"] is not None


# ================================================================================================
# 5. gradients reach the head, not the statistics
# ================================================================================================
def test_gradients_reach_the_head_but_not_the_statistics():
    torch.manual_seed(0)
    c, in_dim, dim = 4, 16, 8
    head = torch.nn.Linear(in_dim, dim)
    feats = torch.randn(c, in_dim)[torch.arange(c).repeat_interleave(10)] + 0.3 * torch.randn(40, in_dim)
    labels = torch.arange(c).repeat_interleave(10)
    crit = iaa(num_classes=c, dim=dim, lam=0.8)
    # a train_embeddings that (wrongly) keeps the graph: the statistics must still not require grad
    crit.start_epoch(1, 10, lambda **_: (head(feats), labels))
    assert crit.active
    buffers = {n: b.clone() for n, b in crit.named_buffers()}
    for name in ("mean", "var", "sample_var", "counts", "seen"):
        assert not getattr(crit, name).requires_grad, name
    assert list(crit.parameters()) == []
    xb, yb = feats[::2], labels[::2]
    # the synthetics carry gradient through z_i: IAA's gradient differs from the plain loss's
    base_grad = torch.autograd.grad(crit.base(head(xb), yb), head.weight)[0]
    torch.manual_seed(1)
    iaa_grad = torch.autograd.grad(crit(head(xb), yb), head.weight)[0]
    assert base_grad.abs().sum() > 0 and not torch.allclose(base_grad, iaa_grad)
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    before = head.weight.detach().clone()
    loss = crit(head(xb), yb)
    opt.zero_grad()
    loss.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    for name, b in crit.named_buffers():
        assert b.grad is None and not b.requires_grad, name
    opt.step()
    for name, b in crit.named_buffers():
        assert torch.equal(b, buffers[name]), name  # an optimizer step leaves the statistics alone
    assert not torch.equal(head.weight, before)  # while the head did move


# ================================================================================================
# 6. each code-variant difference, observable
# ================================================================================================
def _schedule(crit, epochs, z, y):
    calls, active = [], []
    for epoch in range(1, epochs + 1):
        n = []
        crit.start_epoch(epoch, epochs, lambda **_: (n.append(1), (z, y))[1])
        calls += [epoch] * len(n)
        active.append(crit.active)
    return calls, active


def test_schedule_paper_every_4_epochs_from_the_first():
    z, y = clustered(3, 4, 4, seed=1)
    calls, active = _schedule(iaa(num_classes=3, dim=4), 12, z, y)
    assert calls == [1, 5, 9]
    assert all(active)


def test_schedule_code_every_2_epochs_from_30_percent():
    z, y = clustered(3, 4, 4, seed=1)
    calls, active = _schedule(iaa(num_classes=3, dim=4, variant="code"), 100, z, y)
    # run.py: refresh when ep > start_epoch (30) and (ep - start_epoch - 1) % 2 == 0; synthesis when ep > 30
    assert calls == [ep for ep in range(1, 101) if ep > 30 and (ep - 31) % 2 == 0]
    assert active == [ep > 30 for ep in range(1, 101)]
    calls, active = _schedule(iaa(num_classes=3, dim=4, variant="code"), 10, z, y)
    assert calls == [4, 6, 8, 10] and active == [False] * 3 + [True] * 7
    # explicit switches override the variant
    calls, active = _schedule(iaa(num_classes=3, dim=4, variant="code", update_interval=3, start=0.0), 10, z, y)
    assert calls == [1, 4, 7, 10] and all(active)
    calls, _ = _schedule(iaa(num_classes=3, dim=4, update_interval=2, start=0.5), 10, z, y)
    assert calls == [6, 8, 10]


@pytest.mark.parametrize("kw,augmented", [({}, False), ({"variant": "code"}, True),
                                          ({"variant": "code", "statistics_views": "plain"}, False),
                                          ({"statistics_views": "augmented"}, True)])
def test_statistics_views_code_asks_the_trainer_for_training_augmented_views(kw, augmented):
    """run.py estimates the statistics through ``loader_train_eval``, a loader of the training set
    with the training transform; the paper names no view (the plain one is kept)."""
    z, y = clustered(3, 4, 4, seed=1)
    crit = iaa(num_classes=3, dim=4, start=0.0, **kw)
    asked = []
    crit.start_epoch(1, 10, lambda augmented=False: (asked.append(augmented), (z, y))[1])
    assert asked == [augmented]


def _few_shot(num_classes, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat_interleave(torch.randint(2, 5, (num_classes,), generator=g))
    return torch.randn(len(y), dim, generator=g), y


@pytest.mark.parametrize("classes,variant,switch,expect", [
    (1000, "paper", None, False),   # auto: on only above 1,000 classes
    (1001, "paper", None, True),
    (1001, "code", None, False),    # the code never calls distribution_calibration
    (1001, "code", True, True),     # explicit switch wins
    (1001, "paper", False, False),
    (50, "paper", True, True),
])
def test_correction_auto_in_paper_off_in_code(classes, variant, switch, expect):
    z, y = _few_shot(classes)
    args = {"variant": variant, "neighbors": 5}
    if switch is not None:
        args["correction"] = switch
    crit = iaa(num_classes=classes, dim=3, **args)
    assert crit.correction_on() is expect
    crit.update_statistics(z, y)
    if expect:  # Sigma_cr of the numpy reference (spot-checked on a few classes: it loops in Python)
        n, m, v = np_moments(z, y, classes)
        some = [0, 1, classes // 2, classes - 1]
        full, _ = np_correction(m, v, n, K=5, only=some)
        np.testing.assert_allclose(crit.sample_var.numpy()[some], full[some], rtol=1e-4, atol=1e-6)
        assert not torch.allclose(crit.sample_var, crit.var)
    else:
        assert torch.equal(crit.sample_var, crit.var)


def test_variant_defaults_of_each_switch():
    paper, code = iaa().args, iaa(variant="code").args
    assert (paper["statistics"], code["statistics"]) == ("reestimate", "momentum")
    assert (paper["update_interval"], code["update_interval"]) == (4, 2)
    assert (paper["start"], code["start"]) == (0.0, 0.3)
    assert (paper["correction"], code["correction"]) == ("auto", False)
    assert (paper["cumulative_sqrt"], code["cumulative_sqrt"]) == (False, True)
    assert (paper["exclude_own_copies"], code["exclude_own_copies"]) == (False, True)
    assert (paper["lambda_decay"], code["lambda_decay"]) == (False, True)
    assert (paper["statistics_views"], code["statistics_views"]) == ("plain", "augmented")
    over = iaa(variant="code", cumulative_sqrt=False, lambda_decay=False).args
    assert over["cumulative_sqrt"] is False and over["lambda_decay"] is False and over["statistics"] == "momentum"


def test_code_variant_cumulative_sqrt_is_observable_and_switchable():
    z, y = clustered(2, 20, 4, spread=0.2, seed=2)
    out = {}
    for name, kw in (("code", {"variant": "code"}), ("code_no_cum", {"variant": "code", "cumulative_sqrt": False}),
                     ("paper", {})):
        crit = iaa(num_classes=2, dim=4, lam=1.0, **kw)
        crit.update_statistics(z, y)
        torch.manual_seed(4)
        out[name] = crit.synthesize(z, y)[0] - z.repeat(3, 1)
    b = len(z)
    torch.testing.assert_close(out["code_no_cum"], out["paper"])
    torch.testing.assert_close(out["code"][:b], out["paper"][:b])  # copy 0: sqrt(Sigma) in both
    assert out["code"][b:].abs().mean() > 1.5 * out["paper"][b:].abs().mean()  # var < 1: Sigma^(1/4) > Sigma^(1/2)


# ================================================================================================
# 7. losses and configuration
# ================================================================================================
def _np_contrastive_code(x_anchor, x_all, labels_all, b, exclude_own, pos_margin=0.8, neg_margin=0.5):
    """The released code's ContrastiveLoss (losses.py) on normalised embeddings."""
    s = x_anchor @ x_all.T
    total = 0.0
    for i in range(b):
        for j in range(len(x_all)):
            if j == i or (exclude_own and j % b == i):
                continue
            if labels_all[j] == labels_all[i]:
                total += max(pos_margin - s[i, j], 0.0)
            else:
                total += max(s[i, j] - neg_margin, 0.0)
    return total / b


def _np_ms_code(x_anchor, x_all, labels_all, b, exclude_own, alpha=2.0, beta=40.0, base=0.5, eps=0.1):
    """The released code's MultiSimilarityLoss (losses.py): mining and loss with its positive mask."""
    s = x_anchor @ x_all.T
    losses = []
    for i in range(b):
        same = labels_all == labels_all[i]
        pos_mask = same.copy()
        pos_mask[i] = False
        if exclude_own:
            pos_mask[np.arange(len(x_all)) % b == i] = False
        pos, neg = s[i, pos_mask], s[i, ~same]
        pos = pos[pos < 1 - 1e-5]
        if len(neg) < 1 or len(pos) < 1:
            continue
        neg_sel, pos_sel = neg[neg + eps > pos.min()], pos[pos - eps < neg.max()]
        if len(neg_sel) < 1 or len(pos_sel) < 1:
            continue
        losses.append(np.log1p(np.exp(-alpha * (pos_sel - base)).sum()) / alpha
                      + np.log1p(np.exp(beta * (neg_sel - base)).sum()) / beta)
    return sum(losses) / b


def _np_triplet_eq19(x_anchor, x_all, labels_all, b, exclude_own, margin):
    """IAA Eq. (19): (1/n) sum_i sum_{(j,k) in T_i u T^_i} [d_ij - min_k d_ik + alpha]_+ with every
    positive j of anchor i (originals and synthetics, i itself excluded) and its hardest negative
    among N_i u N^_i; d Euclidean between unit vectors. Also returns how many anchors' hardest
    negative is a synthetic."""
    total, synthetic_hardest = 0.0, 0
    for i in range(b):
        d = np.linalg.norm(x_all - x_anchor[i], axis=1)
        neg = np.flatnonzero(labels_all != labels_all[i])
        if not len(neg):
            continue
        k = neg[np.argmin(d[neg])]
        synthetic_hardest += int(k >= b)
        for j in range(len(x_all)):
            if labels_all[j] == labels_all[i] and j != i and not (exclude_own and j % b == i):
                total += max(d[j] - d[k] + margin, 0.0)
    return total / b, synthetic_hardest


def _normalise(t):
    t = t.double().numpy()
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def _loss_and_its_draw(crit, zb, yb, seed):
    """IAA's loss on a batch, and the same draw replayed: (loss, unit originals + synthetics, labels)."""
    torch.manual_seed(seed)
    value = float(crit(zb, yb))
    torch.manual_seed(seed)
    synth, sl = crit.synthesize(zb, yb)
    return value, _normalise(torch.cat([zb, synth])), torch.cat([yb, sl]).numpy()


def test_contrastive_similarity_matches_the_hand_formula_without_iaa():
    # 3 classes x 2 in 3-d, close enough that some negatives exceed s = 0.5, spread enough that
    # some positives fall below 0.8
    z = torch.tensor([[1.0, 0.1, 0.0], [0.6, 0.8, 0.1], [0.9, 0.0, 0.5], [0.2, 0.3, 1.0],
                      [0.0, 1.0, 0.2], [-0.5, 0.9, 0.0]], dtype=torch.float32) * 3
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    crit = build_criterion({"loss": "contrastive_similarity"}, 3, 3, name="m")
    x = _normalise(z)
    s = x @ x.T
    pos = [s[i, j] for i in range(6) for j in range(6) if i != j and y[i] == y[j]]
    neg = [s[i, j] for i in range(6) for j in range(6) if y[i] != y[j]]
    assert any(v < 0.8 for v in pos) and any(v > 0.5 for v in neg)  # both kinds of terms occur
    by_hand = (sum(0.8 - v for v in pos if v < 0.8) + sum(v - 0.5 for v in neg if v > 0.5)) / 6
    assert float(crit(z, y)) == pytest.approx(by_hand, rel=1e-5)
    assert float(crit(z, y)) == pytest.approx(_np_contrastive_code(x, x, y.numpy(), 6, False), rel=1e-5)


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_contrastive_similarity_iaa_matches_the_released_code_formula(variant):
    z, y = clustered(4, 10, 8, spread=1.0, seed=12)
    crit = activate(iaa("contrastive_similarity", num_classes=4, dim=8, variant=variant, start=0.0), z, y)
    zb, yb = clustered(4, 4, 8, spread=1.0, seed=13)
    value, x_all, y_all = _loss_and_its_draw(crit, zb, yb, 5)
    ref = _np_contrastive_code(x_all[:16], x_all, y_all, 16, variant == "code")
    assert value == pytest.approx(ref, rel=1e-5)


def _ms_case(variant, lam, spread, seed):
    z, y = clustered(4, 10, 8, spread=spread, seed=seed)
    crit = activate(iaa(num_classes=4, dim=8, variant=variant, start=0.0, lam=lam, lambda_decay=False,
                        loss_args={"alpha": 2.0, "beta": 40.0, "base": 0.5}), z, y)
    zb, yb = clustered(4, 4, 8, spread=spread, seed=seed + 1)
    value, x_all, y_all = _loss_and_its_draw(crit, zb, yb, 6)
    return value, _np_ms_code(x_all[:16], x_all, y_all, 16, variant == "code")


def test_ms_iaa_paper_variant_matches_the_code_formula_with_the_paper_mask():
    for seed in (14, 16, 18):
        value, ref = _ms_case("paper", 0.8, 1.0, seed)
        assert value == pytest.approx(ref, rel=1e-4), seed


def test_ms_iaa_code_variant_matches_the_released_code_mining():
    for seed in (14, 16, 18):
        value, ref = _ms_case("code", 0.8, 0.3, seed)
        assert value == pytest.approx(ref, rel=1e-4), seed


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_triplet_iaa_of_params_yaml_is_eq_19_over_originals_and_synthetics(variant):
    """params.yaml's ``triplet_iaa`` (and ``triplet_hardest`` without IAA) is the paper's Triplet:
    all positives, real and synthetic, each against the anchor's hardest negative, margin 0.2."""
    import yaml

    from conftest import REPO

    methods = yaml.safe_load((REPO / "params.yaml").read_text())["methods"]
    cfg = criterion_config(methods["triplet_iaa"])
    assert {k: v for k, v in cfg.items() if k != "augmenter"} == criterion_config(methods["triplet_hardest"])
    cfg["augmenter"] = {"iaa": {**cfg["augmenter"]["iaa"], "variant": variant, "start": 0.0}}
    z, y = clustered(4, 10, 8, spread=1.0, seed=12)
    crit = build_criterion(cfg, 4, 8, name="triplet_iaa")
    activate(crit, z, y)
    zb, yb = clustered(4, 4, 8, spread=1.0, seed=13)
    value, x_all, y_all = _loss_and_its_draw(crit, zb, yb, 5)
    ref, synthetic_hardest = _np_triplet_eq19(x_all[:16], x_all, y_all, 16, variant == "code", margin=0.2)
    assert ref > 0 and synthetic_hardest > 0  # hinge terms occur, and synthetics are mined as negatives
    assert value == pytest.approx(ref, rel=1e-5)
    # without IAA (evaluation mode passes the batch through): Eq. (3) with the same mining
    crit.eval()
    x = _normalise(zb)
    assert float(crit(zb, yb)) == pytest.approx(_np_triplet_eq19(x, x, yb.numpy(), 16, False, 0.2)[0], rel=1e-5)


def test_npair_is_refused_with_a_clear_error():
    with pytest.raises(DmlReproError, match="npair"):
        build_criterion({"loss": "npair", "augmenter": {"iaa": {}}}, 4, 8, name="m")


@pytest.mark.parametrize("loss", ["normalized_softmax", "proxy_nca", "soft_triple", "proxy_anchor"])
def test_proxy_losses_take_the_synthetics_as_extra_samples(loss):
    torch.manual_seed(0)
    z, y = clustered(4, 10, 8, seed=7)
    crit = activate(iaa(loss, None, num_classes=4, dim=8), z, y)
    rec = record(crit)
    zb, yb = clustered(4, 4, 8, seed=8)
    zb.requires_grad_(True)
    value = crit(zb, yb)
    assert torch.isfinite(value)
    call = rec.calls[-1]
    assert call["ref"] is None and len(call["emb"]) == 4 * 16 and torch.equal(call["labels"], yb.repeat(4))
    assert torch.equal(call["emb"][:16], zb.detach())
    value.backward()
    assert zb.grad is not None and zb.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in crit.parameters())  # the proxies learn


@pytest.mark.parametrize("iaa_args,key", [
    ({"lamda": 1}, "lamda"),
    ({"variant": "foo"}, "variant"),
    ({"copies": 0}, "copies"),
    ({"lam": 0}, "lam"),
    ({"correction": "sometimes"}, "correction"),
    ({"sampling": "around"}, "sampling"),
])
def test_config_errors_name_the_key(iaa_args, key):
    with pytest.raises(DmlReproError) as err:
        build_criterion({"loss": "multi_similarity", "augmenter": {"iaa": iaa_args}}, 10, 8, name="m")
    msg = str(err.value)
    assert key in msg and "methods.m" in msg
    if key == "lamda":  # an unknown key lists the allowed ones
        for allowed in ("lam", "copies", "variant", "neighbors"):
            assert allowed in msg
    if key == "variant":
        assert "foo" in msg


def test_global_covariance_without_correction_leaves_out_single_sample_classes():
    z = torch.tensor([[0.0, 0.0], [2.0, 4.0], [1.0, 1.0], [1.0, 3.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 1, 1, 2])  # class 2 has one sample
    crit = iaa(num_classes=3, dim=2, covariance="global", correction=False)
    crit.update_statistics(z, y)
    # by hand: var_0 = (1, 4), var_1 = (0, 1), n = 2 each: Sigma_global = (0.5, 2.5)
    torch.testing.assert_close(crit.sample_var, torch.tensor([[0.5, 2.5]] * 3))


# ================================================================================================
# 8. inside the frozen trainer: the views the statistics are taken on
# ================================================================================================
def _views_of_statistics(params, tmp, monkeypatch, **iaa_args):
    """Train multi_similarity_iaa on features with 3 distinguishable views per training image;
    returns, per statistics update, which cached view each training image's row of z came from."""
    from dmlrepro.study.runs import resolve_run
    from dmlrepro.training import frozen

    method = params["methods"]["multi_similarity_iaa"]
    method["augmenter"]["iaa"].update({"start": 0.0, "update_interval": 1, **iaa_args})
    method["train"] = {"lr": 1e-2}
    run = resolve_run(params, "glyphs", "multi_similarity_iaa", 0, [])
    path = run.features.path(params)
    with np.load(path) as f:
        arrays = dict(f)
    plain = arrays["train_features"][0].astype(np.float32)
    train_views = np.stack([plain, plain + 4.0, plain - 4.0])  # view 0 = the centre view
    arrays["train_features"] = train_views.astype(np.float16)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    heads, seen = [], []
    real_head, real_update = frozen.make_head, IntraClassAugmenter.update_statistics
    monkeypatch.setattr(frozen, "make_head", lambda *a: heads.append(real_head(*a)) or heads[-1])

    def update(self, z, labels):
        with torch.no_grad():  # z of every view under the head as it is now
            per_view = torch.stack([heads[-1](torch.from_numpy(v.astype(np.float16).astype(np.float32)),
                                              normalize=False) for v in train_views])
        match = (per_view - z[None]).abs().amax(2) < 1e-5  # (views, images)
        assert (match.sum(0) == 1).all()  # every row is exactly one view of its image
        seen.append(match.float().argmax(0).tolist())
        return real_update(self, z, labels)

    monkeypatch.setattr(IntraClassAugmenter, "update_statistics", update)
    frozen.train_frozen(run, RunPaths.of(params, run, tmp / f"out-{len(list(tmp.iterdir()))}"), "cpu")
    return seen


@pytest.mark.parametrize("kw,augmented", [({}, False), ({"variant": "code"}, True),
                                          ({"variant": "code", "statistics_views": "plain"}, False)])
def test_the_frozen_trainer_estimates_code_statistics_on_training_views(setup, monkeypatch, kw, augmented):  # noqa: F811
    """The released run.py embeds the training set through ``loader_train_eval`` (training
    transform): in the frozen regime, each image's cached views are what training draws from."""
    params, _, tmp = setup
    seen = _views_of_statistics(params, tmp, monkeypatch, **kw)
    assert len(seen) == 3 and all(len(views) == 48 for views in seen)  # every epoch, every image once
    if not augmented:
        assert all(set(views) == {0} for views in seen)
        return
    assert all(set(views) == {0, 1, 2} for views in seen)  # views drawn among all the training views
    assert seen[0] != seen[1] != seen[2]  # a fresh draw each update
    first = list(seen)  # (a second spy wraps the first, which keeps recording)
    assert _views_of_statistics(params, tmp, monkeypatch, **kw) == first  # seeded by (seed, epoch)


def test_the_finetune_trainer_embeds_one_seeded_training_view_per_image_for_the_statistics(tmp_path):
    from PIL import Image

    from dmlrepro.training.finetune import STATISTICS_STEP, EmbeddingNetwork, embed_rows
    from dmlrepro.training.heads import EmbeddingHead
    from dmlrepro.training.images import TrainingViews, ViewSettings, loader

    class Images:
        paths = []
        labels = np.arange(6)

    for i in range(6):
        Images.paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(Images.paths[-1])
    views = ViewSettings(32, 36, (0.16, 1.0), True)
    torch.manual_seed(0)
    net = EmbeddingNetwork(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()), EmbeddingHead(12, 4))
    seeds = [(7, 2, STATISTICS_STEP, i) for i in range(6)]
    got = embed_rows(net, Images(), views, np.arange(6), "cpu", normalize=False, seeds=seeds)
    pixels = next(iter(loader(TrainingViews(Images(), views), batch_sampler=[list(zip(range(6), seeds))])))
    with torch.no_grad():
        np.testing.assert_allclose(got, net(pixels, normalize=False).numpy(), rtol=1e-5, atol=1e-6)
    plain = embed_rows(net, Images(), views, np.arange(6), "cpu", normalize=False)
    assert not np.allclose(got, plain)  # training views, not the evaluation view
    again = embed_rows(net, Images(), views, np.arange(6), "cpu", normalize=False, seeds=seeds)
    np.testing.assert_array_equal(got, again)
