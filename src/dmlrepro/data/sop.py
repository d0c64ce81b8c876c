"""Stanford Online Products (Oh Song et al., CVPR 2016) in its official layout, as the ``sop`` kind.

``root`` is ``Stanford_Online_Products/``: ``Ebay_train.txt`` and ``Ebay_test.txt``, each with the
header ``image_id class_id super_class_id path`` and one row per image, e.g.
``1 1 1 bicycle_final/111085122871_0.JPG`` (path relative to root). The training file's 11,318
classes (59,551 images) are the training pool, the test file's 11,316 classes (60,502 images)
are evaluated leave-one-out. The manifest keeps ``super_class`` (the id) and
``super_class_name`` (the path's top folder, e.g. ``bicycle_final``) as extra columns.
"""
from __future__ import annotations

from pathlib import Path

from .official import Parsed, Record, Release, bad_line, parse_int, read_lines, register

HEADER = ["image_id", "class_id", "super_class_id", "path"]
FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}

RELEASE = Release(
    kind="sop",
    title="Stanford Online Products",
    url="https://cvgl.stanford.edu/projects/lifted_struct/",
    protocol="leave_one_out",
    splits=("train", "val", "test"),
    ks=(1, 10, 100, 1000),
    counts={"total": {"images": 120053, "classes": 22634},
            "train": {"images": 59551, "classes": 11318},
            "test": {"images": 60502, "classes": 11316}},
    metadata=tuple(FILES.values()),
    layout="Ebay_train.txt, Ebay_test.txt and the <super class>_final/ image folders",
)


def parse(data_root: Path) -> Parsed:
    records = []
    expected = "`<image_id> <class_id> <super_class_id> <path>`"
    for split, name in FILES.items():
        file = data_root / name
        lines = read_lines(file)
        n, header = next(lines, (1, ""))
        if header.split() != HEADER:
            raise bad_line(file, n, f"the header `{' '.join(HEADER)}`", header)
        for n, line in lines:
            parts = line.split()
            if len(parts) != 4:
                raise bad_line(file, n, expected, line)
            cid = parse_int(file, n, parts[1], expected, line)
            sid = parse_int(file, n, parts[2], expected, line)
            path = parts[3]
            records.append(Record(path, cid, str(cid), split, f"{file}, line {n}",
                                  {"super_class": sid, "super_class_name": path.split("/", 1)[0]}))
    return Parsed(records)


prepare_sop = register(RELEASE, parse)
