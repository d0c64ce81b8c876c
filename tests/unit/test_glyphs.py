"""The glyphs loader on a tiny fixture: Latin/Greek letters in the DejaVu fonts (no CJK fonts)."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmlrepro.data import DATASETS, prepare_dataset
from dmlrepro.data import glyphs
from dmlrepro.data.glyphs import (
    GLYPH_FONT_PACKAGES,
    family_key,
    parse_characters,
    prepare_glyphs,
    render_glyph,
    tiny_glyphs_config,
)
from dmlrepro.data.manifest import read_manifest
from dmlrepro.data.splits import split_classes
from dmlrepro.errors import DmlReproError

DEJAVU = Path(glyphs.DEJAVU_DIR)
pytestmark = pytest.mark.skipif(not (DEJAVU / "DejaVuSans.ttf").is_file(), reason="DejaVu fonts not installed")

LETTERS = "ABDEFGHKMNPRSTabdeghkmnqrt"
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
         "DejaVuSerif-Italic.ttf", "DejaVuSansMono-BoldOblique.ttf"]


def cfg(**kw):
    base = {
        "kind": "glyphs",
        "fonts": [str(DEJAVU / f) for f in FONTS],
        "characters": LETTERS,
        "image_size": 32,
        "min_designs": 2,
        "val_fraction": 0.25,
        "duplicate_threshold": 0.9,
        "workers": 1,
    }
    base.update(kw)
    return base


def font_copy(dest: Path, family: str, src: str = "DejaVuSans.ttf", xscale: float = 1.0, chars: str = "") -> str:
    """A copy of a DejaVu font under another family name; ``chars`` redrawn ``xscale`` as wide."""
    from fontTools.pens.transformPen import TransformPen
    from fontTools.pens.ttGlyphPen import TTGlyphPen
    from fontTools.ttLib import TTFont

    tt = TTFont(str(DEJAVU / src))
    for rec in tt["name"].names:
        if rec.nameID in (1, 4, 16):
            rec.string = family
        elif rec.nameID == 6:
            rec.string = family.replace(" ", "")
    cmap, glyph_set = tt.getBestCmap(), tt.getGlyphSet()
    redrawn = {}
    for ch in chars:
        pen = TTGlyphPen(glyph_set)
        glyph_set[cmap[ord(ch)]].draw(TransformPen(pen, (xscale, 0, 0, 1, 0, 0)))
        redrawn[cmap[ord(ch)]] = pen.glyph()
    for name, glyph in redrawn.items():
        tt["glyf"][name] = glyph
    tt.save(str(dest))
    return str(dest)


def ink_box(img: Image.Image, level: int = 128):
    a = np.asarray(img) < level
    ys, xs = np.nonzero(a)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("glyphs") / "glyphs"
    info = prepare_glyphs(cfg(), out)
    return out, info


def test_registered():
    assert "glyphs" in DATASETS
    assert DATASETS.get("glyphs") is prepare_glyphs


def test_parse_characters():
    cjk = parse_characters("cjk")
    assert cjk[0] == 0x4E00 and cjk[-1] == 0x9FFF and len(cjk) == 20992
    assert parse_characters("U+0041-U+0043,U+0391") == [0x41, 0x42, 0x43, 0x391]
    assert parse_characters("CBA C\n") == [0x41, 0x42, 0x43]
    with pytest.raises(DmlReproError, match="characters"):
        parse_characters("U+0043-U+0041")


def test_render_is_deterministic_centred_and_fitted():
    font = str(DEJAVU / "DejaVuSerif.ttf")
    for ch in "HgΩ":
        a = render_glyph(font, 0, ch, 64)
        b = render_glyph(font, 0, ch, 64)
        assert a.mode == "L" and a.size == (64, 64)
        assert a.tobytes() == b.tobytes()
        arr = np.asarray(a)
        assert arr[0, 0] == 255 and arr.min() < 50  # white background, black ink
        x0, y0, x1, y1 = ink_box(a, level=255)
        assert max(x1 - x0, y1 - y0) in (54, 55)  # round(0.85 * 64) = 54 (+1 antialiasing)
        assert abs((x0 + x1) / 2 - 32) <= 1 and abs((y0 + y1) / 2 - 32) <= 1
    wide = render_glyph(font, 0, "—", 64)  # a flat glyph: its width is fitted, height stays small
    x0, y0, x1, y1 = ink_box(wide, level=255)
    assert x1 - x0 in (54, 55) and y1 - y0 < 20
    assert render_glyph(font, 0, "\u2002", 64) is None  # EN SPACE draws nothing


def test_output_layout_manifest_and_info(built):
    out, info = built
    m = read_manifest(out, check_files=True)
    designs = info["designs"]
    classes = [ord(c) for c in sorted(LETTERS)]
    assert m.label_names() == [f"U+{cp:04X}" for cp in classes]
    # rows ordered by class, then design; paths images/<design>/<hex>.png
    expected_paths = [f"images/{d}/{cp:04x}.png" for cp in classes for d in designs]
    assert m.paths == expected_paths
    assert m.labels.tolist() == [i for i in range(len(classes)) for _ in designs]
    split = split_classes(classes, 0.25)
    assert m.splits == [split[cp] for cp in classes for _ in designs]
    img = Image.open(m.image_path(0))
    assert img.mode == "L" and img.size == (32, 32)
    # info.json is what prepare returned, and describes every font
    assert json.loads((out / "info.json").read_text()) == info
    assert info["counts"]["designs"] == len(designs) == len({p.split("/")[1] for p in m.paths})
    assert info["counts"]["classes"] == {"train": 10, "val": 3, "test": 13, "total": 26}
    assert info["counts"]["images"]["total"] == len(m) == 26 * len(designs)
    assert {f["status"] for f in info["fonts"]} <= {"kept", "excluded"}
    kept = [f for f in info["fonts"] if f["status"] == "kept"]
    assert [f["design_id"] for f in kept] == designs
    for f in info["fonts"]:
        assert len(f["sha256"]) == 64 and f["family"].startswith("DejaVu")
        assert f["family_key"].startswith("dejavu ") and f["reason"]
    # one design per family: the Bold is the same design as the Regular
    bold = next(f for f in info["fonts"] if f["design_id"] == "dejavusans-bold")
    assert bold["status"] == "excluded" and bold["same_design_as"] == "dejavusans"
    assert bold["reason"].startswith("same family as dejavusans (family key 'dejavu sans'")
    assert info["counts"]["families"] == 5  # Sans, Serif, Sans Mono, Serif Italic, Sans Mono Oblique
    assert info["image_size"] == 32 and info["characters"] == LETTERS
    assert {"pillow", "freetype", "fonttools"} <= set(info["versions"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["glyphs"]  # no temp dirs left


def test_rebuild_is_byte_identical_with_a_process_pool(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    prepare_glyphs(cfg(workers=2), again)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_identical_font_files_are_one_design(tmp_path):
    copy = tmp_path / "copy" / "DejaVuSans.ttf"
    copy.parent.mkdir()
    shutil.copy(DEJAVU / "DejaVuSans.ttf", copy)
    info = prepare_glyphs(cfg(fonts=[str(DEJAVU / "DejaVuSans.ttf"), str(copy), str(DEJAVU / "DejaVuSerif.ttf")]),
                          tmp_path / "out")
    dropped = [f for f in info["fonts"] if f["file"] == str(copy)]
    assert dropped[0]["status"] == "excluded" and "same file contents" in dropped[0]["reason"]
    assert info["designs"] == ["dejavusans", "dejavuserif"]


def test_renamed_copy_is_a_near_duplicate(tmp_path):
    from fontTools.ttLib import TTFont

    # same outlines, different bytes and names: caught by the rendering comparison
    tt = TTFont(str(DEJAVU / "DejaVuSans.ttf"))
    for rec in tt["name"].names:
        if rec.nameID in (1, 4, 16):
            rec.string = "Renamed Sans"
    renamed = tmp_path / "Renamed.ttf"
    tt.save(str(renamed))
    info = prepare_glyphs(cfg(fonts=[str(renamed), str(DEJAVU / "DejaVuSans.ttf"), str(DEJAVU / "DejaVuSerif.ttf")]),
                          tmp_path / "out")
    status = {Path(f["file"]).name: f for f in info["fonts"]}
    assert status["Renamed.ttf"]["status"] == "kept"  # first in order wins among equal weights
    assert status["DejaVuSans.ttf"]["status"] == "excluded"
    assert "near-duplicate of renamed" in status["DejaVuSans.ttf"]["reason"]
    assert "1.000" in status["DejaVuSans.ttf"]["reason"]


def test_duplicate_threshold_prefers_regular_weight(tmp_path):
    # the Bold under a family name of its own: only the rendering test can merge it
    other = font_copy(tmp_path / "OtherBold.ttf", "Other Sans", src="DejaVuSans-Bold.ttf")
    fonts = [other, str(DEJAVU / "DejaVuSans.ttf"), str(DEJAVU / "DejaVuSerif.ttf")]
    loose = prepare_glyphs(cfg(fonts=fonts, duplicate_threshold=0.3, min_designs=1), tmp_path / "loose")
    bold = next(f for f in loose["fonts"] if f["design_id"] == "otherbold")
    assert bold["weight"] == 700 and bold["family_key"] == "other sans"
    assert bold["status"] == "excluded" and "near-duplicate of dejavusans" in bold["reason"]
    strict = prepare_glyphs(cfg(fonts=fonts, duplicate_threshold=0.999), tmp_path / "strict")
    assert strict["designs"] == ["otherbold", "dejavusans", "dejavuserif"]


def test_family_key_normalisation():
    # weight, width and slope words at the end go; the rest of the name stays
    assert family_key("M PLUS 1") == family_key("M PLUS 1 ExtraBold") == family_key("M PLUS 1 Thin") == "m plus 1"
    assert family_key("M+ 1p") == family_key("M+ 1p Bold") == family_key("M PLUS 1p") == "m plus 1p"
    assert family_key("m+ 1P") == "m plus 1p"
    assert family_key("M+ 1c") == "m plus 1c" != family_key("M+ 1m")  # sub-families: left to the rendering test
    assert family_key("M PLUS 1 Code Light") == "m plus 1 code" != family_key("M PLUS 1")
    assert family_key("DejaVu Sans Light") == family_key("DejaVu Sans Condensed") == "dejavu sans"
    assert family_key("Foo Semi Bold") == family_key("Foo Extra-Light") == family_key("Foo_UltraBlack") == "foo"
    assert family_key("Foo Medium Condensed") == family_key("Foo W3") == family_key("Foo Book") == "foo"
    assert family_key("Foo Regular") == "foo"
    assert family_key("UnBatangBold") == family_key("UnBatang") == "unbatang"  # glued to a CamelCase name
    assert family_key("UnDinaruLight") == "undinaru"
    assert family_key("LXGW WenKai Mono Light") == "lxgw wenkai mono"
    # slope: a separate family
    assert family_key("DejaVu Serif", italic=True) == family_key("DejaVu Serif Italic") == "dejavu serif italic"
    assert family_key("Foo Bold Oblique") == family_key("FooBoldItalic") == "foo italic"
    # regions, encodings, variant letters and leading style words stay
    assert family_key("Noto Sans CJK JP") == "noto sans cjk jp" != family_key("Noto Sans CJK KR")
    assert family_key("AR PL KaitiM Big5") == "ar pl kaitim big5" != family_key("AR PL KaitiM GB")
    assert family_key("kiloji - B") == "kiloji b" and family_key("Ume P Gothic C5") == "ume p gothic c5"
    assert family_key("Black Han Sans") == "black han sans" and family_key("Times New Roman") == "times new roman"
    assert family_key("Bold") == "bold" and family_key("") == "" and family_key("", italic=True) == ""


def test_font_faces_record_their_family_key():
    keys = {}
    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-ExtraLight.ttf", "DejaVuSansCondensed.ttf",
                 "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono-Bold.ttf"):
        (face,) = glyphs.read_font_file(DEJAVU / name, [ord("A")])
        keys[name] = (face.family_key, face.italic)
    assert keys == {
        "DejaVuSans.ttf": ("dejavu sans", False), "DejaVuSans-Bold.ttf": ("dejavu sans", False),
        "DejaVuSans-ExtraLight.ttf": ("dejavu sans", False), "DejaVuSansCondensed.ttf": ("dejavu sans", False),
        "DejaVuSans-Oblique.ttf": ("dejavu sans italic", True), "DejaVuSerif.ttf": ("dejavu serif", False),
        "DejaVuSerif-BoldItalic.ttf": ("dejavu serif italic", True),
        "DejaVuSansMono-Bold.ttf": ("dejavu sans mono", False),
    }


def test_one_design_per_family(tmp_path):
    # DejaVu Sans at three weights and DejaVu Serif; a threshold no two renderings pass: only the
    # family rule merges, and the face closest to weight 400 stands for the family whatever the order
    fonts = [str(DEJAVU / f) for f in ("DejaVuSans-ExtraLight.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf",
                                       "DejaVuSans.ttf")]
    info = prepare_glyphs(cfg(fonts=fonts, duplicate_threshold=0.999), tmp_path / "out")
    assert info["designs"] == ["dejavuserif", "dejavusans"]
    fonts = {f["design_id"]: f for f in info["fonts"]}
    for did in ("dejavusans-extralight", "dejavusans-bold"):
        assert fonts[did]["status"] == "excluded" and fonts[did]["same_design_as"] == "dejavusans"
        assert fonts[did]["reason"].startswith("same family as dejavusans (family key 'dejavu sans'")
    assert fonts["dejavusans"]["status"] == fonts["dejavuserif"]["status"] == "kept"
    assert fonts["dejavusans"]["reason"] == "design of family 'dejavu sans'; 2 other face(s) are the same design"
    assert fonts["dejavuserif"]["family_key"] == "dejavu serif" and fonts["dejavuserif"]["same_design_as"] is None
    c = info["counts"]
    assert (c["faces"], c["families"], c["designs_before_family_rule"], c["designs"]) == (4, 2, 4, 2)
    assert c["faces_merged"] == {"same_family": 2, "near_duplicate": 0, "twin": 0}
    # info.json records the decision for every face
    on_disk = json.loads((tmp_path / "out" / "info.json").read_text())
    assert on_disk == info and len(on_disk["fonts"]) == 4
    for f in on_disk["fonts"]:
        assert f["family_key"] and f["status"] in ("kept", "excluded") and f["reason"]
        assert (f["same_design_as"] is None) == (f["status"] == "kept")
    assert not (tmp_path / "out" / "images" / "dejavusans-bold").exists()


def test_same_family_is_merged_before_the_rendering_test(tmp_path):
    # the Bold's family stands for it even when the Regular is a near-duplicate of another design
    fonts = [font_copy(tmp_path / "Renamed.ttf", "Renamed Sans"), str(DEJAVU / "DejaVuSans.ttf"),
             str(DEJAVU / "DejaVuSans-Bold.ttf"), str(DEJAVU / "DejaVuSerif.ttf")]
    info = prepare_glyphs(cfg(fonts=fonts), tmp_path / "out")
    fonts = {f["design_id"]: f for f in info["fonts"]}
    assert info["designs"] == ["renamed", "dejavuserif"]
    assert fonts["dejavusans"]["reason"].startswith("near-duplicate of renamed (median probe correlation 1.000")
    assert fonts["dejavusans-bold"]["reason"].startswith("same family as dejavusans ")
    assert fonts["dejavusans-bold"]["same_design_as"] == fonts["dejavusans"]["same_design_as"] == "renamed"
    assert fonts["renamed"]["reason"] == "design of family 'renamed sans'; 2 other face(s) are the same design"
    assert info["counts"]["designs_before_family_rule"] == 3  # renamed, the Bold, Serif


def test_twins_share_byte_identical_renderings(tmp_path):
    # 17 of the 26 letters redrawn 0.9 as wide: the median correlation (about 0.87) is below the
    # threshold, but the 9 untouched letters render byte-identically: a twin under another name
    redrawn = LETTERS[::2] + LETTERS[1:8:2]
    twin = font_copy(tmp_path / "Twin.ttf", "Twin Sans", xscale=0.9, chars=redrawn)
    fonts = [str(DEJAVU / "DejaVuSans.ttf"), twin, str(DEJAVU / "DejaVuSerif.ttf")]
    info = prepare_glyphs(cfg(fonts=fonts, duplicate_threshold=0.95), tmp_path / "out")
    t = next(f for f in info["fonts"] if f["design_id"] == "twin")
    assert t["status"] == "excluded" and t["same_design_as"] == "dejavusans"
    assert re.fullmatch(r"twin of dejavusans: median probe correlation 0\.(8[1-9]\d|9[0-4]\d) > 0\.80 and 9 of 26 "
                        r"common characters render byte-identically \(>= 2\)", t["reason"]), t["reason"]
    assert info["designs"] == ["dejavusans", "dejavuserif"] and info["counts"]["faces_merged"]["twin"] == 1
    assert info["twin_test"] == {"characters": 26, "faces_rendered": 2, "min_correlation": 0.8, "min_identical": 2}
    # every letter redrawn: the same correlation, nothing identical -- two designs
    other = font_copy(tmp_path / "Other.ttf", "Other Sans", xscale=0.9, chars=LETTERS)
    info = prepare_glyphs(cfg(fonts=[str(DEJAVU / "DejaVuSans.ttf"), other], duplicate_threshold=0.95), tmp_path / "o")
    assert info["designs"] == ["dejavusans", "other"]


def test_default_font_dirs_are_the_fetched_fonts_only():
    assert glyphs.resolve_config({})["font_dirs"] == ["fonts/usr/share/fonts"]
    assert "/usr/share/fonts" not in glyphs.DEFAULTS["font_dirs"]


def test_classes_are_the_characters_every_design_draws(tmp_path):
    from fontTools.ttLib import TTFont

    sans = set(TTFont(str(DEJAVU / "DejaVuSans.ttf")).getBestCmap())
    mono = set(TTFont(str(DEJAVU / "DejaVuSansMono.ttf")).getBestCmap())
    extra = min(cp for cp in sans - mono if 0x370 <= cp < 0x3000)  # drawn by Sans, not by Mono
    chars = "ABCDEFGH" + chr(extra) + "\u2002"  # U+2002 EN SPACE: mapped, but draws nothing
    spec = ",".join(f"U+{ord(c):04X}" for c in chars)
    fonts = [str(DEJAVU / "DejaVuSans.ttf"), str(DEJAVU / "DejaVuSansMono.ttf")]
    info = prepare_glyphs(cfg(fonts=fonts, characters=spec, min_coverage=0.5), tmp_path / "a")
    m = read_manifest(tmp_path / "a")
    assert m.label_names() == [f"U+{ord(c):04X}" for c in "ABCDEFGH"]
    assert info["common_characters"] == 8 and info["requested_characters"] == 10
    assert {f["design_id"]: f["coverage"] for f in info["fonts"]} == {"dejavusans": 9, "dejavusansmono": 8}
    # min_coverage: a face must draw that share of the requested characters
    with pytest.raises(DmlReproError, match="DejaVuSansMono.ttf: draws only 8 of the 10"):
        prepare_glyphs(cfg(fonts=fonts, characters=spec, min_coverage=0.9), tmp_path / "b")
    info = prepare_glyphs(cfg(fonts=fonts, characters=spec, min_coverage=0.9, min_designs=1), tmp_path / "c")
    assert info["designs"] == ["dejavusans"]
    assert len(read_manifest(tmp_path / "c").label_names()) == 9


def test_max_classes_keeps_the_first_characters(tmp_path):
    info = prepare_glyphs(cfg(max_classes=6, val_fraction=0.0), tmp_path / "out")
    m = read_manifest(tmp_path / "out")
    assert m.label_names() == [f"U+{ord(c):04X}" for c in sorted(LETTERS)[:6]]
    assert info["counts"]["classes"] == {"train": 3, "val": 0, "test": 3, "total": 6}
    assert info["common_characters"] == len(LETTERS)


def test_exclude_patterns(tmp_path):
    info = prepare_glyphs(cfg(exclude=["*mono*"]), tmp_path / "out")
    assert not any("mono" in d for d in info["designs"])
    assert any("exclude pattern" in f["reason"] for f in info["fonts"])


def test_missing_fonts_error_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DmlReproError) as e:
        prepare_dataset("glyphs", {"kind": "glyphs", "font_dirs": ["fonts/usr/share/fonts", "empty"]}, tmp_path / "out")
    msg = str(e.value)
    assert "fonts/usr/share/fonts: missing" in msg
    assert "empty: 0 font file(s)" in msg
    assert "min_designs = 25" in msg
    assert "make fonts" in msg and "fetch_fonts.sh" in msg
    assert "sudo apt-get install " + " ".join(GLYPH_FONT_PACKAGES) in msg
    assert not (tmp_path / "out").exists()


def test_too_few_designs_lists_why_faces_were_left_out(tmp_path):
    # DejaVu draws no ideographs: every face fails min_coverage
    with pytest.raises(DmlReproError) as e:
        prepare_glyphs(cfg(characters="cjk", min_designs=3), tmp_path / "out")
    msg = str(e.value)
    assert "0 usable font design(s) found, but min_designs = 3" in msg
    assert f"{len(FONTS)} face(s), e.g. DejaVuSans.ttf: draws only 0 of the 20992" in msg
    assert "fonts-noto-cjk" in msg
    assert not (tmp_path / "out").exists()


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    out = tmp_path / "glyphs"
    prepare_glyphs(cfg(max_classes=4), out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(glyphs.prepare, "write_manifest", boom)
    with pytest.raises(RuntimeError, match="killed"):
        prepare_glyphs(cfg(), out)  # rendering done, manifest fails: the old output stays as it was
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glyphs"]
    with pytest.raises(RuntimeError):
        prepare_glyphs(cfg(), tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glyphs"]


def test_bad_config_values_are_reported(tmp_path):
    with pytest.raises(DmlReproError, match="image_size"):
        prepare_glyphs(cfg(image_size="big"), tmp_path / "out")
    with pytest.raises(DmlReproError, match="duplicate_threshold"):
        prepare_glyphs(cfg(duplicate_threshold=2), tmp_path / "out")
    with pytest.raises(DmlReproError, match="val_fraction"):
        prepare_glyphs(cfg(val_fraction=1.0), tmp_path / "out")
    with pytest.raises(DmlReproError, match="kind"):
        prepare_dataset("glyphs", {"font_dirs": []}, tmp_path / "out")
    with pytest.raises(DmlReproError, match="unknown dataset kind 'nope'"):
        prepare_dataset("x", {"kind": "nope"}, tmp_path / "out")


def test_design_ids_are_stable_slugs():
    faces = [glyphs.Face(file="/a/Noto Sans.ttc", index=1, n_faces=3, sha256="1" * 64),
             glyphs.Face(file="/a/ipag.ttf", index=0, sha256="2" * 64),
             glyphs.Face(file="/b/ipag.ttf", index=0, sha256="3" * 64)]
    glyphs.assign_design_ids(faces)
    assert [f.design_id for f in faces] == ["noto-sans-1", "ipag-22222222", "ipag-33333333"]


def test_tiny_config_builds_a_dataset(tmp_path):
    c = tiny_glyphs_config()
    assert c["kind"] == "glyphs"
    info = prepare_dataset("glyphs", dict(c, workers=1), tmp_path / "tiny")
    assert info["counts"]["designs"] >= c["min_designs"]
    assert info["counts"]["classes"]["val"] >= 1


def test_font_package_list_is_the_one_source_of_truth():
    assert len(GLYPH_FONT_PACKAGES) == len(set(GLYPH_FONT_PACKAGES)) == 30
    assert "fonts-aoyagi-kouzan-t" not in GLYPH_FONT_PACKAGES  # has gaps (GUIDE)
    script = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "fetch_fonts.sh"
    text = script.read_text()
    assert "GLYPH_FONT_PACKAGES" in text
    assert "fonts-noto-cjk" not in text  # no second copy of the list
