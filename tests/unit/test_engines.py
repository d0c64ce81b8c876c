"""Inference engines (ONNX Runtime, OpenVINO, torch) of the frozen backbone, and their fallbacks."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dmlrepro.backbones import Backbone, compile_for_inference, create_backbone, engines, inference
from dmlrepro.backbones.extract import DEFAULTS, _extract_settings, extract_features, load_features
from dmlrepro.errors import DmlReproError

SIZE = 64

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return create_backbone("efficientnet_lite0", input_size=SIZE)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 255


def _eager(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    module = backbone.module.to("cpu")
    with torch.no_grad():
        return module(x.contiguous())


@pytest.mark.parametrize("engine, mode", [("onnxruntime", "onnxruntime"), ("openvino", "openvino-f32")])
def test_engine_matches_eager_torch(lite0, pixels, engine, mode):
    pytest.importorskip(engine, reason=f"the {engine} wheel is not installed (pip install {engine})")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback
        runner = compile_for_inference(lite0, "cpu", engine=engine, threads=1)
    assert runner.mode == mode and runner.version.startswith(engine)
    assert 0 <= runner.max_abs_diff <= 1e-3
    expected = _eager(lite0, pixels)
    got = runner(pixels)
    assert got.shape == (3, 1280) and got.dtype == torch.float32 and got.device.type == "cpu"
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= 1e-4 * scale
    assert runner(pixels[:1]).shape == (1, 1280)  # dynamic batch axis


def test_openvino_runs_in_f32(lite0):
    pytest.importorskip("openvino", reason="the openvino wheel is not installed (pip install openvino)")
    runner = compile_for_inference(lite0, "cpu", engine="openvino", threads=1)
    assert runner.precision == "f32"


def test_unknown_engine_names_extract_engine(lite0):
    with pytest.raises(DmlReproError, match=r"extract\.engine must be one of auto\|torch\|onnxruntime\|openvino"):
        _extract_settings({"engine": "tensorrt"})
    with pytest.raises(DmlReproError, match=r"extract\.engine.*'tensorrt'"):
        compile_for_inference(lite0, "cpu", engine="tensorrt")
    assert DEFAULTS["engine"] == "auto"
    assert _extract_settings({})["engine"] == "auto"
    assert _extract_settings({"engine": None})["engine"] == "auto"
    assert _extract_settings({"engine": " OnnxRuntime "})["engine"] == "onnxruntime"


def test_torch_engine_is_todays_path(lite0):
    runner = compile_for_inference(lite0, "cpu", engine="torch")
    assert runner.mode == "jit-trace-freeze" and runner.max_abs_diff <= 1e-3
    assert compile_for_inference(lite0, "cpu", engine="torch", trace=False).mode == "eager"


def test_auto_prefers_onnxruntime_on_cpu(lite0):
    pytest.importorskip("onnxruntime", reason="the onnxruntime wheel is not installed")
    assert compile_for_inference(lite0, "cpu", engine="auto", threads=1).mode == "onnxruntime"


def test_failing_engine_falls_back_to_torch(lite0, pixels, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no session for you")

    monkeypatch.setattr(engines, "OnnxRuntimeRunner", broken)
    with pytest.warns(UserWarning, match=r"onnxruntime engine is not used \(no session for you\); falling back to torch"):
        runner = compile_for_inference(lite0, "cpu", engine="onnxruntime", threads=1)
    assert isinstance(runner, inference.InferenceRunner) and runner.mode == "jit-trace-freeze"
    torch.testing.assert_close(runner(pixels), _eager(lite0, pixels), atol=1e-4, rtol=1e-4)


def test_disagreeing_engine_falls_back(lite0, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnxruntime wheel is not installed")
    call = engines.OnnxRuntimeRunner.__call__
    monkeypatch.setattr(engines.OnnxRuntimeRunner, "__call__", lambda self, x: call(self, x) + 0.05)
    with pytest.warns(UserWarning, match="differs from eager torch"):
        runner = compile_for_inference(lite0, "cpu", engine="onnxruntime", threads=1, trace=False)
    assert runner.mode == "eager"


def test_auto_tries_the_next_engine_and_exports_once(lite0, monkeypatch):
    monkeypatch.setattr(inference, "installed", lambda name: True)
    calls = []

    def broken_export(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(inference, "export_onnx", broken_export)
    with pytest.warns(UserWarning) as record:
        runner = compile_for_inference(lite0, "cpu", engine="auto", threads=1, trace=False)
    messages = [str(w.message) for w in record]
    assert "ONNX export failed" in messages[0] and "trying openvino" in messages[0]
    assert "falling back to torch" in messages[1]
    assert runner.mode == "eager" and len(calls) == 1


def test_missing_engine_package(lite0, monkeypatch):
    monkeypatch.setattr(inference, "installed", lambda name: name == "torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # auto: a missing optional engine is no warning
        assert compile_for_inference(lite0, "cpu", engine="auto", trace=False).mode == "eager"
    with pytest.warns(UserWarning, match=r"openvino package is not installed.*falling back to torch"):
        assert compile_for_inference(lite0, "cpu", engine="openvino", trace=False).mode == "eager"


def test_extract_records_the_engine(tmp_path):
    root = tmp_path / "tiny"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["path,label,class_name,split"]
    for i, split in enumerate(["train", "train", "val", "test"]):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / f"images/{i}.png")
        lines.append(f"images/{i}.png,{i},c{i},{split}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "f.npz"
    cfg = {"batch_size": 3, "train_views": 0, "threads": 1}  # engine: auto
    summary = extract_features(root, {"name": "efficientnet_lite0"}, cfg, out, device="cpu", progress=False)
    feats = load_features(out)
    meta = feats["meta"]
    used = ("onnxruntime" if engines.installed("onnxruntime")
            else "openvino-f32" if engines.installed("openvino") else "jit-trace-freeze")
    assert summary["inference"] == meta["inference"] == used and meta["engine"] == "auto"
    assert 0 <= meta["engine_max_abs_diff"] <= 1e-3
    assert meta["inference_version"].startswith({"onnxruntime": "onnxruntime", "openvino-f32": "openvino"}.get(used, "torch"))
    # the same features as eager torch (float16 storage), batch of 3 then a partial batch of 1
    backbone = create_backbone("efficientnet_lite0", input_size=SIZE)
    x = torch.stack([torch.from_numpy(np.array(Image.open(root / f"images/{i}.png"))).permute(2, 0, 1).float()
                     for i in (0, 1)])
    expected = _eager(backbone, x).numpy()
    np.testing.assert_allclose(feats["train_features"][0].astype(np.float32), expected, atol=5e-3, rtol=2e-3)
