"""The fast paths of methods/kernels.py against pytorch-metric-learning's own code: bit-identical
values, gradients and mined pairs on random batches (the tolerance is zero)."""
import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from dmlrepro.methods import build_criterion, kernels


def _batches(n=12, classes=(4, 32, 128), dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        c = classes[i % len(classes)]
        y = torch.randint(0, c, (128,), generator=g)
        yield torch.randn(128, dim, generator=g) * (0.1 + i % 3), y


@pytest.fixture
def plain_pml(monkeypatch):
    """A context in which PML runs its own logsumexp (the installed kernel undone)."""
    def use():
        monkeypatch.setattr(lmu, "logsumexp", kernels.pml_logsumexp)
    return use


def test_the_kernel_is_installed():
    assert lmu.logsumexp is kernels.masked_logsumexp


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("add_one", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masked_logsumexp_is_bit_identical_to_pml(dim, add_one, dtype):
    g = torch.Generator().manual_seed(1)
    for keep_share in (0.0, 0.02, 0.3, 1.0):
        x0 = (torch.randn(64, 96, generator=g) * 30).to(dtype)
        keep = torch.rand(64, 96, generator=g) < keep_share
        keep[3] = False  # a row (and, for dim 0, a column) that keeps nothing
        keep[:, 5] = False
        outs = []
        for fn in (kernels.pml_logsumexp, kernels.masked_logsumexp):
            x = x0.clone().requires_grad_(True)
            out = fn(x, keep_mask=keep, add_one=add_one, dim=dim)
            (out * torch.linspace(-1, 2, out.numel(), dtype=dtype).reshape(out.shape)).sum().backward()
            outs.append((out.detach(), x.grad))
        assert torch.equal(outs[0][0], outs[1][0])
        assert torch.equal(outs[0][1], outs[1][1])


def _pairs(tuples):
    a1, p, a2, n = (t.tolist() for t in tuples)
    return sorted(zip(a1, p)), sorted(zip(a2, n))


@pytest.mark.parametrize("distance", [pml_distances.CosineSimilarity(), pml_distances.LpDistance()])
@pytest.mark.parametrize("epsilon", [0.1, 0.5])
def test_ms_miner_mines_the_pairs_pml_mines(distance, epsilon):
    ours, pml = (cls(epsilon=epsilon, distance=distance) for cls in (kernels.MultiSimilarityMiner,
                                                                        pml_miners.MultiSimilarityMiner))
    for z, y in _batches():
        assert _pairs(ours(z, y)) == _pairs(pml(z, y))
        ref, ref_y = torch.randn(200, z.shape[1]), torch.randint(0, 8, (200,))
        assert _pairs(ours(z, y % 8, ref, ref_y)) == _pairs(pml(z, y % 8, ref, ref_y))
    z = torch.randn(16, 8)
    for y in (torch.zeros(16, dtype=torch.long), torch.arange(16)):  # no negatives / no positives
        assert _pairs(ours(z, y)) == _pairs(pml(z, y)) == ([], [])


def _loss_and_grad(criterion, z0, y):
    z = z0.clone().requires_grad_(True)
    loss = criterion(z, y)
    loss.backward()
    return loss.detach(), z.grad


def _compare(make_fast, make_plain, plain_pml, batches):
    fast = [_loss_and_grad(make_fast(), z, y) for z, y in batches]
    plain_pml()
    plain = [_loss_and_grad(make_plain(), z, y) for z, y in batches]
    for (l1, g1), (l2, g2) in zip(fast, plain):
        assert torch.equal(l1, l2) and torch.equal(g1, g2)


def test_multi_similarity_equals_plain_pml(plain_pml):
    cfg = {"loss": "multi_similarity", "loss_args": {"alpha": 2.0, "beta": 50.0, "base": 0.5},
           "miner": "multi_similarity", "miner_args": {"epsilon": 0.1}}

    def plain():
        loss, miner = pml_losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5), pml_miners.MultiSimilarityMiner(epsilon=0.1)
        return lambda z, y: loss(z, y, miner(z, y))

    _compare(lambda: build_criterion(cfg, 128, 64), plain, plain_pml, list(_batches()))


def test_proxy_anchor_equals_plain_pml(plain_pml):
    def make(factory):
        torch.manual_seed(3)  # the proxies' initialisation
        return factory()

    cfg = {"loss": "proxy_anchor", "loss_args": {"margin": 0.1, "alpha": 32.0}}
    _compare(lambda: make(lambda: build_criterion(cfg, 128, 64)),
             lambda: make(lambda: pml_losses.ProxyAnchorLoss(128, 64, margin=0.1, alpha=32.0)),
             plain_pml, list(_batches()))


@pytest.mark.parametrize("method", [
    {"loss": "proxy_anchor", "augmenter": {"sgar": {}}},
    {"loss": "multi_similarity", "miner": "multi_similarity", "augmenter": {"iaa": {}}},
])
def test_methods_on_the_kernels_equal_their_plain_pml_runs(method, plain_pml):
    """SGAR (on Proxy-Anchor) and MS + IAA: the same loss and gradient with PML's logsumexp."""
    batches = list(_batches(n=6))

    def make():
        torch.manual_seed(5)
        crit = build_criterion(method, 128, 64)
        crit.train()
        z, y = batches[0]
        crit.start_epoch(1, 10, lambda **_: (z, y))
        return crit

    def seeded(crit):  # the synthesis draws from the global RNG: the same draws on both sides
        def call(z, y):
            torch.manual_seed(7)
            return crit(z, y)
        return call

    _compare(lambda: seeded(make()), lambda: seeded(make()), plain_pml, batches)
