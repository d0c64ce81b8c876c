"""Losses and miners: values against brute-force references of the documented formulas,
gradients, training on a toy problem, edge cases and error messages."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from dmlrepro.errors import DmlReproError
from dmlrepro.training.heads import EmbeddingHead
from dmlrepro.methods import LOSSES, MINERS, Criterion, CriterionWrapper, allowed_args, build_criterion
from dmlrepro.study.runs import criterion_config

ROOT = Path(__file__).resolve().parents[2]
DT = torch.float64


def unit(angles_deg):
    a = torch.tensor(angles_deg, dtype=DT) * math.pi / 180
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


# A tiny hand-constructed batch: 2 classes x 2 points on the unit circle, plus a 3-d variant.
EMB = unit([0.0, 40.0, 100.0, 170.0])
LAB = torch.tensor([0, 0, 1, 1])
EMB3 = torch.tensor(
    [[1.0, 0.2, 0.0], [0.8, 0.5, 0.1], [0.1, 1.0, 0.3], [-0.2, 0.9, 0.4], [0.3, -0.2, 1.0], [0.5, 0.1, 0.9]],
    dtype=DT,
)
LAB3 = torch.tensor([0, 0, 1, 1, 2, 2])


def _dist(x):
    x = F.normalize(x, dim=1)
    n = len(x)
    return [[float(torch.linalg.norm(x[i] - x[j])) for j in range(n)] for i in range(n)]


def _sim(x):
    x = F.normalize(x, dim=1)
    return (x @ x.T).tolist()


def _mean_nonzero(values):
    nz = [v for v in values if v > 0]
    return sum(nz) / len(nz) if nz else 0.0


def ref_contrastive(x, y, pos_margin, neg_margin):
    d, n, y = _dist(x), len(x), y.tolist()
    pos = [max(0.0, d[i][j] - pos_margin) for i in range(n) for j in range(n) if i != j and y[i] == y[j]]
    neg = [max(0.0, neg_margin - d[i][j]) for i in range(n) for j in range(n) if y[i] != y[j]]
    return _mean_nonzero(pos) + _mean_nonzero(neg)


def ref_triplet(x, y, margin, ref=None, ref_y=None):
    ref = x if ref is None else ref
    ref_y = y if ref_y is None else ref_y
    xa, xr = F.normalize(x, dim=1), F.normalize(ref, dim=1)
    d = torch.cdist(xa, xr).tolist()
    y, ref_y = y.tolist(), ref_y.tolist()
    same_set = ref is x
    vals = []
    for a in range(len(xa)):
        for p in range(len(xr)):
            if ref_y[p] != y[a] or (same_set and p == a):
                continue
            for n in range(len(xr)):
                if ref_y[n] != y[a]:
                    vals.append(max(0.0, d[a][p] - d[a][n] + margin))
    return _mean_nonzero(vals)


def ref_ms(x, y, alpha, beta, base):
    s, n, y = _sim(x), len(x), y.tolist()
    total = 0.0
    for i in range(n):
        pos = [s[i][k] for k in range(n) if k != i and y[k] == y[i]]
        neg = [s[i][k] for k in range(n) if y[k] != y[i]]
        if pos:
            total += math.log(1 + sum(math.exp(-alpha * (v - base)) for v in pos)) / alpha
        if neg:
            total += math.log(1 + sum(math.exp(beta * (v - base)) for v in neg)) / beta
    return total / n


def ref_proxy_anchor(x, y, proxies, alpha, margin):
    s = (F.normalize(x, dim=1) @ F.normalize(proxies, dim=1).T).tolist()
    y = y.tolist()
    num_classes = len(proxies)
    with_pos = sorted(set(y))
    pos_term = sum(
        math.log(1 + sum(math.exp(-alpha * (s[i][c] - margin)) for i in range(len(y)) if y[i] == c))
        for c in with_pos
    ) / len(with_pos)
    neg_term = sum(
        math.log(1 + sum(math.exp(alpha * (s[i][c] + margin)) for i in range(len(y)) if y[i] != c))
        for c in range(num_classes)
    ) / num_classes
    return pos_term + neg_term


def ref_npair(z, y, l2_reg, normalize, temperature=1.0):
    f = (F.normalize(z, dim=1) if normalize else z) / math.sqrt(temperature)
    y = y.tolist()
    anchors, positives = [], []
    for c in sorted(set(y)):
        idx = [i for i, v in enumerate(y) if v == c]
        if len(idx) >= 2:  # first two batch positions of the class
            anchors.append(idx[0])
            positives.append(idx[1])
    ce = 0.0
    for r, a in enumerate(anchors):
        logits = [float(f[a] @ f[p]) for p in positives]
        ce += -logits[r] + math.log(sum(math.exp(v) for v in logits))
    ce /= len(anchors)
    return ce + l2_reg / 2 * float((z**2).sum(dim=1).mean())


# ------------------------------------------------------------------------------------------
# Values against brute force
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pos_margin,neg_margin", [(0.0, 0.5), (0.0, 1.0), (0.3, 1.5)])
@pytest.mark.parametrize("emb,lab", [(EMB, LAB), (EMB3, LAB3)])
def test_contrastive_matches_formula(emb, lab, pos_margin, neg_margin):
    crit = build_criterion(
        {"loss": "contrastive", "loss_args": {"pos_margin": pos_margin, "neg_margin": neg_margin}}, 3, 2
    )
    assert float(crit(emb, lab)) == pytest.approx(ref_contrastive(emb, lab, pos_margin, neg_margin), abs=1e-9)


def test_contrastive_hand_computed():
    # d(0,1) = 2 sin(20 deg); negatives: d = 2 sin(|dtheta|/2) for dtheta 100, 170, 60, 130 deg.
    d_pos = [2 * math.sin(math.radians(20)), 2 * math.sin(math.radians(35))]
    d_neg = [2 * math.sin(math.radians(a / 2)) for a in (100, 170, 60, 130)]
    neg = [1.5 - d for d in d_neg if d < 1.5]
    expected = (sum(d_pos) / 2) + sum(neg) / len(neg)  # each unordered pair appears twice: same mean
    crit = build_criterion({"loss": "contrastive", "loss_args": {"pos_margin": 0.0, "neg_margin": 1.5}}, 2, 2)
    assert float(crit(EMB, LAB)) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("emb,lab", [(EMB, LAB), (EMB3, LAB3)])
def test_triplet_matches_formula(emb, lab, margin):
    crit = build_criterion({"loss": "triplet", "loss_args": {"margin": margin}}, 3, 2)
    assert float(crit(emb, lab)) == pytest.approx(ref_triplet(emb, lab, margin), abs=1e-9)


def test_triplet_hand_computed():
    # anchor 0 (0 deg), positive 1 (40 deg), negatives at 100 and 170 deg, margin 0.2:
    c = lambda deg: 2 * math.sin(math.radians(deg / 2))  # noqa: E731 - chord length
    terms = [
        c(40) - c(100) + 0.2,  # a0 p1 n2
        c(40) - c(170) + 0.2,  # a0 p1 n3
        c(40) - c(60) + 0.2,  # a1 p0 n2
        c(40) - c(130) + 0.2,  # a1 p0 n3
        c(70) - c(100) + 0.2,  # a2 p3 n0
        c(70) - c(60) + 0.2,  # a2 p3 n1
        c(70) - c(170) + 0.2,  # a3 p2 n0
        c(70) - c(130) + 0.2,  # a3 p2 n1
    ]
    expected = _mean_nonzero([max(0.0, t) for t in terms])
    crit = build_criterion({"loss": "triplet"}, 2, 2)  # default margin 0.2
    assert float(crit(EMB, LAB)) == pytest.approx(expected, abs=1e-9)


def ref_triplet_hardest(x, y, margin, ref=None, ref_y=None, reduction="sum_per_anchor"):
    """IAA Eq. (19) (Eq. (3) when ref is x): for each anchor i every positive j with the anchor's
    hardest negative, [d_ij - min_{k: y_k != y_i} d_ik + margin]_+, summed and divided by the n
    anchors (or PML's mean over the non-zero terms). The candidates begin with the anchors (as
    IAA's do): candidate i is anchor i itself, never its positive."""
    ref = x if ref is None else ref
    ref_y = y if ref_y is None else ref_y
    d = torch.cdist(F.normalize(x, dim=1), F.normalize(ref, dim=1)).tolist()
    y, ref_y = y.tolist(), ref_y.tolist()
    vals = []
    for a in range(len(y)):
        negs = [d[a][k] for k in range(len(ref_y)) if ref_y[k] != y[a]]
        if not negs:
            continue
        for p in range(len(ref_y)):
            if ref_y[p] == y[a] and p != a:
                vals.append(max(0.0, d[a][p] - min(negs) + margin))
    return sum(vals) / len(y) if reduction == "sum_per_anchor" else _mean_nonzero(vals)


TRIPLET_HARDEST = {"loss": "triplet", "loss_args": {"margin": 0.2, "reduction": "sum_per_anchor"},
                   "miner": "hardest_negative"}


def test_triplet_with_the_hardest_negative_hand_computed():
    # IAA Eq. (19) on the unit-circle batch (0, 40 | 100, 170 deg), margin 0.2: each anchor's one
    # positive against its nearest negative
    c = lambda deg: 2 * math.sin(math.radians(deg / 2))  # noqa: E731 - chord length
    terms = [
        c(40) - c(100) + 0.2,  # a0 (0): p1, hardest n2 (100 deg away)
        c(40) - c(60) + 0.2,  # a1 (40): p0, hardest n2 (60 deg)
        c(70) - c(60) + 0.2,  # a2 (100): p3, hardest n1 (60 deg)
        c(70) - c(130) + 0.2,  # a3 (170): p2, hardest n1 (130 deg)
    ]
    crit = build_criterion(TRIPLET_HARDEST, 2, 2)
    assert float(crit(EMB, LAB)) == pytest.approx(sum(max(0.0, t) for t in terms) / 4, abs=1e-12)
    assert float(crit(EMB, LAB)) == pytest.approx((c(70) - c(60) + 0.2) / 4, abs=1e-12)  # only a2's term is > 0
    a, p, n = crit.mine(EMB, LAB)
    assert a.tolist() == [0, 1, 2, 3] and p.tolist() == [1, 0, 3, 2] and n.tolist() == [2, 2, 1, 1]


@pytest.mark.parametrize("reduction", ["sum_per_anchor", "mean_nonzero"])
@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
def test_triplet_with_the_hardest_negative_matches_eq_19_with_and_without_candidates(margin, reduction):
    cfg = {**TRIPLET_HARDEST, "loss_args": {"margin": margin, "reduction": reduction}}
    crit = build_criterion(cfg, 3, 3)
    got = float(crit(EMB3, LAB3))
    assert got == pytest.approx(ref_triplet_hardest(EMB3, LAB3, margin, reduction=reduction), abs=1e-12)
    g = torch.Generator().manual_seed(3)
    z, y = torch.randn(10, 4, generator=g, dtype=DT), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    cand = torch.cat([z, torch.randn(20, 4, generator=g, dtype=DT)])
    cand_y = torch.cat([y, torch.randint(0, 4, (20,), generator=g)])
    # candidates from outside (IAA's synthetics): only z's rows anchor; the augmenter removes (a, a)
    a, p, n = crit.mine(z, y, cand, cand_y)
    keep = p != a
    got = float(crit(z, y, cand, cand_y, indices_tuple=(a[keep], p[keep], n[keep])))
    expect = ref_triplet_hardest(z, y, margin, ref=cand, ref_y=cand_y, reduction=reduction)
    assert a.max() < 10 and (p >= 10).any() and (n >= 10).any()  # candidates are positives and negatives
    assert got == pytest.approx(expect, abs=1e-12)


def test_the_hardest_negative_of_an_anchor_without_negatives_gives_no_triplet():
    crit = build_criterion(TRIPLET_HARDEST, 2, 2)
    a, p, n = crit.mine(EMB, torch.tensor([0, 0, 0, 0]))
    assert len(a) == len(p) == len(n) == 0


@pytest.mark.parametrize("args", [{}, {"alpha": 2.0, "beta": 40.0, "base": 0.5}, {"alpha": 1.0, "beta": 10.0, "base": 0.2}])
@pytest.mark.parametrize("emb,lab", [(EMB, LAB), (EMB3, LAB3)])
def test_multi_similarity_matches_formula(emb, lab, args):
    full = {"alpha": 2.0, "beta": 50.0, "base": 0.5, **args}
    crit = build_criterion({"loss": "multi_similarity", "loss_args": args}, 3, 2)
    assert float(crit(emb, lab)) == pytest.approx(ref_ms(emb, lab, **full), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("args", [{}, {"alpha": 16.0, "margin": 0.2}])
def test_proxy_anchor_matches_formula_with_set_proxies(args):
    full = {"alpha": 32.0, "margin": 0.1, **args}
    # 4 classes, only classes 0..2 present in the batch, so |P+| = 3 and |P| = 4.
    proxies = torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.4, 0.0, 1.0], [-1.0, -1.0, 0.2]], dtype=DT)
    crit = build_criterion({"loss": "proxy_anchor", "loss_args": args}, 4, 3)
    crit.loss.proxies.data = proxies.clone()
    got = crit(EMB3, LAB3).item()
    assert got == pytest.approx(ref_proxy_anchor(EMB3, LAB3, proxies, **full), rel=1e-9)


def test_proxy_anchor_hand_computed_single_point():
    # One embedding of class 0, proxies e1 (class 0) and e2 (class 1), alpha 32, margin 0.1:
    # s(x, p0) = 1, s(x, p1) = 0. Pos: log(1 + e^{-32 * 0.9}) over |P+| = 1;
    # neg: proxy 0 has no negative (0), proxy 1: log(1 + e^{32 * 0.1}), over |P| = 2.
    crit = build_criterion({"loss": "proxy_anchor"}, 2, 2)
    crit.loss.proxies.data = torch.eye(2, dtype=DT)
    got = crit(torch.tensor([[1.0, 0.0]], dtype=DT), torch.tensor([0])).item()
    expected = math.log1p(math.exp(-32 * 0.9)) + math.log1p(math.exp(3.2)) / 2
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("l2_reg", [0.0, 0.002, 0.5])
@pytest.mark.parametrize("normalize,temperature", [(False, 1.0), (True, 1.0), (True, 0.1)])
def test_npair_matches_formula(l2_reg, normalize, temperature):
    z = torch.tensor(
        [[1.0, 0.5, -0.2], [0.3, 2.0, 0.1], [0.9, 0.2, 0.0], [0.1, 1.5, 0.4], [-1.0, 0.2, 1.2], [0.0, 0.0, 0.8], [-0.7, 0.1, 1.0]],
        dtype=DT,
    )
    y = torch.tensor([0, 1, 0, 1, 2, 3, 2])  # class 3 has a single image: not in the N-pair term
    crit = build_criterion(
        {"loss": "npair", "loss_args": {"l2_reg": l2_reg, "normalize_embeddings": normalize,
                                        "temperature": temperature}}, 4, 3
    )
    assert float(crit(z, y)) == pytest.approx(ref_npair(z, y, l2_reg, normalize, temperature), rel=1e-9)


def test_npair_default_is_cosine_over_temperature_and_stays_out_of_saturation():
    """The default feeds cosines / 0.1 to the softmax, so the loss is bounded by the number of
    pairs however large ||z|| grows; Sohn's raw form saturates on large-norm embeddings."""
    z = torch.tensor([[30.0, 0.0], [0.0, 20.0], [25.0, 5.0], [2.0, 30.0]], dtype=DT)
    y = torch.tensor([0, 1, 0, 1])
    default = float(build_criterion({"loss": "npair"}, 2, 2)(z, y))
    assert default == pytest.approx(ref_npair(z, y, 0.0, normalize=True, temperature=0.1), rel=1e-9)
    # two pairs: cross-entropy of logits in [-10, 10] is at most log(2) + 20
    assert 0 <= default <= math.log(2) + 20
    raw = float(build_criterion({"loss": "npair", "loss_args": {"normalize_embeddings": False, "temperature": 1.0}},
                                2, 2)(z, torch.tensor([0, 1, 1, 0])))
    assert raw > 100  # the raw dot products of a badly placed pair are in the hundreds


def test_triplet_with_ref_embeddings_extension_point():
    """Augmenters pass extra candidates through ref_emb/ref_labels: only the batch rows are anchors."""
    synth = torch.tensor([[0.9, 0.1], [0.2, 1.0], [-1.0, 0.3]], dtype=DT)
    synth_y = torch.tensor([0, 1, 1])
    crit = build_criterion({"loss": "triplet", "loss_args": {"margin": 0.3}}, 2, 2)
    assert crit.supports_ref
    got = float(crit(EMB, LAB, ref_emb=synth, ref_labels=synth_y))
    assert got == pytest.approx(ref_triplet(EMB, LAB, 0.3, ref=synth, ref_y=synth_y), abs=1e-9)
    assert not build_criterion({"loss": "npair"}, 2, 2).supports_ref
    assert not build_criterion({"loss": "proxy_anchor"}, 2, 2).supports_ref
    with pytest.raises(ValueError, match="ref_emb"):
        build_criterion({"loss": "npair"}, 2, 2)(EMB, LAB, ref_emb=synth, ref_labels=synth_y)


def test_miner_is_applied_before_the_loss():
    # Semi-hard mining with margin 0.2 keeps triplets with 0 < d(a,n) - d(a,p) <= 0.2 only.
    crit = build_criterion(
        {"loss": "triplet", "loss_args": {"margin": 0.2}, "miner": "triplet_margin",
         "miner_args": {"margin": 0.2, "type_of_triplets": "semihard"}}, 3, 3)
    x = F.normalize(EMB3, dim=1)
    d = torch.cdist(x, x).tolist()
    y = LAB3.tolist()
    vals = []
    for a, p, n in itertools.product(range(6), repeat=3):
        if a != p and y[a] == y[p] and y[n] != y[a] and 0 < d[a][n] - d[a][p] <= 0.2:
            vals.append(max(0.0, d[a][p] - d[a][n] + 0.2))
    assert float(crit(EMB3, LAB3)) == pytest.approx(_mean_nonzero(vals), abs=1e-9)
    a, p, n = crit.mine(EMB3, LAB3)
    assert len(a) == len(vals)


def test_explicit_indices_tuple_skips_miner():
    crit = build_criterion({"loss": "triplet", "miner": "batch_hard"}, 2, 2)
    idx = (torch.tensor([0]), torch.tensor([1]), torch.tensor([3]))
    c = lambda deg: 2 * math.sin(math.radians(deg / 2))  # noqa: E731
    assert float(crit(EMB, LAB, indices_tuple=idx)) == pytest.approx(max(0.0, c(40) - c(170) + 0.2))


# ------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg",
    [
        {"loss": "multi_similarity"},
        {"loss": "contrastive", "loss_args": {"neg_margin": 1.5}},
        {"loss": "triplet", "loss_args": {"margin": 0.5}},
        {"loss": "npair"},
        {"loss": "proxy_anchor"},
    ],
    ids=lambda c: c["loss"],
)
def test_gradcheck(cfg):
    torch.manual_seed(0)
    crit = build_criterion(cfg, 3, 3)
    if cfg["loss"] == "proxy_anchor":
        crit.loss.proxies.data = crit.loss.proxies.data.to(DT)
    z = (EMB3 + 0.01 * torch.randn_like(EMB3)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: crit(e, LAB3), (z,), eps=1e-6, atol=1e-5)


def test_proxy_gradients_flow_and_param_groups():
    torch.manual_seed(0)
    crit = build_criterion({"loss": "proxy_anchor"}, 3, 3)
    params = list(crit.parameters())
    assert len(params) == 1 and params[0].shape == (3, 3)
    z = EMB3.float().requires_grad_(True)
    crit(z, LAB3).backward()
    assert params[0].grad is not None and params[0].grad.abs().sum() > 0
    assert z.grad.abs().sum() > 0
    (group,) = crit.param_groups(1e-4)
    assert group["lr"] == pytest.approx(1e-2) and group["params"][0] is params[0]
    assert crit.lr_multiplier == 100.0
    assert build_criterion({"loss": "proxy_anchor", "loss_lr_multiplier": 10}, 3, 3).lr_multiplier == 10.0
    triplet = build_criterion({"loss": "triplet"}, 3, 3)
    assert list(triplet.parameters()) == [] and triplet.param_groups(1e-4) == [] and triplet.lr_multiplier == 1.0


# ------------------------------------------------------------------------------------------
# Training on a toy separable problem
# ------------------------------------------------------------------------------------------
PARAMS_METHODS = {
    "contrastive": {"loss": "contrastive", "loss_args": {"pos_margin": 0.0, "neg_margin": 0.5}},
    "triplet": {"loss": "triplet", "loss_args": {"margin": 0.1}, "miner": "triplet_margin",
                "miner_args": {"margin": 0.1, "type_of_triplets": "semihard"}},
    "triplet_all": {"loss": "triplet"},
    "npair": {"loss": "npair"},
    "npair_cos": {"loss": "npair", "loss_args": {"normalize_embeddings": True}},
    "multi_similarity": {"loss": "multi_similarity", "loss_args": {"alpha": 2.0, "beta": 40.0, "base": 0.5},
                         "miner": "multi_similarity", "miner_args": {"epsilon": 0.1}},
    "proxy_anchor": {"loss": "proxy_anchor", "loss_args": {"alpha": 32.0, "margin": 0.1}, "loss_lr_multiplier": 100.0},
    "contrastive_pair_margin": {"loss": "contrastive", "miner": "pair_margin"},
    "triplet_batch_hard": {"loss": "triplet", "miner": "batch_hard"},
    "triplet_hardest": TRIPLET_HARDEST,
}


@pytest.mark.parametrize("method", sorted(PARAMS_METHODS))
def test_loss_decreases_on_toy_problem(method):
    torch.manual_seed(0)
    n_classes, per_class, in_dim, out_dim = 4, 6, 16, 8
    centres = 2.0 * torch.randn(n_classes, in_dim)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    feats = centres[y] + torch.randn(len(y), in_dim)
    head = EmbeddingHead(in_dim, out_dim)
    crit = build_criterion(PARAMS_METHODS[method], n_classes, out_dim)
    lr = 1e-2
    opt = torch.optim.Adam([{"params": head.parameters(), "lr": lr}, *crit.param_groups(lr / 100)])
    plain = build_criterion({"loss": PARAMS_METHODS[method]["loss"], "loss_args": PARAMS_METHODS[method].get("loss_args")},
                            n_classes, out_dim)
    plain.load_state_dict(crit.state_dict())  # same proxies; measure without the miner

    def unmined_loss():
        with torch.no_grad():
            plain.load_state_dict(crit.state_dict())
            return float(plain(head(feats, normalize=False), y))

    before = unmined_loss()
    for _ in range(40):
        opt.zero_grad()
        loss = crit(head(feats, normalize=False), y)
        loss.backward()
        opt.step()
    after = unmined_loss()
    assert math.isfinite(after) and after < 0.9 * before, (before, after)


def test_params_yaml_methods_build():
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    built = 0
    for name, method in cfg["methods"].items():
        if method.get("loss") == "none":
            continue
        method = criterion_config(method)  # without its own training blocks
        crit = build_criterion(method, 10, cfg["train"]["embedding_dim"], name=name)
        assert isinstance(crit, (Criterion, CriterionWrapper))
        built += 1
    assert built >= 1


# ------------------------------------------------------------------------------------------
# Edge cases
# ------------------------------------------------------------------------------------------
ALL_CONFIGS = [{"loss": loss} for loss in LOSSES.names()] + [
    {"loss": "triplet", "miner": miner} for miner in MINERS.names()
] + [{"loss": "multi_similarity", "miner": "multi_similarity"}, {"loss": "contrastive", "miner": "triplet_margin"}]


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c['loss']}+{c.get('miner')}")
@pytest.mark.parametrize(
    "labels", [[0, 1, 2, 3], [0, 0, 1, 2, 3], [0], [2, 2, 2]], ids=["singletons", "one-pair", "one-sample", "one-class"]
)
def test_single_sample_classes_do_not_crash(cfg, labels):
    torch.manual_seed(0)
    y = torch.tensor(labels)
    z = torch.randn(len(y), 5, requires_grad=True)
    crit = build_criterion(cfg, 4, 5)
    loss = crit(z, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()  # differentiable even when no pair/triplet exists
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_duplicates_and_ties_are_finite():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    for cfg in ALL_CONFIGS:
        loss = build_criterion(cfg, 2, 2)(z, y)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all(), cfg


def test_nan_embeddings_raise():
    z = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    with pytest.raises(FloatingPointError, match="non-finite"):
        build_criterion({"loss": "triplet"}, 2, 2)(z, torch.tensor([0, 1]))


def test_proxy_anchor_rejects_labels_out_of_range():
    crit = build_criterion({"loss": "proxy_anchor"}, 3, 2)
    with pytest.raises(ValueError, match=r"labels in \[0, 3\)"):
        crit(torch.randn(2, 2), torch.tensor([0, 3]))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="expected embeddings"):
        build_criterion({"loss": "triplet"}, 2, 2)(torch.randn(3, 2), torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------
# Registry, defaults and error messages
# ------------------------------------------------------------------------------------------
def test_registry_names_and_formulas():
    assert LOSSES.names() == ["circle", "contrastive", "contrastive_similarity", "margin", "multi_similarity",
                              "normalized_softmax", "npair", "proxy_anchor", "proxy_nca", "soft_triple", "triplet"]
    assert {"triplet_margin", "multi_similarity", "batch_hard", "pair_margin", "distance_weighted",
            "hardest_negative"} <= set(MINERS.names())
    assert "none" not in LOSSES
    for registry in (LOSSES, MINERS):
        for name in registry.names():
            assert registry.get(name).formula, name


def test_defaults_are_the_documented_ones():
    assert allowed_args("loss", "contrastive") == {"pos_margin": 0.0, "neg_margin": 1.0}
    assert allowed_args("loss", "triplet") == {"margin": 0.2, "swap": False, "smooth_loss": False,
                                               "reduction": "mean_nonzero"}
    assert allowed_args("loss", "npair") == {"l2_reg": 0.0, "normalize_embeddings": True, "temperature": 0.1}
    assert allowed_args("loss", "multi_similarity") == {"alpha": 2.0, "beta": 50.0, "base": 0.5}
    assert allowed_args("loss", "proxy_anchor") == {"margin": 0.1, "alpha": 32.0}
    assert allowed_args("miner", "triplet_margin") == {"margin": 0.2, "type_of_triplets": "semihard"}
    assert allowed_args("miner", "multi_similarity") == {"epsilon": 0.1}
    assert allowed_args("miner", "hardest_negative") == {}
    crit = build_criterion({"loss": "triplet", "miner": "triplet_margin"}, 2, 2)
    assert crit.loss.margin == 0.2 and crit.miner.type_of_triplets == "semihard"
    pa = build_criterion({"loss": "proxy_anchor"}, 5, 7)
    assert pa.loss.alpha == 32.0 and pa.loss.margin == 0.1 and pa.loss.proxies.shape == (5, 7)


def test_proxies_are_seeded_by_torch():
    torch.manual_seed(3)
    a = build_criterion({"loss": "proxy_anchor"}, 4, 6).loss.proxies.detach().clone()
    torch.manual_seed(3)
    b = build_criterion({"loss": "proxy_anchor"}, 4, 6).loss.proxies.detach().clone()
    assert torch.equal(a, b)


def test_unknown_loss_lists_available():
    with pytest.raises(DmlReproError, match="unknown loss 'tripletz'.*contrastive.*triplet"):
        build_criterion({"loss": "tripletz"}, 2, 2)


def test_loss_none_is_explained():
    with pytest.raises(DmlReproError, match="frozen backbone"):
        build_criterion({"loss": "none"}, 2, 2)


def test_unknown_miner_lists_available():
    with pytest.raises(DmlReproError, match="unknown miner 'hardest'.*batch_hard.*triplet_margin"):
        build_criterion({"loss": "triplet", "miner": "hardest"}, 2, 2)


def test_unknown_loss_arg_names_key_and_allowed():
    with pytest.raises(DmlReproError) as info:
        build_criterion({"loss": "triplet", "loss_args": {"marign": 0.1}}, 2, 2, name="triplet")
    msg = str(info.value)
    assert "'marign'" in msg and "methods.triplet.loss_args" in msg
    assert "margin" in msg and "smooth_loss" in msg and "swap" in msg


def test_unknown_miner_arg_names_key_and_allowed():
    with pytest.raises(DmlReproError, match=r"'eps'.*miner_args.*allowed: epsilon"):
        build_criterion({"loss": "multi_similarity", "miner": "multi_similarity", "miner_args": {"eps": 0.1}}, 2, 2)


def test_builder_supplied_args_are_not_configurable():
    with pytest.raises(DmlReproError, match="'num_classes'"):
        build_criterion({"loss": "proxy_anchor", "loss_args": {"num_classes": 3}}, 2, 2)


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"loss": "triplet", "loss_args": {"margin": "0.1"}}, r"margin = '0.1' has the wrong type"),
        ({"loss": "npair", "loss_args": {"normalize_embeddings": 1}}, "wrong type"),
        ({"loss": "triplet", "miner": "triplet_margin", "miner_args": {"type_of_triplets": "semi"}}, "not one of"),
        ({"loss": "triplet", "loss_args": [0.1]}, "must be a mapping"),
        ({"loss": "triplet", "miner_args": {"margin": 0.1}}, "miner is not"),
        ({"loss": "proxy_anchor", "loss_lr_multiplier": -1}, "loss_lr_multiplier must be a positive"),
        ({"loss": "proxy_anchor", "loss_lr_multiplier": True}, "loss_lr_multiplier must be a positive"),
        ({"loss": "triplet", "augmenter": "iaa"}, r"augmenter must map augmenter names"),
        ({"loss": "triplet", "regularizer": "da"}, "regularizer must map regularizer names"),
        ({"loss_args": {}}, "has no 'loss'"),
        ({"loss": "npair", "loss_args": {"l2_reg": -0.1}}, "l2_reg must be >= 0"),
    ],
)
def test_config_errors(cfg, match):
    with pytest.raises(DmlReproError, match=match):
        build_criterion(cfg, 3, 4)
