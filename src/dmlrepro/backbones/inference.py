"""Fast batched inference of a frozen backbone (TorchScript trace + freeze on CPU)."""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

from . import Backbone, _freeze


class InferenceRunner:
    """Callable: float pixels (B, 3, H, W) in 0..255 on CPU -> float32 features (B, D) on CPU."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: str, mode: str):
        self._fn = fn
        self.device = device
        self.mode = mode  # "jit-trace-freeze" or "eager"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            y = self._fn(x)
        return y.float().cpu()


def compile_for_inference(
    backbone: Backbone, device: str = "cpu", trace: Optional[bool] = None, example_batch: int = 4
) -> InferenceRunner:
    """Wrap `backbone` for batched inference on `device` (already resolved, see resolve_device).

    trace=None traces on CPU only. A trace that fails, or disagrees with the eager module on a
    random example, falls back to eager with a warning.
    """
    module = backbone.module.to(device).to(memory_format=torch.channels_last)
    _freeze(module)
    if trace is None:
        trace = torch.device(device).type == "cpu"
    if trace:
        size = backbone.input_size
        gen = torch.Generator().manual_seed(0)
        example = (torch.rand(example_batch, backbone.input_channels, size, size, generator=gen) * 255).to(device)
        example = example.contiguous(memory_format=torch.channels_last)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False))
                expected = module(example)
                got = traced(example)
                got = traced(example)  # the first calls run the profiling executor's passes
            scale = float(expected.abs().max()) + 1e-6
            err = float((got - expected).abs().max())
            if err > 1e-3 * scale:
                raise RuntimeError(f"traced output differs from eager by {err:.3g} (scale {scale:.3g})")
            return InferenceRunner(traced, device, "jit-trace-freeze")
        except Exception as exc:  # noqa: BLE001 - any tracing failure: eager still works
            warnings.warn(f"{backbone.name}: TorchScript tracing failed ({exc}); using eager mode")
    return InferenceRunner(module, device, "eager")
