"""The official-release loaders (cub200, cars196, sop, inshop, vehicleid) on miniature copies.

Expected values come from the fixture definitions in official_fixtures.py.
"""
from __future__ import annotations

import hashlib
import json
import io
import re
from pathlib import Path

import pytest
import numpy as np
from PIL import Image
import yaml

from dmlrepro.data import DATASETS, prepare_dataset
from dmlrepro.data.manifest import read_manifest
from dmlrepro.data.splits import carve_validation
from dmlrepro.errors import DmlReproError

from official_fixtures import (CUB_CLASSES, CUB_IMAGES, INSHOP_ITEMS, SOP_CLASSES, URLS, VEHICLEID_LISTS,
                               VEHICLEID_TEST, WRITERS, cars_name, write_cars, write_cub, write_inshop)

KINDS = list(WRITERS)
EVAL_SPLITS = {"cub200": ["test"], "cars196": ["test"], "sop": ["test"], "inshop": ["query", "gallery"],
               "vehicleid": ["test_800", "test_1600", "test_2400"]}
PROTOCOLS = {"cub200": "leave_one_out", "cars196": "leave_one_out", "sop": "leave_one_out",
             "inshop": "query_gallery", "vehicleid": "leave_one_out_per_test_list"}
KS = {"cub200": [1, 2, 4, 8], "cars196": [1, 2, 4, 8], "sop": [1, 10, 100, 1000],
      "inshop": [1, 10, 20, 30, 40, 50], "vehicleid": [1, 5]}
RELEASE_IMAGES = {"cub200": 11788, "cars196": 16185, "sop": 120053, "inshop": 52712}


def prepare(kind, copy, out: Path, **settings):
    cfg = {"kind": kind, "root": str(copy.root), "val_fraction": 0.25, "workers": 1, **settings}
    return prepare_dataset(out.name, cfg, out)


def manifest_rows(out: Path) -> list[dict]:
    m = read_manifest(out, check_files=True)
    return m.rows()


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


# ------------------------------------------------------------------------------------ registration


def test_each_kind_declares_protocol_ks_release_and_settings(kind):
    meta = DATASETS.metadata(kind)
    assert meta["protocol"] == PROTOCOLS[kind]
    assert meta["ks"] == KS[kind]
    assert meta["published_at"] == URLS[kind]
    assert meta["splits"][:2] == ["train", "val"] and meta["splits"][2:] == EVAL_SPLITS[kind]
    assert set(meta["schema"]) == {"root", "val_fraction", "seed", "skip_unreadable", "ks", "workers"}
    if kind in RELEASE_IMAGES:
        assert meta["counts"]["total"]["images"] == RELEASE_IMAGES[kind]


def test_release_counts_add_up():
    c = {k: DATASETS.metadata(k)["counts"] for k in KINDS}
    for k in ("cub200", "cars196", "sop"):
        assert c[k]["train"]["images"] + c[k]["test"]["images"] == c[k]["total"]["images"]
        assert c[k]["train"]["classes"] + c[k]["test"]["classes"] == c[k]["total"]["classes"]
    assert c["inshop"]["train"]["images"] + c["inshop"]["query"]["images"] + c["inshop"]["gallery"]["images"] == 52712
    assert c["inshop"]["train"]["classes"] + c["inshop"]["query"]["classes"] == 7982
    assert [c["vehicleid"][s]["classes"] for s in ("test_800", "test_1600", "test_2400")] == [800, 1600, 2400]


def test_params_schema_accepts_an_official_entry_and_refuses_a_typo():
    from dmlrepro.study.params import validate_params

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["datasets"]["cub"] = {"kind": "cub200", "root": "/data/CUB", "skip_unreadable": True, "ks": [1, 2]}
    validate_params(params)
    params["datasets"]["cub"]["val_fracton"] = 0.1
    with pytest.raises(DmlReproError, match="val_fracton"):
        validate_params(params)


# ------------------------------------------------------------------------------------ the manifests


def test_manifest_matches_the_copy(kind, tmp_path, capsys):
    copy = WRITERS[kind](tmp_path / "release")
    out = tmp_path / "data" / kind
    info = prepare(kind, copy, out)
    rows = manifest_rows(out)

    # every path absolute and an existing file of the copy
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in rows)
    # splits: the official training pool is train + val, evaluation splits kept as they are
    by_split = {}
    for r in rows:
        by_split.setdefault(r["split"], set()).add((r["path"], r["class_name"]))
    expect = {s: {(str(copy.data_root / p), c) for p, c in imgs} for s, imgs in copy.images.items()}
    assert by_split.get("train", set()) | by_split.get("val", set()) == expect["train"]
    for split in EVAL_SPLITS[kind]:
        assert by_split[split] == expect[split]
    assert set(by_split) == {"train", "val", *EVAL_SPLITS[kind]}
    assert sum(len(v) for v in by_split.values()) == len(rows)   # no duplicate rows

    # labels: 0..C-1 in canonical class order
    for r in rows:
        assert r["label"] == copy.class_order.index(r["class_name"])

    # validation: carved from the training classes only, with carve_validation's rule
    val = {r["class_name"] for r in rows if r["split"] == "val"}
    train = {r["class_name"] for r in rows if r["split"] == "train"}
    pool = [c for c in copy.class_order if c in {n for _, n in copy.images["train"]}]
    assert val and not val & train and val | train == set(pool)
    assert val <= set(pool)
    assert len(val) == max(1, round(0.25 * len(pool)))

    # info.json: counts, release, metadata hashes, the subset warning
    on_disk = json.loads((out / "info.json").read_text())
    assert on_disk == info
    assert info["kind"] == kind and info["root"] == str(copy.root) and Path(info["root"]).is_absolute()
    for split in ("train", "val", *EVAL_SPLITS[kind]):
        sel = [r for r in rows if r["split"] == split]
        assert info["counts"][split] == {"images": len(sel), "classes": len({r["label"] for r in sel})}
    assert info["counts"]["total"]["images"] == copy.n_images()
    assert info["counts"]["total"]["classes"] == len(copy.class_order)
    for split, imgs in copy.images.items():
        assert info["official_split_counts"][split] == {"images": len(imgs), "classes": len({c for _, c in imgs})}
    assert info["release_counts"] == DATASETS.metadata(kind)["counts"]
    for m in copy.metadata:
        assert info["metadata"][m]["sha256"] == hashlib.sha256((copy.data_root / m).read_bytes()).hexdigest()
    assert info["ks"] == KS[kind] and info["skipped"]["images"] == 0
    err = capsys.readouterr().err
    assert "is a subset of the official release" in err
    if kind in RELEASE_IMAGES:
        assert f"{copy.n_images():,} of {RELEASE_IMAGES[kind]:,} images" in err
    assert any("is a subset of the official release" in w for w in info["warnings"])


def test_rows_are_deterministic_and_sorted(tmp_path):
    copy = write_cub(tmp_path / "release")
    prepare("cub200", copy, tmp_path / "a")
    prepare("cub200", copy, tmp_path / "b")
    a = (tmp_path / "a/manifest.csv").read_text()
    assert a == (tmp_path / "b/manifest.csv").read_text()
    rows = manifest_rows(tmp_path / "a")
    order = ["train", "val", "test"]
    keys = [(order.index(r["split"]), r["label"], r["path"]) for r in rows]
    assert keys == sorted(keys)


def test_cub_root_may_be_the_release_folder_itself(tmp_path):
    copy = write_cub(tmp_path / "release")
    prepare("cub200", copy, tmp_path / "a")
    copy.root = copy.data_root
    info = prepare("cub200", copy, tmp_path / "b")
    assert (tmp_path / "a/manifest.csv").read_text() == (tmp_path / "b/manifest.csv").read_text()
    assert info["root"] == str(copy.data_root)


def test_cub_classes_split_by_official_id_and_named_by_classes_txt(tmp_path):
    copy = write_cub(tmp_path / "release")
    prepare("cub200", copy, tmp_path / "out")
    rows = manifest_rows(tmp_path / "out")
    names = {r["label"]: r["class_name"] for r in rows}
    assert [names[i] for i in range(len(names))] == [CUB_CLASSES[c] for c in sorted(CUB_CLASSES)]
    test = {r["class_name"] for r in rows if r["split"] == "test"}
    assert test == {n for c, n in CUB_CLASSES.items() if c > 100}
    per_class = {}
    for r in rows:
        per_class[r["class_name"]] = per_class.get(r["class_name"], 0) + 1
    assert per_class == {CUB_CLASSES[c]: n for c, n in CUB_IMAGES.items()}


def test_cars_split_ignores_the_test_flag(tmp_path):
    copy = write_cars(tmp_path / "release")
    prepare("cars196", copy, tmp_path / "out")
    rows = manifest_rows(tmp_path / "out")
    test = {r["class_name"] for r in rows if r["split"] == "test"}
    assert test == {cars_name(k) for k in range(99, 197)}
    assert any(r["class_name"] == "AM General Hummer SUV 2000" and r["label"] == 0 for r in rows)


def test_sop_keeps_the_super_class_columns(tmp_path):
    copy = WRITERS["sop"](tmp_path / "release")
    prepare("sop", copy, tmp_path / "out")
    m = read_manifest(tmp_path / "out")
    assert set(m.extra) == {"super_class", "super_class_name"}
    for r in m.rows():
        rel = str(Path(r["path"]).relative_to(copy.data_root))
        assert {"super_class": r["super_class"], "super_class_name": r["super_class_name"]} == copy.extra[rel]
        assert r["class_name"] in {str(c) for c in SOP_CLASSES}


def test_inshop_query_and_gallery_share_their_items(tmp_path):
    copy = write_inshop(tmp_path / "release")
    prepare("inshop", copy, tmp_path / "out")
    rows = manifest_rows(tmp_path / "out")
    query = {(r["path"], r["label"]) for r in rows if r["split"] == "query"}
    gallery = {(r["path"], r["label"]) for r in rows if r["split"] == "gallery"}
    assert {p for p, _ in query} == copy.paths("query") and {p for p, _ in gallery} == copy.paths("gallery")
    test_items = {i for i, (_, views) in INSHOP_ITEMS.items() if views[0][1] != "train"}
    assert {copy.class_order[lab] for _, lab in query} == {copy.class_order[lab] for _, lab in gallery} == test_items


def test_inshop_count_line_mismatch_is_a_warning(tmp_path, capsys):
    copy = write_inshop(tmp_path / "release")
    f = copy.data_root / "Eval/list_eval_partition.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(["52712", *lines[1:]]) + "\n")
    info = prepare("inshop", copy, tmp_path / "out")
    assert any("52,712 images on line 1" in w for w in info["warnings"])
    assert "52,712 images on line 1" in capsys.readouterr().err


def test_vehicleid_overlapping_test_lists_give_one_row_per_list(tmp_path):
    copy = WRITERS["vehicleid"](tmp_path / "release")
    prepare("vehicleid", copy, tmp_path / "out")
    rows = manifest_rows(tmp_path / "out")
    for split, vids in VEHICLEID_LISTS.items():
        sel = [r for r in rows if r["split"] == split]
        assert len(sel) == sum(VEHICLEID_TEST[v] for v in vids)
        assert {r["class_name"] for r in sel} == {str(v) for v in vids}
    shared = str(copy.data_root / "image/0000200.jpg")  # vehicle 2, in all three lists
    assert sorted(r["split"] for r in rows if r["path"] == shared) == ["test_1600", "test_2400", "test_800"]
    assert len({r["label"] for r in rows if r["path"] == shared}) == 1


def test_ks_override_is_recorded(tmp_path):
    info = prepare("sop", WRITERS["sop"](tmp_path / "release"), tmp_path / "out", ks=[1, 10])
    assert info["ks"] == [1, 10]


# -------------------------------------------------------------------------------- broken copies


def test_missing_root(tmp_path, kind):
    out = tmp_path / "data" / "mine"
    with pytest.raises(DmlReproError) as e:
        prepare_dataset("mine", {"kind": kind, "root": str(tmp_path / "nowhere")}, out)
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and kind in msg and URLS[kind] in msg
    assert "datasets.mine.root" in msg
    assert not out.exists()


def test_missing_root_setting(tmp_path):
    with pytest.raises(DmlReproError, match=r"`root`: required"):
        prepare_dataset("mine", {"kind": "cub200"}, tmp_path / "mine")
    with pytest.raises(DmlReproError, match="unknown setting"):
        prepare_dataset("mine", {"kind": "cub200", "root": str(tmp_path), "font_dirs": []}, tmp_path / "mine")


def test_missing_metadata_file(tmp_path, kind):
    copy = WRITERS[kind](tmp_path / "release")
    missing = copy.data_root / copy.metadata[-1]
    missing.unlink()
    with pytest.raises(DmlReproError) as e:
        prepare(kind, copy, tmp_path / "data" / "mine")
    msg = str(e.value)
    assert str(missing) in msg and URLS[kind] in msg and "datasets.mine.root" in msg
    assert not (tmp_path / "data" / "mine").exists()


def _garble(copy, split="test", index=0) -> Path:
    path = copy.data_root / copy.images[split][index][0]
    path.write_bytes(b"this is not a JPEG " * 10)
    return path


def test_unreadable_image_fails_naming_the_file(tmp_path):
    copy = write_cub(tmp_path / "release")
    bad = _garble(copy)
    with pytest.raises(DmlReproError) as e:
        prepare("cub200", copy, tmp_path / "out")
    assert str(bad) in str(e.value) and "skip_unreadable" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_image_fails_naming_the_file(tmp_path):
    copy = write_cub(tmp_path / "release")
    gone = copy.data_root / copy.images["train"][1][0]
    gone.unlink()
    with pytest.raises(DmlReproError, match=re.escape(str(gone)) + ": no such file"):
        prepare("cub200", copy, tmp_path / "out")


def test_skip_unreadable_drops_and_reports(tmp_path, capsys):
    copy = write_cub(tmp_path / "release")
    bad = _garble(copy)
    info = prepare("cub200", copy, tmp_path / "out", skip_unreadable=True)
    rows = manifest_rows(tmp_path / "out")
    assert str(bad) not in {r["path"] for r in rows}
    assert len(rows) == copy.n_images() - 1
    assert info["skipped"]["images"] == 1 and info["skipped"]["first"][0]["path"] == str(bad)
    assert info["skipped"]["classes_emptied"] == []
    assert "skipped 1 unreadable image" in capsys.readouterr().err


def test_skip_unreadable_may_empty_a_class(tmp_path):
    copy = write_cub(tmp_path / "release")
    # class 2 (two images, both in the training pool): garble both
    idx = [i for i, (_, n) in enumerate(copy.images["train"]) if n == CUB_CLASSES[2]]
    for i in idx:
        _garble(copy, "train", i)
    info = prepare("cub200", copy, tmp_path / "out", skip_unreadable=True)
    rows = manifest_rows(tmp_path / "out")   # labels stay 0..C-1
    assert CUB_CLASSES[2] not in {r["class_name"] for r in rows}
    assert info["skipped"]["images"] == 2 and info["skipped"]["classes_emptied"] == ["2"]
    assert info["counts"]["total"]["classes"] == len(CUB_CLASSES) - 1


def test_class_listed_without_images(tmp_path):
    copy = write_cub(tmp_path / "release", classes={**CUB_CLASSES, 5: "005.Crested_Auklet"})
    with pytest.raises(DmlReproError, match=r"classes\.txt have no image.*5 \('005\.Crested_Auklet'\)"):
        prepare("cub200", copy, tmp_path / "out")


def test_cars_class_name_without_annotations(tmp_path):
    copy = write_cars(tmp_path / "release", drop_class=7)
    with pytest.raises(DmlReproError, match=re.escape(f"7 ('{cars_name(7)}')")):
        prepare("cars196", copy, tmp_path / "out")


def _append(file: Path, text: str) -> int:
    lines = file.read_text().splitlines()
    file.write_text("\n".join([*lines, text]) + "\n")
    return len(lines) + 1


MALFORMED = {
    "cub200": ("image_class_labels.txt", "22 not-a-class"),
    "sop": ("Ebay_test.txt", "999 7 2"),
    "inshop": ("Eval/list_eval_partition.txt", "img/WOMEN/Dresses/id_00000001/x.jpg  id_00000001  test"),
    "vehicleid": ("train_test_split/test_list_1600.txt", "0000999"),
}


@pytest.mark.parametrize("which", list(MALFORMED))
def test_malformed_line_names_file_and_line(tmp_path, which):
    copy = WRITERS[which](tmp_path / "release")
    rel, text = MALFORMED[which]
    n = _append(copy.data_root / rel, text)
    with pytest.raises(DmlReproError, match=re.escape(f"{copy.data_root / rel}, line {n}:")):
        prepare(which, copy, tmp_path / "out")


def test_inshop_count_line_must_be_a_number(tmp_path):
    copy = write_inshop(tmp_path / "release")
    f = copy.data_root / "Eval/list_eval_partition.txt"
    f.write_text("many\n" + f.read_text().split("\n", 1)[1])
    with pytest.raises(DmlReproError, match=re.escape(f"{f}, line 1: expected the number of images")):
        prepare("inshop", copy, tmp_path / "out")


def test_cars_mat_without_the_official_fields(tmp_path):
    import numpy as np
    from scipy.io import savemat

    copy = write_cars(tmp_path / "release")
    ann = np.zeros((1, 1), dtype=[("relative_im_path", "O"), ("label", "O")])
    ann[0, 0] = (np.array(["car_ims/000001.jpg"]), np.array([[1]]))
    savemat(str(copy.data_root / "cars_annos.mat"), {"annotations": ann, "class_names": np.array(["a"], dtype=object)})
    with pytest.raises(DmlReproError, match=r"cars_annos\.mat: expected a struct array `annotations` with the fields relative_im_path, class"):
        prepare("cars196", copy, tmp_path / "out")


def test_a_class_in_training_and_evaluation_is_refused(tmp_path):
    copy = WRITERS["sop"](tmp_path / "release")
    n = _append(copy.data_root / "Ebay_test.txt", "999 1 1 bicycle_final/111085122871_0.JPG")
    with pytest.raises(DmlReproError, match=rf"class 1 is in the training pool .* and in the test split .*line {n}"):
        prepare("sop", copy, tmp_path / "out")


def test_truncated_jpeg_fails_at_prepare_not_at_extraction(tmp_path):
    """A download cut short keeps a valid JPEG header: the check decodes the file, not only the header."""
    copy = write_cub(tmp_path / "release")
    path = copy.data_root / copy.images["train"][0][0]
    buf = io.BytesIO()  # a photo-sized JPEG, so that the cut leaves the header whole
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) * 2 // 3])
    with Image.open(path) as im:
        im.verify()  # the header check alone would pass it
    with pytest.raises(DmlReproError) as e:
        prepare("cub200", copy, tmp_path / "out")
    assert str(path) in str(e.value) and "skip_unreadable" in str(e.value)
