"""PKU VehicleID (Liu et al., "Deep Relative Distance Learning", CVPR 2016) as the ``vehicleid`` kind.

``root`` is ``VehicleID_V1.0/``: ``train_test_split/train_list.txt``, ``test_list_800.txt``,
``test_list_1600.txt`` and ``test_list_2400.txt`` (one line per image: ``<image name without
.jpg> <vehicle id>``) and ``image/<name>.jpg``. The vehicles of ``train_list.txt`` are the training
pool (``train``/``val``); each test list becomes its own manifest split ``test_800``,
``test_1600``, ``test_2400``. An image listed in several test lists (the lists may overlap) gets
one row per list; the lists may share vehicles, never with the training pool.

Evaluation (implemented by the pipeline's evaluation code, not here): each test list is evaluated
on its own by leave-one-out retrieval over its images -- every image queries the other images of
the same list -- and Recall@1,5 is reported per list, as in Roth et al.'s MIC code (ICCV 2019,
github.com/Confusezius/ICCV2019_MIC, ``evaluate.py``: ``evaluate_multiple_datasets`` runs the
one-dataset evaluation on each of the three test sets). The VehicleID paper's own protocol
differs: there, one randomly chosen image per vehicle forms the gallery and the remaining images
are the queries (repeated over random draws), as re-identification code still does.

Counts: the registered release counts are the paper's (train 110,178 images of 13,134 vehicles;
test lists 800 / 1,600 / 2,400 vehicles with 7,332 / 12,995 / 20,038 images). The release's README
says its split files were revised after the paper (vehicles with fake plates relabelled); the
revised ``train_list.txt`` is reported elsewhere with 113,346 images of 13,164 vehicles and
``test_list_2400.txt`` with 19,777 images, so a complete copy is reported as differing from the
counts above rather than matching them.
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
