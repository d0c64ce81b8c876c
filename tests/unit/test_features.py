"""Feature extraction on a tiny generated dataset with the real EfficientNet-Lite0 (offline, CPU)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dmlrepro.backbones import create_backbone
from dmlrepro.errors import DmlReproError
from dmlrepro.backbones.extract import (
    augmented_view,
    centre_view,
    extract_features,
    load_features,
    random_resized_box,
    view_rng,
)

SIZE = 64
BACKBONE = {"name": "efficientnet_lite0", "weights": None}
# threads=1: fast at this size, and immune to another process busying the second core
EXTRACT = {"batch_size": 5, "train_views": 2, "crop_scale": [0.5, 1.0], "flip": True, "seed": 0, "threads": 1}
# splits interleaved on purpose: each split's arrays must keep manifest order
SPLITS = ["train", "val", "train", "test", "train", "val", "train", "test", "train", "train", "val", "test"]
COLOURS = ["red", "green", "blue", "orange", "purple", "black"]


def _label(i: int) -> int:
    """Class-disjoint splits (the manifest refuses a class in two of train, val, test)."""
    return {"train": i % 2, "val": 2, "test": 3}[SPLITS[i]]


def _draw(i: int) -> Image.Image:
    """A small asymmetric picture (so flips and crops change it); some grayscale or transparent."""
    colour = COLOURS[i % len(COLOURS)]
    img = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(img)
    if i % 3 == 0:
        draw.ellipse((4 + i, 8, 40 + i, 44), fill=colour)
    elif i % 3 == 1:
        draw.rectangle((6, 4 + i, 30, 58), fill=colour)
    else:
        draw.polygon([(2, 60), (30 + i, 6), (60, 50)], fill=colour)
    draw.text((36, 40), "ABCDEFGHIJKL"[i], fill="black")
    if i == 4:
        return img.convert("L")  # grayscale: repeated to 3 channels
    if i == 5:
        rgba = img.convert("RGBA")
        rgba.putalpha(200)
        return rgba  # transparency: composited onto white
    return img


pytestmark = pytest.mark.usefixtures("torch_one_thread")

@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    (root / "images").mkdir()
    lines = ["path,label,class_name,split"]
    for i, split in enumerate(SPLITS):
        rel = f"images/{i:03d}.png"
        _draw(i).save(root / rel)
        lines.append(f"{rel},{_label(i)},class{_label(i)},{split}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def extracted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("features") / "tiny" / "efficientnet_lite0.npz"
    previous = torch.get_num_threads()
    summary = extract_features(dataset, BACKBONE, EXTRACT, out, device="cpu", progress=False)
    assert torch.get_num_threads() == previous  # extract_features restores the thread count
    return out, summary


def _copy_dataset(dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    return copy


def test_arrays_shapes_dtypes_and_order(extracted):
    out, summary = extracted
    feats = load_features(out)
    assert sorted(feats.splits()) == ["test", "train", "val"]
    for split, views in (("train", 3), ("val", 1), ("test", 1)):
        rows = [i for i, s in enumerate(SPLITS) if s == split]
        x = feats[f"{split}_features"]
        assert x.dtype == np.float16 and x.shape == (views, len(rows), 1280)
        assert np.isfinite(x.astype(np.float32)).all()
        assert feats[f"{split}_rows"].dtype == np.int64
        assert feats[f"{split}_rows"].tolist() == rows  # manifest order kept
        assert feats[f"{split}_labels"].dtype == np.int64
        assert feats[f"{split}_labels"].tolist() == [_label(i) for i in rows]
    assert summary["images"] == len(SPLITS) and summary["views"] == 6 * 3 + 6
    assert summary["input_size"] == SIZE  # taken from the first image: no input_size configured
    assert summary["images_per_s"] > 0 and summary["inference"] in ("onnxruntime", "openvino-f32", "jit-trace-freeze")


def test_meta_records_the_protocol(extracted):
    meta = load_features(extracted[0])["meta"]
    assert meta["backbone"] == "efficientnet_lite0" and meta["feature_dim"] == 1280
    assert meta["input_size"] == SIZE and meta["views"] == {"train": 3, "val": 1, "test": 1}
    assert meta["crop_scale"] == [0.5, 1.0] and meta["flip"] is True and meta["seed"] == 0
    assert len(meta["weights_sha256"]) == 64 and meta["device"] == "cpu"
    assert meta["torch"] == torch.__version__ and meta["images_per_s"] > 0
    with np.load(extracted[0], allow_pickle=False) as raw:  # plain npz, no pickles
        assert json.loads(str(raw["meta"]))["backbone"] == "efficientnet_lite0"


def test_centre_view_is_the_backbone_on_the_image(extracted, dataset):
    feats = load_features(extracted[0])
    backbone = create_backbone("efficientnet_lite0", input_size=SIZE)
    for split in ("train", "val", "test"):
        rows = feats[f"{split}_rows"]
        pixels = []
        for r in rows:
            with Image.open(dataset / f"images/{r:03d}.png") as im:
                if im.mode == "RGBA":
                    im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im)
                pixels.append(np.asarray(im.convert("RGB"), dtype=np.float32))
        x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
        with torch.no_grad():
            direct = backbone.module(x).numpy()
        np.testing.assert_allclose(feats[f"{split}_features"][0].astype(np.float32), direct, rtol=5e-3, atol=5e-3)


def test_augmented_views_differ_from_the_centre_view(extracted):
    train = load_features(extracted[0])["train_features"].astype(np.float32)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        distance = np.linalg.norm(train[a] - train[b], axis=1)
        assert (distance > 1e-2 * np.linalg.norm(train[0], axis=1)).all()


def test_re_extraction_is_bit_identical(extracted, dataset, tmp_path):
    out2 = tmp_path / "again.npz"
    extract_features(dataset, BACKBONE, EXTRACT, out2, device="cpu", progress=False)
    first, second = load_features(extracted[0]), load_features(out2)
    for key in first:
        if key != "meta":
            assert np.array_equal(first[key], second[key]), key


def test_seed_changes_only_the_augmented_views(dataset, tmp_path, extracted):
    out = tmp_path / "seed1.npz"
    extract_features(dataset, BACKBONE, {**EXTRACT, "seed": 1, "input_size": SIZE}, out, "cpu", progress=False)
    base, other = load_features(extracted[0])["train_features"], load_features(out)["train_features"]
    assert np.array_equal(base[0], other[0])
    assert not np.array_equal(base[1], other[1])


def test_corrupt_image_names_the_file_and_writes_nothing(dataset, tmp_path):
    copy = _copy_dataset(dataset, tmp_path)
    (copy / "images/007.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated garbage")
    out = tmp_path / "out" / "feats.npz"
    out.parent.mkdir()
    with pytest.raises(DmlReproError) as err:
        extract_features(copy, BACKBONE, EXTRACT, out, device="cpu", progress=False)
    assert "007.png" in str(err.value) and "dmlrepro prepare" in str(err.value)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary left behind either


def test_failure_keeps_a_previous_output_intact(dataset, tmp_path, extracted):
    copy = _copy_dataset(dataset, tmp_path)
    (copy / "images/011.png").unlink()
    out = tmp_path / "feats.npz"
    shutil.copy(extracted[0], out)
    before = out.read_bytes()
    with pytest.raises(DmlReproError, match="011.png"):
        extract_features(copy, BACKBONE, EXTRACT, out, device="cpu", progress=False)
    assert out.read_bytes() == before


def test_missing_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DmlReproError, match="manifest.csv.*dmlrepro prepare"):
        extract_features(tmp_path / "empty", BACKBONE, EXTRACT, tmp_path / "f.npz", device="cpu")
    assert not (tmp_path / "f.npz").exists()


def test_unknown_backbone_lists_available(dataset, tmp_path):
    with pytest.raises(DmlReproError, match="available: .*efficientnet_lite0"):
        extract_features(dataset, {"name": "vgg_nope"}, EXTRACT, tmp_path / "f.npz", device="cpu")
    assert not (tmp_path / "f.npz").exists()


def test_missing_weights_path(dataset, tmp_path):
    missing = tmp_path / "weights" / "lite0.pth"
    with pytest.raises(DmlReproError, match="lite0.pth"):
        extract_features(dataset, {**BACKBONE, "weights": str(missing)}, EXTRACT, tmp_path / "f.npz", "cpu")


def test_bad_settings_are_reported(dataset, tmp_path):
    with pytest.raises(DmlReproError, match="crop_scale"):
        extract_features(dataset, BACKBONE, {**EXTRACT, "crop_scale": [0.9, 0.2]}, tmp_path / "f.npz", "cpu")
    with pytest.raises(DmlReproError, match="train_views"):
        extract_features(dataset, BACKBONE, {**EXTRACT, "train_views": -1}, tmp_path / "f.npz", "cpu")


def test_load_features_errors(extracted, tmp_path):
    missing = tmp_path / "features" / "glyphs" / "efficientnet_lite0.npz"
    with pytest.raises(DmlReproError, match="dmlrepro extract --features glyphs/efficientnet_lite0"):
        load_features(missing)
    with pytest.raises(DmlReproError, match="query"):
        load_features(extracted[0], splits=["train", "query"])
    feats = load_features(extracted[0], splits=["train", "test"])
    with pytest.raises(DmlReproError, match="splits are"):
        feats["gallery_features"]
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(DmlReproError, match="garbage.npz"):
        load_features(garbage)


# ---- views -------------------------------------------------------------------------------------


def test_centre_view_identity_and_resize_crop():
    img = Image.new("RGB", (SIZE, SIZE), "red")
    assert centre_view(img, SIZE) is img
    wide = Image.new("RGB", (200, 100), "white")
    ImageDraw.Draw(wide).rectangle((0, 0, 99, 99), fill="black")  # left half black
    view = centre_view(wide, 32)
    assert view.size == (32, 32)
    px = np.asarray(view)
    # the central 87.5 % of the short side is kept: columns left of centre black, right white
    assert px[:, :14].max() < 10 and px[:, 18:].min() > 245


def test_augmented_view_is_seeded_and_flip_only_flips():
    img = Image.new("RGB", (80, 60), "white")
    ImageDraw.Draw(img).rectangle((0, 0, 30, 59), fill="blue")
    a = np.asarray(augmented_view(img, 32, view_rng(3, 7), (0.5, 1.0), True))
    b = np.asarray(augmented_view(img, 32, view_rng(3, 7), (0.5, 1.0), True))
    assert a.shape == (32, 32, 3) and np.array_equal(a, b)
    flips = crops_differ = 0
    for row in range(20):
        with_flip = np.asarray(augmented_view(img, 32, view_rng(0, row), (0.5, 1.0), True))
        without = np.asarray(augmented_view(img, 32, view_rng(0, row), (0.5, 1.0), False))
        if not np.array_equal(with_flip, without):
            flips += 1
            assert np.array_equal(with_flip, without[:, ::-1])
        crops_differ += not np.array_equal(without, np.asarray(augmented_view(img, 32, view_rng(0, row + 1), (0.5, 1.0), False)))
    assert 0 < flips < 20 and crops_differ > 10


def test_random_resized_box_respects_scale_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = random_resized_box(100, 80, rng, (0.5, 1.0))
        assert 0 <= left and left + w <= 100 and 0 <= top and top + h <= 80
        assert 0.5 * 8000 * 0.97 <= w * h <= 8000
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05 or (w, h) == (100, 80)
