"""Frozen ImageNet backbones that turn images into one pooled feature vector each.

A backbone is a factory registered in `BACKBONES` with its input contract. It returns a `Backbone`
whose module maps 0-255 RGB pixels (B, 3, H, W) to pooled features (B, feature_dim). The module
applies the backbone's own input convention, so every caller feeds raw RGB pixels. Factories
return the module frozen; a fine-tuning trainer unfreezes it and calls `freeze_batchnorm` after
every ``.train()``.

Weights are local files read by `load_weights`, which refuses a file that does not fit the
network. `compile_for_inference` picks a fast inference engine and checks it against eager torch.

The registration signature, pooling, the families and the engines: docs/backbones.md.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import DmlReproError
from ..hashing import sha256_file  # noqa: F401 - re-exported for the backbone modules
from ..registry import Registry


class PerChannel(tuple):
    """Per-channel values (mean or std) that format like a float does: ``f"{v:g}"`` -> "[104, 117, 128]"."""

    def __format__(self, spec: str) -> str:
        return "[" + ", ".join(format(float(v), spec or "g") for v in self) + "]"


Normalisation = Union[float, PerChannel]


@dataclass
class Backbone:
    """A frozen feature extractor and what a caller needs to know to feed it."""

    name: str
    module: nn.Module  # (B, 3, H, W) float RGB pixels in 0..255 -> (B, feature_dim) float32
    feature_dim: int
    input_size: int  # the square input size the module was built for
    weights: str  # resolved path of the weights file
    weights_sha256: str
    input_channels: int = 3
    # the normalisation applied inside `module`: channels reordered to `channel_order`, then
    # (x - pixel_mean) / pixel_std on 0..255; a float, or a PerChannel triple in `channel_order`
    pixel_mean: Normalisation = 0.0
    pixel_std: Normalisation = 1.0
    channel_order: str = "RGB"
    pooling: str = "avg"

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The normalisation `module` applies to 0..255 RGB pixels (exposed for inspection/tests).

        Scalars apply to any tensor; per-channel values and a BGR order need (..., 3, H, W)."""
        if self.channel_order == "BGR":
            x = x.flip(-3)
        return (x - _as_channels(self.pixel_mean, x)) / _as_channels(self.pixel_std, x)

    @property
    def normalisation(self) -> str:
        """The input convention in words: "RGB (pixel - 127) / 128", "BGR (pixel - [104, 117, 128]) / [1, 1, 1]"."""
        return f"{self.channel_order} (pixel - {self.pixel_mean:g}) / {self.pixel_std:g}"


def _as_channels(value: Normalisation, like: torch.Tensor) -> Union[float, torch.Tensor]:
    if isinstance(value, tuple):
        return torch.tensor(value, dtype=like.dtype, device=like.device).view(-1, 1, 1)
    return float(value)


BackboneFactory = Callable[..., Backbone]
#: Metadata every backbone declares: the square input size it is built for by default, the channel
#: order and value range it expects, the per-channel mean/std applied inside the module (on that
#: range), and the pooled feature dimension.
BACKBONE_METADATA = ("input_size", "channel_order", "pixel_range", "mean", "std", "feature_dim")
BACKBONES: Registry[BackboneFactory] = Registry("backbone", BACKBONE_METADATA)


#: Global pooling of the trunk's last feature map (see `global_pool`).
POOLINGS = ("avg", "max", "avg+max")


def check_pooling(pooling: object, what: str = "backbone") -> str:
    """`pooling` if it is one of POOLINGS, else a DmlReproError naming the choices."""
    if pooling not in POOLINGS:
        raise DmlReproError(
            f"{what}: unknown pooling {pooling!r}; set `backbone.pooling` to one of "
            f"{', '.join(POOLINGS)} (avg+max = global average + global max pooling, summed)"
        )
    return str(pooling)


def global_pool(x: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): "avg" = mean over H, W; "max" = max over H, W; "avg+max" = their sum."""
    if pooling == "avg":
        return x.mean(dim=(2, 3))
    if pooling == "max":
        return x.amax(dim=(2, 3))
    if pooling == "avg+max":
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))
    check_pooling(pooling)  # raises for anything else
    raise AssertionError(pooling)


def create_backbone(
    name: str,
    weights: Optional[str] = None,
    input_size: Optional[int] = None,
    pooling: Optional[str] = None,
) -> Backbone:
    """Build the registered backbone `name` (unknown names list the available ones).

    input_size / pooling: None = the factory's default (224 / "avg")."""
    factory = BACKBONES.get(name)
    kwargs: dict = {"weights": weights}
    if input_size is not None:
        kwargs["input_size"] = int(input_size)
    if pooling is not None:
        kwargs["pooling"] = check_pooling(pooling, f"backbone {name}")
    return factory(**kwargs)


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


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """The papers' frozen BatchNorm: every BatchNorm layer in eval mode (running statistics used and
    never updated) with its affine weight and bias excluded from training (requires_grad False).

    ``module.train()`` puts BatchNorm layers back in training mode, so a trainer calls this after
    every ``.train()`` (and builds its optimiser from the parameters that still require grad).
    Returns `module`."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
            for param in layer.parameters(recurse=False):
                param.requires_grad_(False)
    return module


def _load_state_dict(path: Path, what: str, hint: str = "") -> dict:
    """The state dict held by the .pth file `path` (read with weights_only=True; a checkpoint dict
    with a "state_dict" entry is unwrapped). `hint` completes the "fix `backbone.weights`" advice."""
    if not path.is_file():
        raise DmlReproError(
            f"{what}: weights file {str(path)!r} does not exist; fix `backbone.weights` in params.yaml "
            f"({hint or 'a path to a .pth state dict, or null for the offline ImageNet weights package'})"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/format error is the user's file
        raise DmlReproError(
            f"{what}: cannot read weights file {str(path)!r} with torch.load(weights_only=True), which "
            f"accepts tensors and containers of them only (a state dict), never pickled code: {exc}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DmlReproError(
            f"{what}: weights file {str(path)!r} does not hold a state dict (it holds a {type(state).__name__})"
        )
    return state


def _listed(keys: Sequence[str], limit: int = 10) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)}: [{shown}{more}]"


def load_weights(module: nn.Module, path: Union[str, Path], what: str, ignore: Iterable[str] = (),
                 hint: str = "") -> nn.Module:
    """Load the state dict in the .pth file `path` into `module`, strictly; returns `module`.

    * read with ``torch.load(path, map_location="cpu", weights_only=True)`` (never runs pickled code);
      a checkpoint dict holding a "state_dict" entry is unwrapped;
    * a leading "module." (from DataParallel/DDP) is stripped when every key has it;
    * keys starting with one of the `ignore` prefixes (classifier heads the module does not have,
      e.g. "fc.", "last_linear.") are dropped from the file;
    * a tensor stored as (1, *shape) where `module` has `shape` is squeezed (the (1, C) BatchNorm
      tensors of Caffe ports saved before PyTorch 0.4, e.g. bn_inception-52deb4733.pth), and a
      missing BatchNorm ``num_batches_tracked`` counter (files saved before 0.4) keeps its value;
    * any other difference raises a DmlReproError naming the file and listing the missing keys, the
      unexpected keys and the shape mismatches (the first 10 of each, with counts).
    `hint` completes the "fix `backbone.weights`" advice when the file does not exist."""
    path = Path(str(path)).expanduser()
    state = _load_state_dict(path, what, hint)
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors or not all(isinstance(k, str) for k in state):
        raise DmlReproError(
            f"{what}: weights file {str(path)!r} does not hold a state dict (a mapping of parameter "
            f"names to tensors); entries that are not tensors: {_listed([str(k) for k in not_tensors])}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    prefixes = tuple(ignore)
    state = {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}

    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = []
    for key in [k for k in state if k in expected]:
        want, got = tuple(expected[key].shape), tuple(state[key].shape)
        if got == want:
            continue
        if got == (1, *want):
            state[key] = state[key].reshape(want)
        else:
            mismatched.append(f"{key}: file {list(got)} vs network {list(want)}")
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_listed(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches {_listed(mismatched)}")
        raise DmlReproError(
            f"{what}: weights file {str(path)!r} does not fit the network ({'; '.join(problems)}); "
            "set `backbone.weights` to a state dict of this architecture"
        )
    for key in expected:  # counters the file predates: keep the module's own
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = expected[key]
    module.load_state_dict(state, strict=True)
    return module


# The families register themselves on import.
from . import bn_inception, efficientnet, torchvision_nets  # noqa: E402,F401
from .inference import InferenceRunner, compile_for_inference  # noqa: E402,F401
