"""The papers' backbones: BN-Inception (defined here, the published bn_inception-52deb4733.pth layout),
ResNet-50 / GoogLeNet (torchvision extra), pooling options, the strict weights loader, frozen BN.

Nothing is downloaded: weights files are written from freshly built networks, in the published
layouts. Expected key names and shapes come from the published layout
(pretrainedmodels/models/bninception.py, whose file bn_inception-52deb4733.pth the DML code loads),
not from the module under test.
"""
from __future__ import annotations

import pickle
import sys
import types

import pytest
import torch
from torch import nn

from dmlrepro.backbones import (
    BACKBONES,
    POOLINGS,
    PerChannel,
    compile_for_inference,
    create_backbone,
    freeze_batchnorm,
    global_pool,
    load_weights,
)
from dmlrepro.backbones.bn_inception import BNInception, bn_inception, feature_map_size
from dmlrepro.backbones.torchvision_nets import googlenet, resnet50
from dmlrepro.errors import DmlReproError

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = 64  # the smallest multiple of 32 whose last feature map is more than 1x1 (2x2)

# (key, shape in the published layout); the published file stores BatchNorm tensors as (1, C)
PUBLISHED_SHAPES = {
    "conv1_7x7_s2.weight": (64, 3, 7, 7),
    "conv1_7x7_s2.bias": (64,),
    "conv1_7x7_s2_bn.weight": (64,),
    "conv2_3x3_reduce.weight": (64, 64, 1, 1),
    "conv2_3x3.weight": (192, 64, 3, 3),
    "inception_3a_1x1.weight": (64, 192, 1, 1),
    "inception_3a_pool_proj.weight": (32, 192, 1, 1),
    "inception_3b_double_3x3_2.weight": (96, 96, 3, 3),
    "inception_3c_3x3.weight": (160, 128, 3, 3),
    "inception_3c_double_3x3_reduce.weight": (64, 320, 1, 1),
    "inception_4a_1x1.weight": (224, 576, 1, 1),
    "inception_4d_double_3x3_reduce.weight": (160, 608, 1, 1),
    "inception_4e_double_3x3_1.weight": (256, 192, 3, 3),
    "inception_4e_double_3x3_2_bn.running_mean": (256,),
    "inception_5a_1x1.weight": (352, 1056, 1, 1),
    "inception_5a_pool_proj.weight": (128, 1056, 1, 1),
    "inception_5b_3x3.weight": (320, 192, 3, 3),
    "inception_5b_double_3x3_2_bn.weight": (224,),
    "inception_5b_pool_proj_bn.running_var": (128,),
    "last_linear.weight": (1000, 1024),
    "last_linear.bias": (1000,),
}
# the stride-2 blocks have no 1x1 branch and no pool projection in the published layout
ABSENT = ["inception_3c_1x1.weight", "inception_3c_pool_proj.weight",
          "inception_4e_1x1.weight", "inception_4e_pool_proj.weight"]
# 69 convolutions (stem 3; blocks 3a 3b 4a 4b 4c 4d 5a 5b: 7 each; 3c 4e: 5 each), each with a bias
# and a BatchNorm (weight, bias, running_mean, running_var), plus last_linear's weight and bias
PUBLISHED_TENSORS = 69 * (2 + 4) + 2


def published_layout(net: BNInception) -> dict:
    """`net`'s state dict as the published file holds it: BatchNorm tensors (1, C), no counters."""
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        state[key] = value.unsqueeze(0) if "_bn." in key else value
    return state


def _randomise_bn(net: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A bn_inception-52deb4733.pth look-alike (random weights, the published layout) and its dict."""
    torch.manual_seed(0)
    net = BNInception(classifier=True)
    _randomise_bn(net, 0)
    state = published_layout(net)
    path = tmp_path_factory.mktemp("weights") / "bn_inception-52deb4733.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def bninc(published):
    return bn_inception(weights=str(published[0]), input_size=224)


def pixels(n=2, size=SMALL, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255


# --- BN-Inception: the published layout -------------------------------------------------------

def test_bn_inception_keys_follow_the_published_layout():
    state = BNInception(classifier=True).state_dict()
    for key, shape in PUBLISHED_SHAPES.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    for key in ABSENT:
        assert key not in state
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == PUBLISHED_TENSORS
    trunk = BNInception().state_dict()  # the factory's trunk: no classifier
    assert not any(k.startswith("last_linear") for k in trunk)
    assert len([k for k in trunk if not k.endswith("num_batches_tracked")]) == PUBLISHED_TENSORS - 2


# the published forward (pretrainedmodels' BNInception.features): block order and each block's pool
PUBLISHED_BLOCKS = [("3a", "avg"), ("3b", "avg"), ("3c", "max/2"), ("4a", "avg"), ("4b", "avg"), ("4c", "avg"),
                    ("4d", "avg"), ("4e", "max/2"), ("5a", "avg"), ("5b", "max")]
POOLS = {
    "avg": lambda x: torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True),
    "max": lambda x: torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True),
    "max/2": lambda x: torch.nn.functional.max_pool2d(x, 3, stride=2, ceil_mode=True),
}


def test_bn_inception_wiring_follows_the_published_forward(bninc):
    """Every convolution's input and every block's output, rebuilt from the captured BatchNorm outputs
    as the published forward wires them (ReLU after each BatchNorm, branches concatenated in the order
    1x1, 3x3, double 3x3, pool)."""
    net = bninc.module.net
    conv_in, bn_out, hooks = {}, {}, []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_pre_hook(lambda mod, args, n=name: conv_in.__setitem__(n, args[0].clone())))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(lambda mod, args, out, n=name: bn_out.__setitem__(n[:-3], out.clone())))
    x = pixels(1, SMALL, seed=2) - 120
    try:
        with torch.no_grad():
            final = net.features(x)
    finally:
        for h in hooks:
            h.remove()
    relu = torch.relu
    assert torch.equal(conv_in["conv1_7x7_s2"], x)
    torch.testing.assert_close(conv_in["conv2_3x3_reduce"], POOLS["max/2"](relu(bn_out["conv1_7x7_s2"])))
    torch.testing.assert_close(conv_in["conv2_3x3"], relu(bn_out["conv2_3x3_reduce"]))
    block_in = POOLS["max/2"](relu(bn_out["conv2_3x3"]))
    for name, pool in PUBLISHED_BLOCKS:
        p = f"inception_{name}_"
        for first in ("3x3_reduce", "double_3x3_reduce") + (("1x1",) if pool != "max/2" else ()):
            torch.testing.assert_close(conv_in[p + first], block_in)
        torch.testing.assert_close(conv_in[p + "3x3"], relu(bn_out[p + "3x3_reduce"]))
        torch.testing.assert_close(conv_in[p + "double_3x3_1"], relu(bn_out[p + "double_3x3_reduce"]))
        torch.testing.assert_close(conv_in[p + "double_3x3_2"], relu(bn_out[p + "double_3x3_1"]))
        pooled = POOLS[pool](block_in)
        if pool == "max/2":  # no 1x1 branch, the pooled input passes unprojected
            parts = [relu(bn_out[p + "3x3"]), relu(bn_out[p + "double_3x3_2"]), pooled]
        else:
            torch.testing.assert_close(conv_in[p + "pool_proj"], pooled)
            parts = [relu(bn_out[p + k]) for k in ("1x1", "3x3", "double_3x3_2", "pool_proj")]
        block_in = torch.cat(parts, dim=1)
    torch.testing.assert_close(final, block_in)
    assert final.shape == (1, 1024, 2, 2)


def test_published_file_loads_and_round_trips(published, bninc):
    path, state = published
    assert bninc.weights.endswith("bn_inception-52deb4733.pth") and len(bninc.weights_sha256) == 64
    loaded = bninc.module.net.state_dict()
    for key, value in state.items():
        if key.startswith("last_linear"):
            assert key not in loaded
            continue
        assert torch.equal(loaded[key], value.reshape(loaded[key].shape)), key
    # a modern save of the trunk (with num_batches_tracked, "module." prefix) loads the same weights
    again = BNInception()
    load_weights(again, path, "bn_inception", ignore=("last_linear.",))
    modern = {f"module.{k}": v for k, v in again.state_dict().items()}
    copy = BNInception()
    path2 = path.with_name("modern.pth")
    torch.save(modern, path2)
    load_weights(copy, path2, "bn_inception")
    with torch.no_grad():
        x = pixels(1) - 100
        assert torch.equal(copy.eval()(x), again.eval()(x))


def test_bn_inception_shape_and_frozen_at_224(bninc):
    assert bninc.feature_dim == 1024 and bninc.input_size == 224 and bninc.pooling == "avg"
    assert not bninc.module.training and not any(p.requires_grad for p in bninc.module.parameters())
    with torch.no_grad():
        feats = bninc.module(pixels(2, 224))
    assert feats.shape == (2, 1024) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert feats.abs().sum() > 0


def test_bn_inception_input_sizes(bninc):
    assert feature_map_size(224) == 7 and feature_map_size(SMALL) == 2 and feature_map_size(96) == 3
    assert feature_map_size(31) == 1 and feature_map_size(30) is None and feature_map_size(112) is None
    with torch.no_grad():
        assert bninc.module(pixels(2, SMALL)).shape == (2, 1024)
        assert bninc.module(pixels(1, 31)).shape == (1, 1024)
        with pytest.raises(RuntimeError):
            bninc.module(pixels(1, 112))  # the stride-2 blocks' branches disagree in size


def test_bn_inception_rejects_an_input_size_that_does_not_fit(published):
    with pytest.raises(DmlReproError, match=r"input_size 112 .*\[96, 97"):
        bn_inception(weights=str(published[0]), input_size=112)


def test_bn_inception_takes_rgb_and_applies_bgr_minus_mean(bninc):
    x = pixels(2, SMALL, seed=3)
    by_hand = x[:, [2, 1, 0]] - torch.tensor([104.0, 117.0, 128.0]).view(1, 3, 1, 1)  # BGR, no std
    with torch.no_grad():
        expected = bninc.module.net.features(by_hand).mean(dim=(2, 3))
        got = bninc.module(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(bninc.normalise(x), by_hand)
    with torch.no_grad():  # a colour image and its channel-swapped copy give different features
        assert not torch.allclose(bninc.module(x[:, [2, 1, 0]]), got)
    meta = BACKBONES.metadata("bn_inception")
    assert meta["channel_order"] == "BGR" and meta["mean"] == [104, 117, 128] and meta["std"] == [1, 1, 1]
    assert meta["pixel_range"] == [0, 255] and meta["feature_dim"] == 1024 and meta["input_size"] == 224
    assert "bn_inception-52deb4733.pth" in meta["weights"]
    # the description extract writes into its metadata
    assert f"(pixel - {bninc.pixel_mean:g}) / {bninc.pixel_std:g}" == "(pixel - [104, 117, 128]) / [1, 1, 1]"
    assert bninc.normalisation == "BGR (pixel - [104, 117, 128]) / [1, 1, 1]"


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_matches_a_hand_computation(published, pooling):
    b = create_backbone("bn_inception", weights=str(published[0]), input_size=SMALL, pooling=pooling)
    assert b.pooling == pooling
    x = pixels(2, SMALL, seed=5)
    with torch.no_grad():
        fmap = b.module.features(x)
        got = b.module(x)
    assert fmap.shape == (2, 1024, 2, 2)
    avg = fmap.sum(dim=(2, 3)) / 4
    mx = torch.maximum(torch.maximum(fmap[..., 0, 0], fmap[..., 0, 1]), torch.maximum(fmap[..., 1, 0], fmap[..., 1, 1]))
    expected = {"avg": avg, "max": mx, "avg+max": avg + mx}[pooling]
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(global_pool(fmap, pooling), expected)


def test_unknown_pooling_is_refused_with_the_choices(published):
    with pytest.raises(DmlReproError, match=r"backbone\.pooling.*avg, max, avg\+max"):
        create_backbone("bn_inception", weights=str(published[0]), pooling="sum")
    with pytest.raises(DmlReproError, match="avg, max, avg"):
        create_backbone("efficientnet_lite0", input_size=SMALL, pooling="gem")


def test_efficientnet_takes_the_pooling_option():
    default = create_backbone("efficientnet_lite0", input_size=SMALL)
    both = create_backbone("efficientnet_lite0", input_size=SMALL, pooling="avg+max")
    assert default.pooling == "avg" and both.pooling == "avg+max" and both.weights == default.weights
    x = pixels(2, SMALL, seed=7)
    with torch.no_grad():
        fmap = default.module.features(x)
        torch.testing.assert_close(default.module(x), fmap.mean(dim=(2, 3)))
        torch.testing.assert_close(both.module(x), fmap.mean(dim=(2, 3)) + fmap.amax(dim=(2, 3)))


def test_traced_runner_matches_eager_for_bn_inception(bninc):
    runner = compile_for_inference(bninc, "cpu", engine="torch")
    x = pixels(2, SMALL, seed=9)
    with torch.no_grad():
        expected = bninc.module(x)
    torch.testing.assert_close(runner(x), expected, atol=1e-4, rtol=1e-4)


# --- weights: missing, wrong, unsafe ----------------------------------------------------------

def test_bn_inception_without_weights_says_where_the_file_is_published():
    with pytest.raises(DmlReproError) as err:
        bn_inception(weights=None)
    msg = str(err.value)
    assert "backbone.weights" in msg and "bn_inception-52deb4733.pth" in msg
    assert "data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth" in msg


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "bn_inception-52deb4733.pth"
    with pytest.raises(DmlReproError) as err:
        bn_inception(weights=str(missing))
    assert str(missing) in str(err.value) and "backbone.weights" in str(err.value)


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_loader_lists_a_missing_key_and_the_file(tmp_path):
    state = small_net().state_dict()
    del state["1.running_var"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(DmlReproError) as err:
        load_weights(small_net(), path, "tiny")
    msg = str(err.value)
    assert "tiny" in msg and str(path) in msg and "missing keys 1: [1.running_var]" in msg
    assert "unexpected" not in msg


def test_loader_lists_an_unexpected_key(tmp_path):
    state = small_net().state_dict()
    state["4.weight"] = torch.zeros(2)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(DmlReproError, match=r"unexpected keys 1: \[4\.weight\]") as err:
        load_weights(small_net(), path, "tiny")
    assert str(path) in str(err.value) and "missing" not in str(err.value)


def test_loader_lists_shape_mismatches(tmp_path):
    state = small_net().state_dict()
    state["0.weight"] = torch.zeros(4, 3, 5, 5)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(DmlReproError, match=r"shape mismatches 1: \[0\.weight: file \[4, 3, 5, 5\] vs network \[4, 3, 3, 3\]\]"):
        load_weights(small_net(), path, "tiny")


def test_bn_inception_file_with_a_missing_and_an_extra_key_lists_both(published, tmp_path):
    state = dict(published[1])
    del state["inception_4a_1x1.weight"]
    state["inception_4a_7x7.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(DmlReproError) as err:
        bn_inception(weights=str(path), input_size=SMALL)
    msg = str(err.value)
    assert msg.startswith("bn_inception: weights file") and str(path) in msg and "does not fit" in msg
    assert "missing keys 1: [inception_4a_1x1.weight]" in msg
    assert "unexpected keys 1: [inception_4a_7x7.weight]" in msg


def test_another_architecture_lists_ten_keys_and_the_counts(tmp_path):
    path = tmp_path / "resnet-like.pth"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(12)}, path)
    with pytest.raises(DmlReproError) as err:
        bn_inception(weights=str(path), input_size=SMALL)
    msg = str(err.value)
    assert f"missing keys {PUBLISHED_TENSORS - 2}: [conv1_7x7_s2.weight, " in msg
    assert "unexpected keys 12: [layer0.weight, " in msg and "layer9.weight, ... (2 more)]" in msg
    assert "layer10.weight" not in msg


def test_not_a_state_dict_is_refused(tmp_path):
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], a_list)
    with pytest.raises(DmlReproError, match=r"list\.pth.*does not hold a state dict \(it holds a list\)"):
        load_weights(small_net(), a_list, "tiny")
    not_tensors = tmp_path / "config.pth"
    torch.save({"epoch": 3, "lr": 0.1, "0.weight": torch.zeros(4, 3, 3, 3)}, not_tensors)
    with pytest.raises(DmlReproError, match=r"config\.pth.*not tensors: 2: \[epoch, lr\]"):
        load_weights(small_net(), not_tensors, "tiny")


class Payload:
    """An arbitrary pickled object: torch.load(weights_only=True) must refuse to build it."""

    def __reduce__(self):
        return (print, ("this code must never run",))


def test_a_file_that_pickles_code_is_refused(tmp_path, capsys):
    path = tmp_path / "unsafe.pth"
    with open(path, "wb") as fh:
        pickle.dump({"conv1_7x7_s2.weight": Payload()}, fh, protocol=2)
    with pytest.raises(DmlReproError) as err:
        bn_inception(weights=str(path), input_size=SMALL)
    assert str(path) in str(err.value) and "weights_only=True" in str(err.value)
    assert "never run" not in capsys.readouterr().out
    saved_object = tmp_path / "module.pth"
    torch.save(small_net(), saved_object)  # a whole pickled nn.Module, not a state dict
    with pytest.raises(DmlReproError, match="weights_only=True"):
        load_weights(small_net(), saved_object, "tiny")


def test_loader_strips_module_prefix_ignores_heads_and_squeezes_legacy_bn(tmp_path):
    source = small_net()
    _randomise_bn(source, 1)
    state = {f"module.{k}": (v.unsqueeze(0) if k.startswith("1.") and v.dim() == 1 else v)
             for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["module.fc.weight"] = torch.zeros(10, 2)
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": state, "epoch": 7}, path)
    target = small_net()
    assert load_weights(target, path, "tiny", ignore=("fc.",)) is target
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(DmlReproError, match=r"unexpected keys 1: \[fc\.weight\]"):
        load_weights(small_net(), path, "tiny")


# --- frozen BatchNorm ------------------------------------------------------------------------

def test_freeze_batchnorm_keeps_running_stats_through_a_train_mode_step(published):
    b = create_backbone("bn_inception", weights=str(published[0]), input_size=SMALL)
    module = b.module
    module.train()
    module.requires_grad_(True)
    assert freeze_batchnorm(module) is module
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 69 and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.training and m.weight.requires_grad and m.bias.requires_grad for m in convs)
    before = {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}
    x = pixels(2, SMALL, seed=11)
    module(x).sum().backward()
    after = module.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert convs[0].weight.grad is not None and bns[0].weight.grad is None
    with torch.no_grad():  # frozen BN in a train-mode module computes what eval mode computes
        train_mode = module(x)
        module.eval()
        torch.testing.assert_close(train_mode, module(x))
    module.train()  # .train() undoes it: a trainer calls freeze_batchnorm after every .train()
    assert all(m.training for m in bns)


# --- the registry and the torchvision extra --------------------------------------------------

def test_every_backbone_is_registered_with_its_input_contract():
    assert {"bn_inception", "resnet50", "googlenet", "efficientnet_lite0"} <= set(BACKBONES.names())
    dims = {"bn_inception": 1024, "resnet50": 2048, "googlenet": 1024, "efficientnet_lite0": 1280}
    for name, dim in dims.items():
        meta = BACKBONES.metadata(name)
        assert meta["feature_dim"] == dim and meta["input_size"] == 224 and meta["weights"]
    imagenet = BACKBONES.metadata("resnet50")
    assert imagenet["channel_order"] == "RGB"
    assert imagenet["mean"] == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    assert imagenet["std"] == pytest.approx([0.229 * 255, 0.224 * 255, 0.225 * 255])
    assert BACKBONES.metadata("googlenet")["mean"] == imagenet["mean"]
    assert format(PerChannel((1.5, 2.0, 3.0)), "g") == "[1.5, 2, 3]"


@pytest.mark.parametrize("factory, expected_file", [(resnet50, "resnet50-0676ba61.pth"),
                                                    (googlenet, "googlenet-1378be20.pth")])
def test_torchvision_nets_without_weights_name_the_file(factory, expected_file):
    with pytest.raises(DmlReproError) as err:
        factory(weights=None)
    assert "backbone.weights" in str(err.value) and expected_file in str(err.value)


@pytest.mark.parametrize("name", ["resnet50", "googlenet"])
def test_torchvision_nets_without_torchvision_name_the_extra(monkeypatch, tmp_path, name):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    with pytest.raises(DmlReproError) as err:
        create_backbone(name, weights=str(tmp_path / "w.pth"))
    msg = str(err.value)
    assert f"backbone {name} needs torchvision" in msg and "pip install 'dmlrepro[torchvision]'" in msg
    assert "bn_inception" in msg and "efficientnet_lite0" in msg


def test_a_torchvision_built_for_another_torch_names_the_extra(monkeypatch, tmp_path):
    class Mismatched(types.ModuleType):  # what PyPI's CUDA-built torchvision does beside a CPU torch
        def __getattr__(self, attr):
            raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setitem(sys.modules, "torchvision", Mismatched("torchvision"))
    monkeypatch.delitem(sys.modules, "torchvision.models", raising=False)
    with pytest.raises(DmlReproError, match=r"RuntimeError: operator torchvision::nms does not exist.*dmlrepro\[torchvision\]"):
        resnet50(weights=str(tmp_path / "w.pth"))


def torchvision_models():
    """torchvision.models where torchvision imports beside this torch, else skip (any import error)."""
    try:
        from torchvision import models
    except Exception as exc:  # noqa: BLE001 - ImportError, or RuntimeError from a mismatched build
        pytest.skip(f"torchvision does not import here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    return models


def _imagenet(x):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


def test_resnet50_from_a_torchvision_file(tmp_path):
    models = torchvision_models()
    torch.manual_seed(0)
    reference = models.resnet50(weights=None)
    assert sum(p.numel() for p in reference.parameters()) == 25_557_032  # torchvision's num_params
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(reference.state_dict(), path)  # with the fc classifier, as published
    b = create_backbone("resnet50", weights=str(path), input_size=SMALL, pooling="avg+max")
    assert b.feature_dim == 2048 and b.pooling == "avg+max" and not b.module.training
    x = pixels(2, SMALL, seed=13)
    reference.fc = nn.Identity()
    with torch.no_grad():
        fmap = b.module.features(x)
        torch.testing.assert_close(b.module(x), fmap.mean(dim=(2, 3)) + fmap.amax(dim=(2, 3)))
        torch.testing.assert_close(fmap.mean(dim=(2, 3)), reference.eval()(_imagenet(x)), rtol=1e-4, atol=1e-4)


def test_googlenet_from_a_torchvision_file(tmp_path):
    models = torchvision_models()
    torch.manual_seed(0)
    reference = models.googlenet(weights=None, aux_logits=True, init_weights=True, transform_input=True)
    no_aux = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("aux"))
    assert no_aux == 6_624_904  # torchvision's num_params for googlenet-1378be20.pth
    path = tmp_path / "googlenet-1378be20.pth"
    torch.save(reference.state_dict(), path)  # with aux1. / aux2. / fc., as published
    b = create_backbone("googlenet", weights=str(path), input_size=SMALL)
    assert b.feature_dim == 1024
    x = pixels(2, SMALL, seed=17)
    reference.fc = nn.Identity()
    with torch.no_grad():
        got = b.module(x)
        expected = reference.eval()(_imagenet(x))
    assert got.shape == (2, 1024)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
