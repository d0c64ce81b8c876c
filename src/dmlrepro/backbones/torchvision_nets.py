"""ResNet-50 and GoogLeNet through torchvision (an optional extra), weights from a local file.

torchvision is not a requirement: PyPI's torchvision wheels are built against the CUDA torch and do
not import beside the pinned CPU torch (``RuntimeError: operator torchvision::nms does not exist``),
so these backbones are for machines that installed a matching pair (``pip install
'dmlrepro[torchvision]'``, e.g. the CUDA builds of both: README "GPU"). Without it, building them
fails with a DmlReproError saying so; bn_inception and efficientnet_lite0 need nothing more.

Weights are never downloaded: ``backbone.weights`` names a local state dict in torchvision's layout,
e.g. ``resnet50-0676ba61.pth`` (IMAGENET1K_V1, formerly published as resnet50-19c8e357.pth: the
weights the papers used) or ``resnet50-11ad3fa6.pth`` (IMAGENET1K_V2), and ``googlenet-1378be20.pth``
(IMAGENET1K_V1, ported from the original paper). Their classifiers (``fc.``, and GoogLeNet's
auxiliary ``aux1.``/``aux2.``) are ignored. Input: 0..255 RGB pixels, x/255 then ImageNet mean/std
(equivalently (x - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]); GoogLeNet is built with
``transform_input=True`` as torchvision builds it for these weights, which maps that input to the
(x/255 - 0.5) / 0.5 of the original Google model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import DmlReproError
from . import BACKBONES, Backbone, PerChannel, _freeze, check_pooling, global_pool, load_weights, sha256_file

#: ImageNet normalisation on 0..255 pixels (RGB): 255 x (0.485, 0.456, 0.406) and 255 x (0.229, 0.224, 0.225).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
RESNET50_FILES = "resnet50-0676ba61.pth (IMAGENET1K_V1, the papers' weights) or resnet50-11ad3fa6.pth (V2)"
GOOGLENET_FILE = "googlenet-1378be20.pth"
_URLS = "https://download.pytorch.org/models/"


def import_torchvision_models(backbone: str):
    """torchvision.models, or a DmlReproError telling how to get a torchvision that imports here."""
    try:
        import torchvision  # noqa: F401 - the import itself is what fails beside a mismatched torch
        from torchvision import models
    except Exception as exc:  # noqa: BLE001 - ImportError, or RuntimeError from a mismatched build
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DmlReproError(
            f"backbone {backbone} needs torchvision, which does not import here ({type(exc).__name__}: "
            f"{reason}); `pip install 'dmlrepro[torchvision]'` with a torchvision build matching your "
            f"torch {torch.__version__} (e.g. the CUDA builds of both: README \"GPU\"), or use "
            "bn_inception / efficientnet_lite0, which need nothing more"
        ) from None
    return models


class _ResNetTrunk(nn.Module):
    """torchvision ResNet up to layer4 (no average pool, no classifier)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


class _GoogLeNetTrunk(nn.Module):
    """torchvision GoogLeNet up to inception5b (its input transform, no pool, dropout or classifier)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n._transform_input(x)
        x = n.maxpool2(n.conv3(n.conv2(n.maxpool1(n.conv1(x)))))
        x = n.maxpool3(n.inception3b(n.inception3a(x)))
        for block in (n.inception4a, n.inception4b, n.inception4c, n.inception4d, n.inception4e):
            x = block(x)
        x = n.maxpool4(x)
        return n.inception5b(n.inception5a(x))


class _PooledImageNetNet(nn.Module):
    """0..255 RGB pixels -> ImageNet mean/std -> trunk -> global pool."""

    def __init__(self, trunk: nn.Module, pooling: str, what: str):
        super().__init__()
        self.trunk = trunk
        self.pooling = check_pooling(pooling, what)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """0..255 RGB pixels -> the trunk's last feature map (B, C, h, w)."""
        return self.trunk((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_pool(self.features(x), self.pooling)


def _build(name: str, weights: Optional[str], input_size: int, pooling: str, feature_dim: int,
           files: str, make_trunk) -> Backbone:
    pooling = check_pooling(pooling, name)
    if int(input_size) < 32:
        raise DmlReproError(f"{name}: input_size {input_size} is too small (use >= 32; the papers use 224)")
    if weights is None:
        raise DmlReproError(
            f"{name}: no weights file; set `backbone.weights` in params.yaml to a local torchvision "
            f"ImageNet state dict, {files} (published under {_URLS}); nothing is downloaded"
        )
    models = import_torchvision_models(name)
    path = Path(str(weights)).expanduser()
    trunk = make_trunk(models, path)
    module = _freeze(_PooledImageNetNet(trunk, pooling, name))
    return Backbone(
        name=name,
        module=module,
        feature_dim=feature_dim,
        input_size=int(input_size),
        weights=str(path.resolve()),
        weights_sha256=sha256_file(path),
        input_channels=3,
        pixel_mean=PerChannel(IMAGENET_MEAN),
        pixel_std=PerChannel(IMAGENET_STD),
        channel_order="RGB",
        pooling=pooling,
    )


@BACKBONES.register("resnet50", input_size=224, channel_order="RGB", pixel_range=[0, 255],
                    mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), feature_dim=2048,
                    weights=f"local torchvision file {RESNET50_FILES}; needs the torchvision extra")
def resnet50(weights: Optional[str] = None, input_size: int = 224, pooling: str = "avg") -> Backbone:
    """ResNet-50 (torchvision), ImageNet-1k, 2048-d globally pooled features of layer4.

    weights: a local state dict in torchvision's layout (``fc.`` ignored; no default, no download).
    pooling: "avg" (default), "max" or "avg+max"."""

    def make(models, path: Path) -> nn.Module:
        net = models.resnet50(weights=None)
        net.fc = nn.Identity()
        load_weights(net, path, "resnet50", ignore=("fc.",), hint=f"a path to {RESNET50_FILES}")
        return _ResNetTrunk(net)

    return _build("resnet50", weights, input_size, pooling, 2048, RESNET50_FILES, make)


@BACKBONES.register("googlenet", input_size=224, channel_order="RGB", pixel_range=[0, 255],
                    mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), feature_dim=1024,
                    weights=f"local torchvision file {GOOGLENET_FILE} (transform_input=True); "
                            "needs the torchvision extra")
def googlenet(weights: Optional[str] = None, input_size: int = 224, pooling: str = "avg") -> Backbone:
    """GoogLeNet / Inception v1 (torchvision), ImageNet-1k, 1024-d globally pooled features of inception5b.

    weights: a local state dict in torchvision's layout, e.g. googlenet-1378be20.pth (``aux1.``,
    ``aux2.`` and ``fc.`` ignored; no default, no download). pooling: "avg" (default), "max" or
    "avg+max"."""

    def make(models, path: Path) -> nn.Module:
        net = models.googlenet(weights=None, aux_logits=False, init_weights=False, transform_input=True)
        net.fc = nn.Identity()
        load_weights(net, path, "googlenet", ignore=("aux1.", "aux2.", "fc."), hint=f"a path to {GOOGLENET_FILE}")
        return _GoogLeNetTrunk(net)

    return _build("googlenet", weights, input_size, pooling, 1024, GOOGLENET_FILE, make)
