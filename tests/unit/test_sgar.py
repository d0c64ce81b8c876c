"""SGAR: the ranking loss against hand-computed values, the gate, the graded intensities, the whole
loss against loop-by-loop references (the paper's formula, and a transcription of the released
code's ``Proxy_Anchor.forward`` / ``get_gen_loss3``), every switch of the code variant, the
configuration, and inside the trainer: exact resume of a killed run, q never used at evaluation."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.overrides import TorchFunctionMode

from dmlrepro.study.params import validate_params
from dmlrepro.errors import DmlReproError
from dmlrepro.methods import CriterionWrapper, build_criterion, method_labels, method_problems
from dmlrepro.methods.sgar import SCHEMA, VARIANTS, SyntheticRanking, grouped_log1p_sum_exp, ranking_loss
from dmlrepro.study.runs import resolve_run
from dmlrepro.training import frozen
from dmlrepro.study.runs import RunPaths
from conftest import REPO
from test_training import _epochs, setup, train_killed_and_resumed  # noqa: F401  (fixture)

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """One torch thread: a busy second core makes two spin-waiting threads several times slower."""
    yield


def sgar(num_classes=3, dim=6, seed=0, margin=0.1, **args) -> SyntheticRanking:
    torch.manual_seed(seed)
    cfg = {"loss": "proxy_anchor", "loss_args": {"margin": margin}, "augmenter": {"sgar": args}}
    return build_criterion(cfg, num_classes, dim).double()


def batch(seed=1, n=9, dim=6, classes=(0, 0, 1, 1, 1, 2, 2, 0, 1)):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(n, dim, generator=g, dtype=DT)).requires_grad_(True), torch.tensor(classes)


# ---------------------------------------------------------------------------------------------
# The ranking loss by hand


def test_ranking_loss_of_an_order_kept_with_margin_is_the_hand_computed_small_value():
    # c = (0.9, 0.6, 0.2), s = 32, delta = 0.11: pairs (1,2), (1,3), (2,3) give
    # c_k - c_j + delta = -0.19, -0.59, -0.29; L = log(1 + e^-6.08 + e^-18.88 + e^-9.28) / 32
    c = torch.tensor([[0.9, 0.6, 0.2]], dtype=DT)
    expected = math.log(1 + math.exp(-6.08) + math.exp(-18.88) + math.exp(-9.28)) / 32
    assert expected == pytest.approx(7.433e-5, rel=1e-3)
    assert ranking_loss(c, 32.0, 0.11).item() == pytest.approx(expected, rel=1e-12)
    # a larger scale drives it towards 0, as the paper's "zero when the order holds with margin"
    assert ranking_loss(c, 320.0, 0.11).item() < 1e-20


def test_a_violated_order_costs_its_gap_and_the_gradient_restores_the_order():
    # c = (0.2, 0.5): the stronger synthesis (j = 2) is closer. L = log(1 + e^{32 (0.5 - 0.2 + 0.11)}) / 32
    c = torch.tensor([[0.2, 0.5]], dtype=DT, requires_grad=True)
    loss = ranking_loss(c, 32.0, 0.11)
    assert loss.item() == pytest.approx(math.log1p(math.exp(32 * 0.41)) / 32, rel=1e-12)  # ~ 0.41
    loss.backward()
    sig = 1 / (1 + math.exp(-32 * 0.41))
    assert c.grad[0, 0].item() == pytest.approx(-sig) and c.grad[0, 1].item() == pytest.approx(sig)
    # gradient descent raises c_1 (weaker synthesis closer) and lowers c_2


def test_ranking_loss_with_one_synthetic_is_zero_and_stable_for_any_scale():
    assert ranking_loss(torch.tensor([[0.3], [0.1]], dtype=DT), 32.0, 0.11).tolist() == [0.0, 0.0]
    huge = ranking_loss(torch.tensor([[0.0, 1.0]], dtype=DT), 1e4, 0.11)  # exp(11000) would overflow
    assert huge.item() == pytest.approx(1.11)


def test_grouped_log_one_plus_sum_exp_matches_each_group_by_hand():
    v = torch.tensor([0.5, -1.0, 2.0, 800.0, 801.0], dtype=DT)
    out = grouped_log1p_sum_exp(v, torch.tensor([0, 0, 1, 2, 2]), 4)
    assert out[0].item() == pytest.approx(math.log(1 + math.exp(0.5) + math.exp(-1.0)))
    assert out[1].item() == pytest.approx(math.log(1 + math.exp(2.0)))
    assert out[2].item() == pytest.approx(801 + math.log(1 + math.exp(-1)))  # no overflow
    assert out[3].item() == 0.0  # an empty group: log(1)


# ---------------------------------------------------------------------------------------------
# The gate


def test_the_gate_keeps_exactly_the_samples_close_enough_to_their_own_raw_proxy():
    crit = sgar(num_classes=3, dim=2)
    crit.proxies.data = torch.tensor([[2.0, 0.0], [0.0, 0.5], [1.0, 1.0]], dtype=DT)
    z = torch.tensor([
        [3.0, 0.0],            # y 0: <P0, x> = 2                        -> in
        [-1.0, 1.0],           # y 0: -1.41                               -> out
        [0.0, 10.0],           # y 1: 0.5 (raw z of norm 10: x is used)   -> in
        [0.99679, 0.08],       # y 1: 0.04 < tau although cos(P1, x) = 0.08 >= tau: the raw proxy counts -> out
        [0.99820, 0.06],       # y 1: 0.5 * 0.06 = 0.03                   -> out
        [0.03, 0.99955],       # y 0: 2 * 0.03 = 0.06 >= tau although cos(P0, x) = 0.03 < tau -> in
        [1.0, -1.0],           # y 2: 0 (close to P0, another class's proxy, does not count) -> out
        [1.0, 2.0],            # y 2: 3 / sqrt 5 = 1.34                    -> in
    ], dtype=DT)
    y = torch.tensor([0, 0, 1, 1, 1, 0, 2, 2])
    assert crit.gate(z, y).tolist() == [True, False, True, False, False, True, False, True]
    terms = crit.terms(z, y)
    assert terms["gated"].tolist() == [0, 2, 5, 7] and terms["classes"].tolist() == [0, 1, 2]
    assert sgar(num_classes=3, dim=2, tau=None).gate(z, y).all()


def test_no_gated_sample_leaves_proxy_anchor_alone():
    crit = sgar(tau=1e6)
    z, y = batch()
    terms = crit.terms(z, y)
    assert not terms["gate"].any() and torch.equal(terms["total"], crit.base(z, y))


# ---------------------------------------------------------------------------------------------
# Synthesis: intensities


def test_paper_intensities_grow_with_j_and_the_code_erases_them():
    z, y = batch()
    paper = sgar(alpha=0.3)
    torch.manual_seed(5)
    o, which = paper.offsets(4, torch.tensor([0, 0, 1, 2]), 3, z.detach())
    assert o.shape == (1, 5, 6) and which.tolist() == [0, 0, 0, 0]  # one draw per step, shared
    assert torch.allclose(o.norm(dim=2), torch.tensor([[0.3, 0.6, 0.9, 1.2, 1.5]], dtype=DT))  # ||r^j - x|| = j alpha

    code = sgar(alpha=0.3, variant="code")
    o, which = code.offsets(4, torch.tensor([0, 0, 1, 2]), 3, z.detach())
    assert o.shape == (3, 5, 6) and which.tolist() == [0, 0, 1, 2]  # the bank shuffled per class
    assert torch.allclose(o.norm(dim=2), torch.ones(3, 5, dtype=DT))  # every intensity has norm 1
    # intensity kept but learned bank: j alpha times a shuffled unit row of D
    bank = sgar(alpha=0.3, directions="learned")
    o, _ = bank.offsets(4, torch.tensor([0, 0, 1, 2]), 3, z.detach())
    unit = F.normalize(bank.directions.detach(), dim=1)
    for k in range(3):
        rows = o[k] / (0.3 * torch.arange(1, 6, dtype=DT))[:, None]
        match = (rows @ unit.T).argmax(1)
        assert sorted(match.tolist()) == [0, 1, 2, 3, 4] and torch.allclose(rows, unit[match])


def test_random_directions_per_sample_are_fresh_for_every_sample():
    crit = sgar(directions="random_per_sample")
    o, which = crit.offsets(4, torch.tensor([0, 0, 1, 2]), 3, torch.zeros(1, 6, dtype=DT))
    assert o.shape == (4, 5, 6) and which.tolist() == [0, 1, 2, 3]
    assert not torch.allclose(o[0], o[1])


def test_synthetic_similarity_falls_with_intensity_at_initialisation():
    """W orthogonal, b = 0: before training q keeps angles up to the ReLU, so c_j = <q(r^j), q(x)>
    falls as j grows in the paper variant; with the intensity erased (code) it does not."""
    z = torch.randn(64, 64, dtype=DT)
    y = torch.arange(64) % 3

    def mean_c(crit):  # over 64 samples and 30 draws of the directions
        with torch.no_grad():
            return torch.stack([crit.terms(z, y)["c"].mean(0) for _ in range(30)]).mean(0)

    c = mean_c(sgar(dim=64, tau=None, N=5))
    assert (c[:-1] > c[1:]).all()
    erased = mean_c(sgar(dim=64, tau=None, N=5, normalize_offsets=True))
    assert (erased.max() - erased.min()) < 0.2 * (c.max() - c.min())


# ---------------------------------------------------------------------------------------------
# The whole loss against loop-by-loop references


def _q(crit, v):
    return F.relu(F.normalize(crit.projector.weight @ v + crit.projector.bias, dim=0))


def paper_reference(crit, z, y, o):
    """The paper's formula with explicit loops over classes, samples, intensities and pairs."""
    a = crit.args
    x = F.normalize(z, dim=1)
    p = crit.proxies
    total = crit.base(z, y)
    extra = 0.0
    for c in sorted(set(y.tolist())):
        members = [i for i in range(len(y)) if y[i] == c and torch.dot(p[c], x[i]) >= a["tau"]]
        if not members:
            continue
        ranks, sp_sum = [], 0.0
        for i in members:
            qx = _q(crit, x[i])
            cs = [torch.dot(_q(crit, x[i] + o[j]), qx) for j in range(a["N"])]
            pairs = sum(torch.exp(a["scale"] * (cs[k] - cs[j] + a["delta"]))
                        for j in range(a["N"]) for k in range(j + 1, a["N"]))
            ranks.append(torch.log(1 + pairs) / a["scale"])
            for j in range(a["N"]):
                sp_sum = sp_sum + torch.exp(crit.sp_alpha * (crit.sp_margin - torch.dot(_q(crit, x[i] + o[j]), _q(crit, p[c]))))
        extra = extra + a["rho_m"] * torch.log(1 + sp_sum) + a["rho_g"] * sum(ranks) / len(ranks)
    return total + a["lam"] * extra


def test_the_paper_variant_equals_its_formula_computed_loop_by_loop():
    crit = sgar(margin=0.2, lam=0.5)
    z, y = batch()
    o = F.normalize(torch.randn(5, 6, dtype=DT), dim=1) * torch.arange(1, 6, dtype=DT)[:, None]
    crit.offsets = lambda n, slot, g, like: (o[None], torch.zeros_like(slot))
    terms = crit.terms(z, y)
    assert len(terms["gated"]) >= 4 and 0 < len(terms["gated"]) < len(y)  # the gate does something
    assert torch.bincount(y[terms["gated"]]).max() >= 2  # and a class has several gated samples
    (grad,) = torch.autograd.grad(terms["total"], z)
    expected = paper_reference(crit, z, y, o)
    (expected_grad,) = torch.autograd.grad(expected, z)
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-10)
    assert torch.allclose(grad, expected_grad, atol=1e-10)


def code_reference(crit, z, y, mrg=None):
    """A transcription of the released code (losses.py ``Proxy_Anchor.forward`` and
    ``get_gen_loss3``, its loops and list handling as written), the bank's shuffle an identity.
    ``mrg``: the margin of the synthetic-to-proxy term (default the criterion's); Proxy-Anchor keeps
    the base's margin, which the code shares with it (``self.mrg``) but ours is tuned."""
    X, T = F.normalize(z, dim=1), y
    P = crit.proxies
    D = crit.directions
    N, alpha, mrg = crit.args["N"], crit.sp_alpha, crit.sp_margin if mrg is None else mrg
    scale, delta, r = crit.args["scale"], crit.args["delta"], crit.args["alpha"]
    fc = lambda v: F.relu(F.normalize(v @ crit.projector.weight.T + crit.projector.bias, dim=1))  # noqa: E731
    nb_classes = P.shape[0]
    X_fc = fc(X)
    cos = F.normalize(X_fc, dim=1) @ F.normalize(P, dim=1).T
    cos_px = P @ X.T
    P_one_hot = F.one_hot(T, nb_classes).to(DT)
    N_one_hot = 1 - P_one_hot
    pos_exp = torch.exp(-crit.base.loss.alpha * (cos - crit.base.loss.margin))
    neg_exp = torch.exp(crit.base.loss.alpha * (cos + crit.base.loss.margin))
    with_pos_proxies = torch.nonzero(P_one_hot.sum(dim=0) != 0).squeeze(dim=1)
    P_sim_sum = torch.where(P_one_hot == 1, pos_exp, torch.zeros_like(pos_exp)).sum(dim=0)
    N_sim_sum = torch.where(N_one_hot == 1, neg_exp, torch.zeros_like(neg_exp)).sum(dim=0)
    loss = torch.log(1 + P_sim_sum).sum() / len(with_pos_proxies) + torch.log(1 + N_sim_sum).sum() / nb_classes

    def get_gen_loss3(X, P):
        gen_data = F.normalize(D, dim=1)  # shuffled by the identity
        gen_data = torch.stack([gen_data[i] * (i + 1) * r for i in range(N)])
        gen_data = F.normalize(gen_data, dim=1)
        gen_loss_gen = []
        for m in range(X.size(0)):
            gen_x = fc(X[m][None] + gen_data)
            Xm = fc(X[m].view(1, -1))
            cos_gx = (gen_x @ Xm.T)[:, 0]
            g_loss_l_mid, g_loss_r_mid = [], []
            for i in range(N):
                if i > 0:
                    g_loss_l_mid.append(sum(torch.exp(scale * (cos_gx[i] - cos_gx[j] + delta)) for j in range(i)))
                if i < N - 1:
                    g_loss_r_mid.append(sum(torch.exp(scale * (cos_gx[j] - cos_gx[i] + delta)) for j in range(i + 1, N)))
            gen_loss_gen.append((1 / scale) * torch.log(1 + sum(g_loss_l_mid)))
            gen_loss_gen.append((1 / scale) * torch.log(1 + sum(g_loss_r_mid)))
            P = P.view(1, -1)
            P = fc(P)
            cos_gp = (gen_x @ P.T)[:, 0]
            metric_loss = []
            for k in range(N):
                metric_loss.append(torch.exp(alpha * (mrg - cos_gp[k])))
        metric_loss = torch.log(1 + sum(metric_loss)) / 1
        gen = sum(gen_loss_gen) / X.size(0)
        return crit.args["rho_m"] * metric_loss + crit.args["rho_g"] * gen

    gen_loss = []
    for i in range(nb_classes):
        index = (T == i) & (cos_px[i] >= crit.args["tau"])
        if index.sum() != 0:
            gen_loss.append(get_gen_loss3(X[index], P[i]))
    return loss + crit.args["lam"] * sum(gen_loss) if gen_loss else loss


def test_the_code_variant_equals_a_transcription_of_the_released_code():
    crit = sgar(variant="code", margin=0.1)
    crit.permutations = lambda n, device: torch.arange(crit.args["N"]).expand(n, -1)
    z, y = batch(n=12, classes=(0, 0, 1, 1, 1, 2, 2, 0, 1, 2, 0, 1))
    terms = crit.terms(z, y)
    assert torch.bincount(y[terms["gated"]]).max() >= 2
    (grad,) = torch.autograd.grad(terms["total"], z)
    expected = code_reference(crit, z, y)
    (expected_grad,) = torch.autograd.grad(expected, z)
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-9)
    assert torch.allclose(grad, expected_grad, atol=1e-9)


def test_the_code_variant_l_sp_margin_is_the_released_mrg_whatever_the_tuned_margin():
    """train.py's ``--mrg`` default 0.1 is the margin of L_sp (``self.mrg - cos_gp[k]``); params.yaml's
    Proxy-Anchor margin is tuned (0.2): the code variant keeps 0.1 for L_sp, the paper the base's."""
    crit = sgar(variant="code", margin=0.2)
    assert crit.sp_margin == 0.1 and crit.base.loss.margin == 0.2
    crit.permutations = lambda n, device: torch.arange(crit.args["N"]).expand(n, -1)
    z, y = batch(n=12, classes=(0, 0, 1, 1, 1, 2, 2, 0, 1, 2, 0, 1))
    total = crit.terms(z, y)["total"]
    assert total.item() == pytest.approx(code_reference(crit, z, y, mrg=0.1).item(), rel=1e-9)
    assert total.item() != pytest.approx(code_reference(crit, z, y, mrg=0.2).item(), rel=1e-6)
    assert sgar(margin=0.2).sp_margin == 0.2  # paper: the base's margin
    assert sgar(margin=0.2, variant="code", sp_margin="base").sp_margin == 0.2  # explicit wins
    assert sgar(margin=0.2, sp_margin=0.05).sp_margin == 0.05


def _with_grads(grads):
    params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=DT)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g, dtype=DT)
    return params


GRADS = [np.array([[25.0, -3.0], [-40.0, 9.99]]), np.array([11.0, -10.5, 0.5, -10.0])]


@pytest.mark.parametrize("kw,max_norm,expect", [
    # train.py: clip_grad_value_(model.parameters(), 10) and clip_grad_value_(criterion.parameters(), 10)
    ({"variant": "code"}, None, [np.clip(g, -10, 10) for g in GRADS]),
    ({"variant": "code"}, 5.0, [np.clip(g, -10, 10) for g in GRADS]),  # by value, not by the norm
    ({"variant": "code", "clip_value": 2.0}, None, [np.clip(g, -2, 2) for g in GRADS]),
    ({}, None, GRADS),  # paper: the trainer's rule, here none
    # paper: the trainer's global norm (torch's 1e-6 in the denominator)
    ({}, 5.0, [g * 5.0 / (math.sqrt(sum((h ** 2).sum() for h in GRADS)) + 1e-6) for g in GRADS]),
    ({"variant": "code", "clip_by_value": False}, 5.0,
     [g * 5.0 / (math.sqrt(sum((h ** 2).sum() for h in GRADS)) + 1e-6) for g in GRADS]),
])
def test_clip_gradients_code_clips_each_value_paper_keeps_the_trainers_norm(kw, max_norm, expect):
    params = _with_grads(GRADS)
    sgar(**kw).clip_gradients(params, max_norm)
    for p, e in zip(params, expect):
        np.testing.assert_allclose(p.grad.numpy(), e, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Every switch of the code variant is its own, observable difference


def _total(crit, z, y, seed=3):
    torch.manual_seed(seed)
    return crit.terms(z, y)


@pytest.mark.parametrize("switch", [k for k in VARIANTS["paper"] if k not in ("projector_lr_multiplier", "clip_by_value")])
def test_each_code_switch_alone_changes_the_loss(switch):
    z, y = batch(n=12, classes=(0, 0, 1, 1, 1, 2, 2, 0, 1, 2, 0, 1))
    paper = _total(sgar(margin=0.2), z, y)  # params.yaml's tuned margin: the code's L_sp margin differs
    flipped = _total(sgar(margin=0.2, **{switch: VARIANTS["code"][switch]}), z, y)
    assert flipped["total"].item() != pytest.approx(paper["total"].item(), rel=1e-6)
    assert torch.equal(flipped["gate"], paper["gate"])  # the gate is the same in both


def test_double_ranking_adds_the_ranking_term_once_more():
    z, y = batch()
    once, twice = _total(sgar(), z, y), _total(sgar(double_ranking=True), z, y)
    a = sgar().args
    assert (twice["total"] - once["total"]).item() == pytest.approx(
        a["lam"] * a["rho_g"] * once["rank_mean"].sum().item(), rel=1e-10)


def test_metric_on_projection_feeds_q_of_x_to_proxy_anchor():
    z, y = batch()
    crit = sgar(metric_on_projection=True)
    qx = F.relu(F.normalize(F.normalize(z, dim=1) @ crit.projector.weight.T + crit.projector.bias, dim=1))
    assert crit.terms(z, y)["pa"].item() == pytest.approx(crit.base(qx, y).item(), rel=1e-12)
    assert crit.terms(z, y)["pa"].item() != pytest.approx(crit.base(z, y).item(), rel=1e-6)


def test_sp_from_the_last_sample_of_a_class_only():
    """Class 0's gated samples are 0, 1, 7 in batch order: the code keeps sample 7's term only."""
    z, y = batch()
    kw = dict(tau=None, lam=1.0, rho_g=0.0, rho_m=1.0)
    full, last = _total(sgar(**kw), z, y), _total(sgar(sp_last_sample_only=True, **kw), z, y)
    only = [i for i in range(len(y)) if y[i] != 0 or i == 7]
    alone = _total(sgar(**kw), z[only], y[only])  # same directions: one shared draw per step
    assert last["sp"][0].item() == pytest.approx(alone["sp"][0].item(), rel=1e-12)
    assert last["sp"][0].item() < full["sp"][0].item()


def test_lr_multipliers_of_proxies_projector_and_bank():
    groups = {g["name"]: g for g in sgar().param_groups(1e-3)}
    assert groups["loss:proxy_anchor"]["lr"] == pytest.approx(0.1)  # the base's 100x
    assert groups["sgar:projector"]["lr"] == pytest.approx(1e-3) and len(groups["sgar:projector"]["params"]) == 2
    code = {g["name"]: g for g in sgar(variant="code").param_groups(1e-3)}
    assert code["sgar:projector"]["lr"] == pytest.approx(0.1) and len(code["sgar:projector"]["params"]) == 3
    assert sgar(projector_lr_multiplier=10.0).param_groups(1e-3)[1]["lr"] == pytest.approx(1e-2)


def test_gradients_reach_the_head_input_the_projector_the_proxies_and_the_bank():
    crit = sgar(variant="code", tau=None)
    z, y = batch()
    crit(z, y).backward()
    for name, p in [("z", z), ("W", crit.projector.weight), ("b", crit.projector.bias),
                    ("proxies", crit.proxies), ("bank", crit.directions)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_variant_code_sets_every_switch_and_an_explicit_switch_wins():
    assert sgar(variant="code").args == {**sgar().args, "variant": "code", **VARIANTS["code"]}
    mixed = sgar(variant="code", normalize_offsets=False)
    assert mixed.args["normalize_offsets"] is False and mixed.args["directions"] == "learned"
    assert sgar(sp_margin=0.3, sp_alpha=16.0).sp_margin == 0.3
    assert sgar(margin=0.2).sp_margin == 0.2 and sgar().sp_alpha == 32.0  # null: the base's


def test_the_orthogonal_projector_starts_with_zero_bias():
    crit = sgar(dim=16)
    w = crit.projector.weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(16, dtype=DT), atol=1e-6)  # float32 init and not crit.projector.bias.any()


class _Count(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_the_work_is_vectorised_the_number_of_torch_calls_does_not_grow_with_samples_or_classes(variant):
    """No Python loop per gated sample or per class: a batch of 2 classes x 2 and one of 40 classes
    x 2 (all gated) make the same number of torch calls (the Python side of forward and backward)."""
    counts = []
    for classes in (2, 40):
        crit = sgar(num_classes=40, dim=8, variant=variant, tau=None)
        z = torch.randn(2 * classes, 8, dtype=DT, requires_grad=True)
        y = torch.arange(classes).repeat_interleave(2)
        with _Count() as counter:
            crit(z, y).backward()
        counts.append(counter.n)
    assert counts[0] == counts[1] > 20


# ---------------------------------------------------------------------------------------------
# Configuration


def test_sgar_refuses_any_base_but_proxy_anchor():
    with pytest.raises(DmlReproError, match="SGAR wraps the proxy_anchor loss only.*'triplet'"):
        build_criterion({"loss": "triplet", "augmenter": {"sgar": {}}}, 3, 8)


def test_projector_dim_must_match_for_proxy_anchor_on_q():
    assert sgar(projector_dim=4).projector.weight.shape == (4, 6)
    with pytest.raises(DmlReproError, match="metric_on_projection .*projector_dim must be null or 6"):
        sgar(projector_dim=4, metric_on_projection=True)
    with pytest.raises(DmlReproError, match="repeated_proxy_projection .*projector_dim must be null or 6"):
        sgar(projector_dim=4, variant="code", metric_on_projection=False)
    z, y = batch()
    assert torch.isfinite(sgar(projector_dim=4, tau=None)(z, y))  # a narrower projector works in the paper form


@pytest.mark.parametrize("bad, match", [({"N": 0}, r"sgar\.N"), ({"directons": "learned"}, "unknown key 'directons'"),
                                        ({"directions": "fixed"}, r"sgar\.directions"), ({"lam": "0.2"}, "lam")])
def test_bad_arguments_name_the_key(bad, match):
    problems = method_problems({"loss": "proxy_anchor", "augmenter": {"sgar": bad}})
    assert len(problems) == 1 and re.search(match, problems[0]), problems


def test_params_sgar_is_proxy_anchor_plus_every_argument_of_the_augmenter():
    """Every argument is written in params.yaml, so `dvc exp run -S methods.sgar.augmenter.sgar.<key>=`
    reaches it (DVC refuses a key the file does not have)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    entry = dict(params["methods"]["sgar"])
    args = entry.pop("augmenter")["sgar"]
    assert entry == params["methods"]["proxy_anchor"]
    assert set(args) == set(SCHEMA) and args["variant"] == "paper"
    assert all(args[k] is None for k in VARIANTS["paper"])  # the switches follow the variant
    validate_params(params)
    assert method_labels(params["methods"]["sgar"]) == ["SGAR"]


def test_the_repository_declaration_expands_with_the_code_rows_and_sweeps(tmp_path):
    from conftest import tiny_params
    from dmlrepro.study import load_study

    params = tiny_params(seeds=(0,))
    params["paths"]["papers"] = str(REPO / "workflow" / "papers")
    study = load_study(params)
    rows = {r.label: r for r in study.table("sgar/glyphs").rows}
    assert rows["Proxy-Anchor + SGAR (code)"].runs["glyphs"][0].config["method"]["augmenter"]["sgar"]["variant"] == "code"
    assert rows["Proxy-Anchor + SGAR"].runs["glyphs"][0].config["method"]["augmenter"]["sgar"]["variant"] == "paper"
    switches = study.table("sgar/switches").rows
    flipped = [r.runs["glyphs"][0].config["method"]["augmenter"]["sgar"] for r in switches[2:-1]]
    assert {k for args in flipped for k in VARIANTS["paper"] if args[k] is not None} == set(VARIANTS["paper"])
    for name, key in (("n", "N"), ("alpha", "alpha"), ("delta", "delta"), ("lam", "lam"), ("tau", "tau")):
        sweep = study.sweep(f"sgar/{name}")
        assert [p.runs[0].config["method"]["augmenter"]["sgar"][key] for p in sweep.points] == sweep.decl["values"]
    main = study.table("sgar/main")
    assert main.rows[1].published["cub_r1"] == 68.8 and main.rows[0].published["inshop_r1"] == 91.5


# ---------------------------------------------------------------------------------------------
# Inside the trainer


def _sgar_run(params, **args):
    method = params["methods"]["sgar"]
    method.pop("train", None)  # the fixture's 3-epoch schedule, not Proxy-Anchor's 60
    method["augmenter"]["sgar"].update(args)
    return resolve_run(params, "glyphs", "sgar", 0, [])


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_a_killed_sgar_run_resumes_to_identical_metrics(setup, monkeypatch, variant):  # noqa: F811
    params, _, tmp = setup
    run = _sgar_run(params, variant=variant, tau=None)  # every sample synthesised: random draws each step
    (reference, reference_model), (resumed, model) = train_killed_and_resumed(params, run, tmp, monkeypatch)
    assert _epochs(resumed) == _epochs(reference) and len(reference["epochs"]) == 3
    for key, value in reference_model["last_state"].items():
        assert torch.equal(model["last_state"][key], value), key


class _Amplified(CriterionWrapper):
    """SGAR's loss x 1e4: gradients far beyond 10 (the clipping rule stays SGAR's)."""

    def forward(self, z, labels):
        return 1e4 * self.base(z, labels)


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_the_training_step_clips_each_gradient_value_in_the_code_variant(setup, monkeypatch, variant):  # noqa: F811
    params, _, tmp = setup
    run = _sgar_run(params, variant=variant, tau=None)
    largest = []
    real_build, real_optimizer = frozen.build_criterion, frozen.optimizer_and_schedule
    monkeypatch.setattr(frozen, "build_criterion", lambda *a, **k: _Amplified(real_build(*a, **k)))

    def optimizer_and_schedule(groups, tcfg):
        optimizer, scheduler = real_optimizer(groups, tcfg)
        optimizer.register_step_pre_hook(lambda opt, *_: largest.append(  # the gradients the update sees
            max(float(p.grad.abs().max()) for g in opt.param_groups for p in g["params"] if p.grad is not None)))
        return optimizer, scheduler

    monkeypatch.setattr(frozen, "optimizer_and_schedule", optimizer_and_schedule)
    frozen.train_frozen(run, RunPaths.of(params, run, tmp / "out"), "cpu")
    assert len(largest) == 3 * 4  # every step of the fixture's 3 epochs x 4 iterations
    if variant == "code":
        assert max(largest) == 10.0  # clip_grad_value_(..., 10): the constructed gradients reach it
    else:
        assert min(largest) > 10.0  # the frozen regime clips nothing otherwise


class _Spy(TorchFunctionMode):
    """Records every torch call that receives one of the watched tensors."""

    def __init__(self, watched, seen):
        super().__init__()
        self.watched, self.seen = watched, seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [*args, *kwargs.values()]
        if any(isinstance(t, torch.Tensor) and any(t is w for w in self.watched) for t in flat):
            self.seen.append(func)
        return func(*args, **kwargs)


def test_q_is_trained_but_never_touched_when_embeddings_are_evaluated(setup, monkeypatch):  # noqa: F811
    params, _, tmp = setup
    run = _sgar_run(params, tau=None)
    built, in_training, in_evaluation = {}, [], []
    real_build, real_embed = frozen.build_criterion, frozen.embed

    def build(*a, **k):
        crit = built["crit"] = real_build(*a, **k)
        real_forward = crit.forward

        def forward(*fa, **fk):
            with _Spy([crit.projector.weight, crit.projector.bias], in_training):
                return real_forward(*fa, **fk)

        crit.forward = forward
        return crit

    def embed(head, features, device, *a, **k):
        crit = built["crit"]
        with _Spy([crit.projector.weight, crit.projector.bias], in_evaluation):
            return real_embed(head, features, device, *a, **k)

    monkeypatch.setattr(frozen, "build_criterion", build)
    monkeypatch.setattr(frozen, "embed", embed)
    frozen.train_frozen(run, RunPaths.of(params, run, tmp / "out"), "cpu")
    assert in_training and not in_evaluation  # the spy works, and evaluation never calls q
    model = torch.load(tmp / "out/model.pt", weights_only=False)
    assert set(model["best_state"]) == set(model["last_state"]) == {"linear.weight", "linear.bias"}
