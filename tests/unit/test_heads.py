import math

import pytest
import torch

from dmlrepro.training.heads import EmbeddingHead, IdentityHead


def test_embedding_head_shape_and_unit_norm():
    torch.manual_seed(0)
    head = EmbeddingHead(32, 8)
    x = head(torch.randn(5, 32))
    assert x.shape == (5, 8)
    assert torch.allclose(x.norm(dim=1), torch.ones(5), atol=1e-6)


def test_raw_is_z_before_normalisation():
    torch.manual_seed(0)
    head = EmbeddingHead(16, 4)
    f = torch.randn(3, 16)
    z = head(f, normalize=False)
    assert torch.equal(z, head.raw(f))
    assert torch.allclose(z, f @ head.linear.weight.T + head.linear.bias)
    assert torch.allclose(head(f), z / z.norm(dim=1, keepdim=True))


def test_init_kaiming_fan_out_and_zero_bias():
    torch.manual_seed(0)
    head = EmbeddingHead(1280, 512)
    assert torch.count_nonzero(head.linear.bias) == 0
    std = head.linear.weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / 512), rel=0.02)


def test_init_is_seeded_by_torch():
    torch.manual_seed(7)
    a = EmbeddingHead(10, 4).state_dict()
    torch.manual_seed(7)
    b = EmbeddingHead(10, 4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradients_flow():
    torch.manual_seed(0)
    head = EmbeddingHead(6, 3)
    head(torch.randn(4, 6)).sum().backward()
    assert head.linear.weight.grad is not None and head.linear.weight.grad.abs().sum() > 0


def test_wrong_feature_size():
    with pytest.raises(ValueError, match="expects 6-d features"):
        EmbeddingHead(6, 3)(torch.randn(2, 5))
    with pytest.raises(ValueError):
        EmbeddingHead(0, 3)


def test_identity_head():
    head = IdentityHead(4)
    assert list(head.parameters()) == []
    f = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    assert torch.allclose(head(f), torch.tensor([[0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    assert torch.equal(head.raw(f), f) and torch.equal(head(f, normalize=False), f)
    assert torch.allclose(IdentityHead()(f).norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError):
        head(torch.randn(2, 3))


def test_zero_vector_stays_finite():
    out = IdentityHead()(torch.zeros(1, 3))
    assert torch.isfinite(out).all()
