"""Fast batched inference of a frozen backbone: ONNX Runtime, OpenVINO or torch (TorchScript).

compile_for_inference picks the engine (`extract.engine`): "auto" takes, on CPU, the first
installed of onnxruntime > openvino (see engines.AUTO_ORDER_CPU), on CUDA torch. Every non-torch
runner is checked against eager torch on a random example batch (and on a batch of one, for the
dynamic batch axis) before it is used; an engine that is missing, fails to export or build, or
differs by more than 1e-3 x the largest feature falls back, with a warning, to the next candidate
and finally to torch: a TorchScript trace + freeze on CPU (itself checked, else eager), eager on CUDA.

Every runner has `mode` (the engine used: "onnxruntime", "openvino-f32", "jit-trace-freeze",
"eager", ...), `max_abs_diff` (largest |runner - eager torch| on the check batch; 0 for eager) and
`version` (library and version).
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from . import Backbone, _freeze
from .engines import AUTO_ORDER_CPU, build_runner, check_engine, export_onnx, installed

TOLERANCE = 1e-3  # relative to the largest |feature| of the check batch


class InferenceRunner:
    """Callable: float pixels (B, 3, H, W) in 0..255 on CPU -> float32 features (B, D) on CPU."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: str, mode: str,
                 max_abs_diff: float = 0.0):
        self._fn = fn
        self.device = device
        self.mode = mode  # "jit-trace-freeze" or "eager"
        self.max_abs_diff = max_abs_diff
        self.version = f"torch {torch.__version__}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            y = self._fn(x)
        return y.float().cpu()


def _example(backbone: Backbone, batch: int) -> torch.Tensor:
    size = backbone.input_size
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, backbone.input_channels, size, size, generator=gen) * 255


def _max_diff(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected|, raising if it is over the tolerance (or not finite, or misshapen)."""
    if tuple(got.shape) != tuple(expected.shape):
        raise RuntimeError(f"output shape {tuple(got.shape)} instead of {tuple(expected.shape)}")
    scale = float(expected.abs().max()) + 1e-6
    err = float((got.float() - expected.float()).abs().max())
    if not err <= TOLERANCE * scale:
        raise RuntimeError(f"output differs from eager torch by {err:.3g} (scale {scale:.3g})")
    return err


def compile_for_inference(
    backbone: Backbone,
    device: str = "cpu",
    engine: str = "auto",
    threads: Optional[int] = None,
    trace: Optional[bool] = None,
    example_batch: int = 4,
):
    """Wrap `backbone` for batched inference on `device` (already resolved, see resolve_device).

    engine: auto | torch | onnxruntime | openvino (a DmlReproError otherwise). threads: the
    intra-op threads of onnxruntime / openvino (default: torch.get_num_threads()). trace (torch
    engine): None traces on CPU only.
    """
    engine = check_engine(engine)
    threads = int(threads or torch.get_num_threads())
    if engine == "auto":
        candidates = [e for e in AUTO_ORDER_CPU if installed(e)] if torch.device(device).type == "cpu" else []
    else:
        candidates = [] if engine == "torch" else [engine]
    runner = _onnx_runner(backbone, device, candidates, threads, example_batch) if candidates else None
    return runner or _torch_runner(backbone, device, trace, example_batch)


def _onnx_runner(backbone: Backbone, device: str, candidates: list[str], threads: int, example_batch: int):
    """The first candidate engine that builds and agrees with eager torch, else None (warned)."""
    module = _freeze(backbone.module.to("cpu"))
    example = _example(backbone, example_batch)
    with torch.no_grad():
        expected = module(example)
    export_error: Optional[Exception] = None
    with tempfile.TemporaryDirectory(prefix="dmlrepro-onnx-", ignore_cleanup_errors=True) as tmp:
        path: Optional[Path] = None
        for i, name in enumerate(candidates):
            try:
                if not installed(name):
                    raise ImportError(f"the {name} package is not installed (`pip install {name}`)")
                if export_error is not None:
                    raise export_error
                if path is None:
                    try:
                        path = export_onnx(module, example, Path(tmp) / "backbone.onnx")
                    except Exception as exc:  # noqa: BLE001
                        export_error = RuntimeError(f"ONNX export failed: {type(exc).__name__}: {exc}")
                        raise export_error from None
                runner = build_runner(name, path, device, threads)
                err = _max_diff(runner(example), expected)
                err = max(err, _max_diff(runner(example[:1]), expected[:1]))  # the batch axis is dynamic
                runner.max_abs_diff = err
                return runner
            except Exception as exc:  # noqa: BLE001 - any failure: torch still works
                then = f"trying {candidates[i + 1]}" if i + 1 < len(candidates) else "falling back to torch"
                warnings.warn(f"{backbone.name}: the {name} engine is not used ({exc}); {then}")
    return None


def _torch_runner(backbone: Backbone, device: str, trace: Optional[bool], example_batch: int) -> InferenceRunner:
    """TorchScript trace + freeze (checked against eager) when `trace`, else eager."""
    module = backbone.module.to(device).to(memory_format=torch.channels_last)
    _freeze(module)
    if trace is None:
        trace = torch.device(device).type == "cpu"
    if trace:
        example = _example(backbone, example_batch).to(device).contiguous(memory_format=torch.channels_last)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False))
                expected = module(example)
                got = traced(example)
                got = traced(example)  # the first calls run the profiling executor's passes
            err = _max_diff(got, expected)
            return InferenceRunner(traced, device, "jit-trace-freeze", max_abs_diff=err)
        except Exception as exc:  # noqa: BLE001 - any tracing failure: eager still works
            warnings.warn(f"{backbone.name}: TorchScript tracing failed ({exc}); using eager mode")
    return InferenceRunner(module, device, "eager")
