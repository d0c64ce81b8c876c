from pathlib import Path

import numpy as np
import pytest

from dmlrepro.data.manifest import (
    COLUMNS,
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    resolve_image_path,
    write_manifest,
)
from dmlrepro.errors import DmlReproError

ROWS = [
    {"path": "images/a/0041.png", "label": 0, "class_name": "U+0041", "split": "train"},
    {"path": "images/b/0041.png", "label": 0, "class_name": "U+0041", "split": "train"},
    {"path": "images/a/0042.png", "label": 1, "class_name": "U+0042", "split": "val"},
    {"path": "images/a/0043.png", "label": 2, "class_name": "U+0043", "split": "test"},
    {"path": "/abs/elsewhere/x.jpg", "label": 3, "class_name": "Black footed Albatross", "split": "test"},
]


def _write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_roundtrip(tmp_path):
    file = tmp_path / "glyphs" / MANIFEST_NAME
    write_manifest(file, ROWS)
    m = read_manifest(file)
    assert isinstance(m, Manifest)
    assert m.rows() == ROWS
    assert len(m) == 5 and m.num_classes == 4
    assert m.labels.dtype == np.int64
    assert m.root == tmp_path / "glyphs"
    assert m.label_names() == ["U+0041", "U+0042", "U+0043", "Black footed Albatross"]
    assert m.split_names() == ["train", "val", "test"]
    assert m.indices("train").tolist() == [0, 1]
    assert m.indices("test").tolist() == [3, 4]
    assert m.indices("query").tolist() == []
    assert m.image_path(0) == tmp_path / "glyphs" / "images/a/0041.png"
    assert m.image_path(4) == Path("/abs/elsewhere/x.jpg")
    # a directory works as well as the file
    assert read_manifest(tmp_path / "glyphs").rows() == ROWS


def test_written_text_is_plain_csv_with_the_documented_header(tmp_path):
    file = tmp_path / MANIFEST_NAME
    write_manifest(file, ROWS[:2])
    text = file.read_bytes().decode("utf-8")
    assert text.splitlines()[0] == ",".join(COLUMNS) == "path,label,class_name,split"
    assert "\r" not in text
    assert text.splitlines()[1] == "images/a/0041.png,0,U+0041,train"


def test_write_is_atomic_and_replaces(tmp_path):
    file = tmp_path / MANIFEST_NAME
    write_manifest(file, ROWS)
    write_manifest(file, ROWS[:1])
    assert read_manifest(file).rows() == ROWS[:1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]  # no temp files left
    with pytest.raises(ValueError, match="lacks column"):
        write_manifest(file, [{"path": "x.png", "label": 0, "split": "train"}])
    assert read_manifest(file).rows() == ROWS[:1]  # a failed write leaves the old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]


def test_extra_columns_are_kept(tmp_path):
    rows = [dict(r, design="a") for r in ROWS[:3]]
    write_manifest(tmp_path / MANIFEST_NAME, rows)
    m = read_manifest(tmp_path)
    assert m.extra == {"design": ["a", "a", "a"]}
    assert m.rows() == rows


def test_resolve_image_path(tmp_path):
    assert resolve_image_path(tmp_path, "images/x.png") == tmp_path / "images" / "x.png"
    assert resolve_image_path(tmp_path, "/data/CUB/x.jpg") == Path("/data/CUB/x.jpg")
    assert resolve_image_path(str(tmp_path), Path("a.png")) == tmp_path / "a.png"


def test_missing_manifest_says_how_to_build_it(tmp_path):
    with pytest.raises(DmlReproError) as e:
        read_manifest(tmp_path / "glyphs" / MANIFEST_NAME)
    msg = str(e.value)
    assert str(tmp_path / "glyphs" / MANIFEST_NAME) in msg
    assert "dmlrepro prepare --dataset glyphs" in msg
    with pytest.raises(DmlReproError, match="--dataset cub"):
        read_manifest(tmp_path / "x", dataset="cub")


HEADER = "path,label,class_name,split\n"


@pytest.mark.parametrize(
    "body, pattern",
    [
        ("a.png,0,A,train\nb.png,x,B,test\n", r"line 3: label 'x' is not an integer"),
        ("a.png,0,A,train\nb.png,-1,B,test\n", r"line 3: label -1 is negative"),
        ("a.png,0,A,train\nb.png,1,B,dev\n", r"line 3: split 'dev' is not one of"),
        (",0,A,train\n", r"line 2: empty path"),
        ("a.png,0,,train\n", r"line 2: empty class_name"),
        ("a.png,0,A,train\nb.png,0,B,test\n", r"line 3: label 0 is class 'A' above but 'B' here"),
        ("a.png,0,A,train\nb.png,1,A,test\n", r"line 3: class 'A' has label 0 above but 1 here"),
        ("a.png,0,A,train\nb.png,1,B\n", r"line 3: expected 4 fields"),
        ("a.png,0,A,train,extra\n", r"line 2: expected 4 fields"),
        ("a.png,0,A,train\nb.png,2,C,test\n", r"labels must be 0..C-1"),
        ("", r"has no rows"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, body, pattern):
    file = _write_csv(tmp_path / "glyphs" / MANIFEST_NAME, HEADER + body)
    with pytest.raises(DmlReproError, match=pattern) as e:
        read_manifest(file)
    assert str(file) in str(e.value)
    assert "dmlrepro prepare --dataset glyphs" in str(e.value)


def test_bad_header(tmp_path):
    file = _write_csv(tmp_path / "d" / MANIFEST_NAME, "path,label,split\na.png,0,train\n")
    with pytest.raises(DmlReproError, match="lacks column.*class_name"):
        read_manifest(file)
    file = _write_csv(tmp_path / "e" / MANIFEST_NAME, "")
    with pytest.raises(DmlReproError, match="empty file"):
        read_manifest(file)


def test_check_files(tmp_path):
    write_manifest(tmp_path / MANIFEST_NAME, ROWS[:1])
    read_manifest(tmp_path)  # files are not checked by default
    with pytest.raises(DmlReproError, match="line 2: image .*0041.png does not exist"):
        read_manifest(tmp_path, check_files=True)
    img = tmp_path / "images" / "a" / "0041.png"
    img.parent.mkdir(parents=True)
    img.write_bytes(b"")
    assert len(read_manifest(tmp_path, check_files=True)) == 1


def test_query_gallery_splits_are_accepted(tmp_path):
    rows = [
        {"path": "q.jpg", "label": 0, "class_name": "id0", "split": "query"},
        {"path": "g.jpg", "label": 0, "class_name": "id0", "split": "gallery"},
        {"path": "t.jpg", "label": 1, "class_name": "id1", "split": "train"},
    ]
    write_manifest(tmp_path / MANIFEST_NAME, rows)
    m = read_manifest(tmp_path)
    assert m.split_names() == ["train", "query", "gallery"]
    assert m.indices("gallery").tolist() == [1]
    with pytest.raises(ValueError, match="unknown split"):
        m.indices("dev")


@pytest.mark.parametrize("first,second,groups", [("train", "test", "train and the evaluation"),
                                                 ("val", "train", "val and the train"),
                                                 ("val", "query", "val and the evaluation")])
def test_a_class_in_two_protocol_splits_is_refused(tmp_path, first, second, groups):
    rows = [{"path": "a.png", "label": 0, "class_name": "A", "split": first},
            {"path": "b.png", "label": 0, "class_name": "A", "split": second},
            {"path": "c.png", "label": 1, "class_name": "C", "split": "train"}]
    write_manifest(tmp_path / "manifest.csv", rows)
    with pytest.raises(DmlReproError, match=f"class 'A' \\(label 0\\) appears in both the {groups} splits"):
        read_manifest(tmp_path)


def test_query_and_gallery_share_classes(tmp_path):
    rows = [{"path": "q.png", "label": 0, "class_name": "A", "split": "query"},
            {"path": "g.png", "label": 0, "class_name": "A", "split": "gallery"},
            {"path": "t.png", "label": 1, "class_name": "B", "split": "train"}]
    write_manifest(tmp_path / "manifest.csv", rows)
    assert read_manifest(tmp_path).split_names() == ["train", "query", "gallery"]
