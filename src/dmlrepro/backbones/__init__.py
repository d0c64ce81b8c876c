"""Frozen ImageNet backbones that turn images into one pooled feature vector each.

A backbone is one registered factory ``(weights: str | None, input_size: int) -> Backbone``::

    @BACKBONES.register("my_net")
    def my_net(weights=None, input_size=224) -> Backbone: ...

`Backbone.module` maps a float batch of **0-255 pixel values** shaped (B, 3, H, W) to pooled
features (B, feature_dim); the backbone's own input normalisation happens inside the module, so
every caller feeds raw pixels. Modules are frozen (eval mode, no gradients).

`compile_for_inference` wraps a backbone for fast batched inference (`extract.engine`): on CPU,
`auto` exports it to ONNX and runs ONNX Runtime (about 2.8x the traced TorchScript module at
112 px on 2 cores), else OpenVINO at f32 precision, else TorchScript; every engine is checked
against the eager module at start-up and falls back to torch when it disagrees. On CUDA it runs
the eager module (see engines.py and benchmarks/results/extract.json).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import DmlReproError
from ..hashing import sha256_file  # noqa: F401 - re-exported for the backbone modules
from ..registry import Registry


@dataclass
class Backbone:
    """A frozen feature extractor and what a caller needs to know to feed it."""

    name: str
    module: nn.Module  # (B, 3, H, W) float pixels in 0..255 -> (B, feature_dim) float32
    feature_dim: int
    input_size: int  # the square input size the module was built for
    weights: str  # resolved path of the weights file
    weights_sha256: str
    input_channels: int = 3
    pixel_mean: float = 0.0  # normalisation applied inside `module`: (x - mean) / std on 0..255
    pixel_std: float = 1.0

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The normalisation `module` applies to 0..255 pixels (exposed for inspection/tests)."""
        return (x - self.pixel_mean) / self.pixel_std


BackboneFactory = Callable[..., Backbone]
#: Metadata every backbone declares: the square input size it is built for by default, the channel
#: order and value range it expects, the per-channel mean/std applied inside the module (on that
#: range), and the pooled feature dimension.
BACKBONE_METADATA = ("input_size", "channel_order", "pixel_range", "mean", "std", "feature_dim")
BACKBONES: Registry[BackboneFactory] = Registry("backbone", BACKBONE_METADATA)


def create_backbone(name: str, weights: Optional[str] = None, input_size: Optional[int] = None) -> Backbone:
    """Build the registered backbone `name` (unknown names list the available ones)."""
    factory = BACKBONES.get(name)
    if input_size is None:
        return factory(weights=weights)
    return factory(weights=weights, input_size=int(input_size))


def resolve_device(name: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is usable, else "cpu"; "cuda[:N]" without a GPU is an error."""
    name = str(name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DmlReproError(
                f"device {name!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}); set `device: auto` or `device: cpu` in params.yaml"
            )
        if ":" in name:
            index = name.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise DmlReproError(
                    f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
                )
        return name
    raise DmlReproError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def _load_state_dict(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DmlReproError(
            f"{what}: weights file {str(path)!r} does not exist; fix `backbone.weights` in params.yaml "
            "(a path to a .pth state dict, or null for the offline ImageNet weights package)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/format error is the user's file
        raise DmlReproError(f"{what}: cannot read weights file {str(path)!r}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DmlReproError(f"{what}: weights file {str(path)!r} does not hold a state dict")
    return state


# The families register themselves on import.
from . import efficientnet  # noqa: E402,F401
from .inference import InferenceRunner, compile_for_inference  # noqa: E402,F401
