"""ONNX Runtime and OpenVINO runners of a frozen backbone (exported once to ONNX).

Both take the same input as dmlrepro.backbones.inference.InferenceRunner (float pixels (B, 3, H, W)
in 0..255, a torch tensor) and return float32 CPU features (B, D). The builders here do not check
the result: compile_for_inference compares every runner with eager torch before using it.

* export_onnx: torch.onnx.export with a dynamic batch axis (the input size is fixed: the
  backbone is built for one size). The legacy TorchScript exporter is tried first (it needs the
  `onnx` package, not `onnxscript`); the dynamo exporter only when that one is unavailable.
* OpenVINO runs on CPU with INFERENCE_PRECISION_HINT f32 by default: the CPU plugin's default
  precision is bf16 on CPUs that have it (features then differ from torch by ~0.4 on a ~5 scale).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..errors import DmlReproError

#: the values of `extract.engine`: auto = the fastest installed engine that agrees with torch.
ENGINES = ("auto", "torch", "onnxruntime", "openvino")
#: the order in which `auto` tries the engines on CPU (torch is the fallback).
AUTO_ORDER_CPU = ("onnxruntime", "openvino")
ONNX_OPSET = 17


def check_engine(engine: Optional[str]) -> str:
    name = "auto" if engine is None else str(engine).strip().lower()
    if name not in ENGINES:
        raise DmlReproError(f"extract.engine must be one of {'|'.join(ENGINES)}, got {engine!r}")
    return name


def installed(engine: str) -> bool:
    """Whether the engine's Python package (named like it) is importable, without importing it."""
    return importlib.util.find_spec(engine) is not None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int = ONNX_OPSET) -> Path:
    """Export `module` (on CPU) to ONNX at `path`: input "pixels" (batch, C, H, W), output
    "features" (batch, D), the batch axis dynamic."""
    kwargs = dict(
        input_names=["pixels"],
        output_names=["features"],
        dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
        opset_version=opset,
        do_constant_folding=True,
    )
    example = example.detach().to("cpu").contiguous()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and constant-folding notes
        if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
            torch.onnx.export(module, (example,), str(path), **kwargs)  # torch < 2.5: TorchScript only
            return Path(path)
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=False, **kwargs)
        except Exception:  # the TorchScript exporter is deprecated: it may be gone or fail one day
            if importlib.util.find_spec("onnxscript") is None:
                raise
            torch.onnx.export(module, (example,), str(path), dynamo=True, **kwargs)
    return Path(path)


class OnnxRuntimeRunner:
    """An ONNX Runtime session: torch pixels -> float32 CPU torch features."""

    def __init__(self, onnx_path: Path, device: str = "cpu", threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        # the worker threads spin during a run but not after it: the caller decodes images in between
        options.add_session_config_entry("session.force_spinning_stop", "1")
        providers = ["CPUExecutionProvider"]
        self.mode = "onnxruntime"
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                index = torch.device(device).index or 0
                providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
                self.mode = "onnxruntime-cuda"
            else:
                warnings.warn("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu); "
                              "running it on CPU")
        self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self.device = "cpu"  # where __call__ wants its input and returns its output
        self.version = f"onnxruntime {_version('onnxruntime')}"
        self.max_abs_diff: Optional[float] = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (y,) = self._session.run(None, {self._input: _as_numpy(x)})
        return torch.from_numpy(np.asarray(y, dtype=np.float32))


class OpenVINORunner:
    """An OpenVINO model compiled for CPU: torch pixels -> float32 CPU torch features.

    precision: INFERENCE_PRECISION_HINT ("f32"; None = the plugin's default, bf16 or f16 on CPUs
    that have it, which is faster but off by ~0.4 on lite0's features).
    """

    def __init__(self, onnx_path: Path, threads: int = 1, precision: Optional[str] = "f32"):
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        model = core.read_model(str(onnx_path))
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(0)
        used = self._compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type
        used = used.to_string() if hasattr(used, "to_string") else str(used).lower()
        self.precision = used
        self.mode = f"openvino-{used}"
        self.device = "cpu"
        self.version = f"openvino {_version('openvino')}"
        self.max_abs_diff: Optional[float] = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        result = self._request.infer({0: _as_numpy(x)})
        return torch.from_numpy(np.array(result[self._output], dtype=np.float32))  # a copy: the request reuses its buffer


def build_runner(engine: str, onnx_path: Path, device: str, threads: int, precision: Optional[str] = "f32"):
    """An unchecked runner of `engine` (onnxruntime or openvino) for the exported model."""
    if engine == "onnxruntime":
        return OnnxRuntimeRunner(onnx_path, device=device, threads=threads)
    if engine == "openvino":
        if torch.device(device).type != "cpu":
            warnings.warn(f"the openvino engine runs on CPU only; device {device!r} is not used")
        return OpenVINORunner(onnx_path, threads=threads, precision=precision)
    raise ValueError(f"no ONNX runner for engine {engine!r}")
