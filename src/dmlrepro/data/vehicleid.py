"""PKU VehicleID (Liu et al., "Deep Relative Distance Learning", CVPR 2016) as the ``vehicleid`` kind.

``root`` is ``VehicleID_V1.0/``: ``train_test_split/train_list.txt``, ``test_list_800.txt``,
``test_list_1600.txt`` and ``test_list_2400.txt`` (one line per image: ``<image name without
.jpg> <vehicle id>``) and ``image/<name>.jpg``. The vehicles of ``train_list.txt`` are the training
pool (``train``/``val``); each test list becomes its own manifest split ``test_800``,
``test_1600``, ``test_2400``. An image listed in several test lists (the lists may overlap) gets
one row per list; the lists may share vehicles, never with the training pool.

Each test list is evaluated on its own, leave-one-out over its images, with Recall@1,5 (as Roth et
al.'s MIC code does; the paper's own protocol draws one gallery image per vehicle). The registered
counts are the paper's; the release's revised split files differ from them, so a complete copy is
reported as differing. Both notes in full: docs/datasets/official.md.
"""
from __future__ import annotations

from pathlib import Path

from .official import Parsed, Record, Release, bad_line, read_lines, register

LISTS = {
    "train": "train_test_split/train_list.txt",
    "test_800": "train_test_split/test_list_800.txt",
    "test_1600": "train_test_split/test_list_1600.txt",
    "test_2400": "train_test_split/test_list_2400.txt",
}

RELEASE = Release(
    kind="vehicleid",
    title="PKU VehicleID",
    url="https://www.pkuml.org/resources/pku-vehicleid.html",
    protocol="leave_one_out_per_test_list",
    splits=("train", "val", "test_800", "test_1600", "test_2400"),
    ks=(1, 5),
    counts={"train": {"images": 110178, "classes": 13134},
            "test_800": {"images": 7332, "classes": 800},
            "test_1600": {"images": 12995, "classes": 1600},
            "test_2400": {"images": 20038, "classes": 2400}},
    metadata=tuple(LISTS.values()),
    layout="train_test_split/ (train_list.txt, test_list_800.txt, test_list_1600.txt, test_list_2400.txt) and image/",
)


def parse(data_root: Path) -> Parsed:
    records = []
    for split, rel in LISTS.items():
        file = data_root / rel
        for n, line in read_lines(file):
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise bad_line(file, n, "`<image name> <vehicle id>`", line)
            vid = int(parts[1])
            records.append(Record(f"image/{parts[0]}.jpg", vid, str(vid), split, f"{file}, line {n}"))
    return Parsed(records)


prepare_vehicleid = register(RELEASE, parse)
