"""BN-Inception (Ioffe & Szegedy, ICML 2015), the backbone of most deep-metric-learning papers,
defined here so that it needs nothing beyond torch.

It loads the ImageNet-1k weights the papers' code uses, pretrainedmodels'
``bn_inception-52deb4733.pth`` (`WEIGHTS_FILE`, `WEIGHTS_URL`), as is: module and parameter names
follow that file's layout. The factory does not build its 1000-way classifier.

The network reproduces the published layout (pretrainedmodels/models/bninception.py): 69
convolutions, each with BatchNorm and ReLU, ten Inception blocks, max pools that round up, and BGR
input on 0..255 minus the mean [104, 117, 128]. BatchNorm keeps PyTorch's defaults (momentum 0.1,
eps 1e-5).

The layout in detail, the weights' provenance and the momentum question: docs/backbones.md.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DmlReproError
from . import BACKBONES, Backbone, PerChannel, _freeze, check_pooling, global_pool, load_weights, sha256_file

#: The published file (pretrainedmodels' release) and the mean it expects, in BGR order on 0..255.
WEIGHTS_FILE = "bn_inception-52deb4733.pth"
WEIGHTS_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
MEAN_BGR = (104.0, 117.0, 128.0)
FEATURE_DIM = 1024

# Inception blocks: name, input channels, 1x1, 3x3 reduce, 3x3, double-3x3 reduce, double 3x3,
# pool ("avg" / "max"), pool projection (0 = none), stride. Stride-2 blocks have no 1x1 branch and
# pass the pooled input through unprojected.
_BLOCKS = (
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 320, 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 608, 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 1024, 352, 192, 320, 192, 224, "max", 128, 1),
)


class BNInception(nn.Module):
    """The BN-Inception trunk: BGR, mean-subtracted input (B, 3, H, W) -> feature map (B, 1024, h, w).

    Attribute names are those of ``bn_inception-52deb4733.pth``. classifier=True also builds the
    1000-way ``last_linear`` (never used here; it lets the whole published key set load)."""

    def __init__(self, classifier: bool = False):
        super().__init__()
        self._conv_bn("conv1_7x7_s2", 3, 64, 7, stride=2, padding=3)
        self._conv_bn("conv2_3x3_reduce", 64, 64, 1)
        self._conv_bn("conv2_3x3", 64, 192, 3, padding=1)
        for name, cin, c1, c3r, c3, cdr, cd, _pool, proj, stride in _BLOCKS:
            p = f"inception_{name}_"
            if c1:
                self._conv_bn(p + "1x1", cin, c1, 1)
            self._conv_bn(p + "3x3_reduce", cin, c3r, 1)
            self._conv_bn(p + "3x3", c3r, c3, 3, stride=stride, padding=1)
            self._conv_bn(p + "double_3x3_reduce", cin, cdr, 1)
            self._conv_bn(p + "double_3x3_1", cdr, cd, 3, padding=1)
            self._conv_bn(p + "double_3x3_2", cd, cd, 3, stride=stride, padding=1)
            if proj:
                self._conv_bn(p + "pool_proj", cin, proj, 1)
        self.last_linear = nn.Linear(FEATURE_DIM, 1000) if classifier else None
        for m in self.modules():  # the weights file overwrites these; they keep a random net sane
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def _conv_bn(self, name: str, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> None:
        setattr(self, name, nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=padding))
        setattr(self, name + "_bn", nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1, affine=True))

    def _cbr(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, name + "_bn")(getattr(self, name)(x)), inplace=True)

    @staticmethod
    def _stem_pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, stride=2, ceil_mode=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_pool(self._cbr("conv1_7x7_s2", x))
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = self._stem_pool(x)
        for name, _cin, c1, _c3r, _c3, _cdr, _cd, pool, proj, stride in _BLOCKS:
            p = f"inception_{name}_"
            branches = []
            if c1:
                branches.append(self._cbr(p + "1x1", x))
            branches.append(self._cbr(p + "3x3", self._cbr(p + "3x3_reduce", x)))
            double = self._cbr(p + "double_3x3_1", self._cbr(p + "double_3x3_reduce", x))
            branches.append(self._cbr(p + "double_3x3_2", double))
            if stride == 2:
                pooled = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
            elif pool == "max":
                pooled = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
            else:
                pooled = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
            branches.append(self._cbr(p + "pool_proj", pooled) if proj else pooled)
            x = torch.cat(branches, dim=1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _pool_out(h: int, stride: int) -> int:
    """Output size of a 3x3 max pool (no padding, ceil_mode) as PyTorch computes it."""
    out = math.ceil((h - 3) / stride) + 1
    if (out - 1) * stride >= h:
        out -= 1
    return out


def feature_map_size(input_size: int) -> Optional[int]:
    """The side of BN-Inception's last feature map for a square input, or None when the input does
    not fit: the stride-2 blocks 3c and 4e concatenate a stride-2 convolution (rounding down) with a
    ceil-mode max pool (rounding up), so the map entering each must have an even side."""
    h = (int(input_size) + 2 * 3 - 7) // 2 + 1  # conv1 7x7/2
    for _ in range(2):  # pool1, pool2 (the 1x1 and 3x3 convolutions keep the size)
        h = _pool_out(h, 2) if h >= 1 else 0
    for _ in range(2):  # blocks 3c, 4e
        if h < 1 or (h + 2 - 3) // 2 + 1 != _pool_out(h, 2):
            return None
        h = (h + 2 - 3) // 2 + 1
    return h if h >= 1 else None


class _PooledBNInception(nn.Module):
    """0..255 RGB pixels -> BGR, minus the mean [104, 117, 128] -> BN-Inception trunk -> global pool."""

    def __init__(self, net: BNInception, pooling: str = "avg"):
        super().__init__()
        self.net = net
        self.pooling = check_pooling(pooling, "bn_inception")
        self.register_buffer("mean", torch.tensor(MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """0..255 RGB pixels -> the trunk's last feature map (B, 1024, h, w)."""
        return self.net.features(x.flip(1) - self.mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_pool(self.features(x), self.pooling)


@BACKBONES.register("bn_inception", input_size=224, channel_order="BGR", pixel_range=[0, 255],
                    mean=list(MEAN_BGR), std=[1.0, 1.0, 1.0], feature_dim=FEATURE_DIM,
                    weights=f"local file {WEIGHTS_FILE} (ImageNet-1k; pretrainedmodels release, {WEIGHTS_URL})")
def bn_inception(weights: Optional[str] = None, input_size: int = 224, pooling: str = "avg") -> Backbone:
    """BN-Inception, ImageNet-1k, 1024-d globally pooled features (the DML papers' backbone).

    weights: a path to ``bn_inception-52deb4733.pth`` (or a state dict with its keys; a leading
    "module." is stripped, ``last_linear`` is ignored); there is no default and nothing is ever
    downloaded. input_size: the square input side (224 in the papers); BN-Inception takes the
    sides 32k - 1 ... 32k + 6 (`feature_map_size`), e.g. 224, 227, 96, 64. pooling: "avg"
    (default), "max" or "avg+max" (Proxy-Anchor's GAP + GMP). The module takes 0..255 RGB pixels,
    flips them to BGR and subtracts [104, 117, 128] (no std division).
    """
    pooling = check_pooling(pooling, "bn_inception")
    if feature_map_size(int(input_size)) is None:
        fits = [s for s in range(max(1, int(input_size) - 16), int(input_size) + 17) if feature_map_size(s)]
        raise DmlReproError(
            f"bn_inception: input_size {input_size} does not fit BN-Inception (its stride-2 blocks need "
            f"even feature maps); nearby sizes that do: {fits[:8]} (the papers use 224)"
        )
    if weights is None:
        raise DmlReproError(
            f"bn_inception: no weights file; set `backbone.weights` in params.yaml to your copy of "
            f"{WEIGHTS_FILE} (the ImageNet BN-Inception of the pretrainedmodels release, published at "
            f"{WEIGHTS_URL}); nothing is downloaded"
        )
    path = Path(str(weights)).expanduser()
    net = BNInception(classifier=False)
    load_weights(net, path, "bn_inception", ignore=("last_linear.",),
                 hint=f"a path to {WEIGHTS_FILE}, from {WEIGHTS_URL}")
    module = _freeze(_PooledBNInception(net, pooling=pooling))
    return Backbone(
        name="bn_inception",
        module=module,
        feature_dim=FEATURE_DIM,
        input_size=int(input_size),
        weights=str(path.resolve()),
        weights_sha256=sha256_file(path),
        input_channels=3,
        pixel_mean=PerChannel(MEAN_BGR),
        pixel_std=PerChannel((1.0, 1.0, 1.0)),
        channel_order="BGR",
        pooling=pooling,
    )
