"""The glyphs kind's stand-in shapes on the DejaVu fixture: classes missing from some designs
(Cars-shaped), jittered views, query/gallery by design (In-Shop-shaped), nested test lists
(VehicleID-shaped). Expected values come from the fonts' character maps (fontTools) and the
declared settings, not from the loader."""
import copy
from collections import defaultdict
from pathlib import Path

import pytest
from fontTools.ttLib import TTFont
from PIL import Image

from dmlrepro.data import glyphs
from dmlrepro.data.glyphs import prepare_glyphs
from dmlrepro.data.manifest import read_manifest
from dmlrepro.errors import DmlReproError
from dmlrepro.evaluation.sets import EvaluationSet, evaluation_sets

DEJAVU = Path(glyphs.DEJAVU_DIR)
pytestmark = pytest.mark.skipif(not (DEJAVU / "DejaVuSans.ttf").is_file(), reason="DejaVu fonts not installed")
FONTS = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSerif-Italic.ttf"]
CYRILLIC = "U+0410-U+04FF"  # Sans draws all of it, Serif and Mono only part: classes missing from some designs


def cfg(**kw):
    base = {"kind": "glyphs", "fonts": [str(DEJAVU / f) for f in FONTS], "characters": "ABDEFGHKMNPRSTabdeghkmnqrt",
            "image_size": 32, "min_designs": 2, "val_fraction": 0.25, "duplicate_threshold": 0.98, "workers": 1}
    base.update(kw)
    return base


def by_class(manifest):
    rows = defaultdict(list)
    for row in manifest.rows():
        rows[row["class_name"]].append(row)
    return rows


def test_missing_designs_picks_characters_some_designs_do_not_draw(tmp_path):
    info = prepare_glyphs(cfg(characters=CYRILLIC, missing_designs=[1, 2], min_coverage=0.3), tmp_path / "out")
    kept = [f for f in info["fonts"] if f["status"] == "kept"]
    cmaps = [set(TTFont(f["file"], fontNumber=f["index"]).getBestCmap()) for f in kept]
    classes = by_class(read_manifest(tmp_path / "out"))
    assert len(classes) >= 10
    for name, rows in classes.items():
        cp = int(name[2:], 16)
        drawn = sum(cp in c for c in cmaps)
        assert 1 <= len(kept) - drawn <= 2, name  # never drawn by all designs: disjoint from the default classes
        assert len(rows) == drawn  # one image per design that draws it


def test_views_per_design_adds_deterministic_jittered_views(tmp_path):
    one = prepare_glyphs(cfg(max_classes=4), tmp_path / "one")
    three = prepare_glyphs(cfg(max_classes=4, views_per_design=3), tmp_path / "three")
    again = prepare_glyphs(cfg(max_classes=4, views_per_design=3), tmp_path / "again")
    m = read_manifest(tmp_path / "three")
    assert len(m) == 3 * len(read_manifest(tmp_path / "one")) == 3 * 4 * len(one["designs"])
    assert three["counts"]["images_per_class"] == 3 * len(one["designs"])
    for path in m.paths:
        assert (tmp_path / "three" / path).read_bytes() == (tmp_path / "again" / path).read_bytes()
    design = three["designs"][0]
    view0 = (tmp_path / "three/images" / design / "0041.png").read_bytes()
    assert view0 == (tmp_path / "one/images" / design / "0041.png").read_bytes()  # view 0 is the plain rendering
    views = [Image.open(tmp_path / "three/images" / design / name).tobytes() for name in ("0041.png", "0041_1.png", "0041_2.png")]
    assert len(set(views)) == 3


def test_query_gallery_splits_test_images_by_design(tmp_path):
    info = prepare_glyphs(cfg(test_split="query_gallery"), tmp_path / "out")
    m = read_manifest(tmp_path / "out")
    assert set(m.splits) == {"train", "val", "query", "gallery"}
    design_of = lambda row: row["path"].split("/")[1]  # noqa: E731
    query_designs = {design_of(r) for r in m.rows() if r["split"] == "query"}
    gallery_designs = {design_of(r) for r in m.rows() if r["split"] == "gallery"}
    assert query_designs == set(info["designs"][0::2]) and gallery_designs == set(info["designs"][1::2])
    for rows in by_class(m).values():  # every test class has images on both sides
        splits = {r["split"] for r in rows}
        assert splits in ({"train"}, {"val"}, {"query", "gallery"})
    assert evaluation_sets(m.split_names()) == [EvaluationSet("test", "query", "gallery")]


def test_vehicleid_shape_nests_three_test_lists(tmp_path):
    prepare_glyphs(cfg(test_split="vehicleid", test_classes=9), tmp_path / "out")
    m = read_manifest(tmp_path / "out")
    classes = {s: {r["class_name"] for r in m.rows() if r["split"] == s} for s in m.split_names()}
    letters = sorted("ABDEFGHKMNPRSTabdeghkmnqrt")
    test = [f"U+{ord(c):04X}" for c in letters[-9:]]  # the last 9 classes by code point
    assert classes["test_2400"] == set(test)
    assert classes["test_1600"] == set(test[:6]) and classes["test_800"] == set(test[:3])
    assert classes["train"] | classes["val"] == {f"U+{ord(c):04X}" for c in letters[:-9]}
    per_class = len(m.indices("test_2400")) // 9
    assert len(m.indices("test_800")) == 3 * per_class  # an image in several lists has a row in each
    assert [s.name for s in evaluation_sets(m.split_names())] == ["test_800", "test_1600", "test_2400"]


@pytest.mark.parametrize("bad, key", [({"missing_designs": [2, 1]}, "missing_designs"),
                                      ({"test_split": "random"}, "test_split"),
                                      ({"views_per_design": 0}, "views_per_design"),
                                      ({"test_classes": 26}, "test_classes")])
def test_bad_stand_in_settings_name_the_key(tmp_path, bad, key):
    with pytest.raises(DmlReproError, match=key):
        prepare_glyphs(cfg(**bad), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_recall_ks_come_from_the_dataset_then_its_kind_then_evaluation_ks():
    """SOP's papers report R@1/10/100/1000, In-Shop's R@1/10/20/30/40/50, VehicleID's R@1/5."""
    from conftest import tiny_params
    from dmlrepro.study.runs import dataset_ks, ks_source, resolve_run

    params = tiny_params()
    params["evaluation"]["ks"] = [1, 2, 4, 8]
    params["datasets"]["glyphs_sop"]["ks"] = [1, 10, 100, 1000]
    params["datasets"]["real_sop"] = {"kind": "sop", "root": "/nowhere"}
    params["datasets"]["real_vehicleid"] = {"kind": "vehicleid", "root": "/nowhere", "ks": [1, 5, 10]}
    assert dataset_ks(params, "glyphs") == [1, 2, 4, 8] and ks_source(params, "glyphs") == "evaluation.ks"
    assert dataset_ks(params, "glyphs_sop") == [1, 10, 100, 1000]
    assert ks_source(params, "glyphs_sop") == "datasets.glyphs_sop.ks"
    assert dataset_ks(params, "real_sop") == [1, 10, 100, 1000] and ks_source(params, "real_sop") == "kind:sop"
    assert dataset_ks(params, "real_vehicleid") == [1, 5, 10]
    run = resolve_run(params, "glyphs_sop", "multi_similarity", 0)
    assert run.config["evaluation"]["ks"] == [1, 10, 100, 1000]
    # a dataset's ks is an evaluation setting: changing it does not change the prepared data's identity
    other = copy.deepcopy(params)
    other["datasets"]["glyphs_sop"]["ks"] = [1, 10]
    assert resolve_run(other, "glyphs_sop", "multi_similarity", 0).features.hash == run.features.hash
