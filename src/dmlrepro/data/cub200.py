"""CUB-200-2011 (Wah et al., 2011) in its official layout, as the ``cub200`` dataset kind.

``root`` is the folder that holds ``CUB_200_2011/`` or that folder itself::

    CUB_200_2011/images.txt               <image_id> <path under images/>
    CUB_200_2011/image_class_labels.txt   <image_id> <class_id>
    CUB_200_2011/classes.txt              <class_id> <name>      e.g. 1 001.Black_footed_Albatross
    CUB_200_2011/images/...

Deep-metric-learning split: classes 1-100 are the training pool (5,864 images), 101-200 the test
set (5,924 images), evaluated leave-one-out; the release's own train/test flag
(``train_test_split.txt``) is not used.
"""
from __future__ import annotations

from pathlib import Path

from .official import Parsed, Record, Release, bad_line, parse_int, read_lines, register

TRAIN_CLASSES = 100  # class ids 1..100 train, 101..200 test

RELEASE = Release(
    kind="cub200",
    title="CUB-200-2011",
    url="https://www.vision.caltech.edu/datasets/cub_200_2011/",
    protocol="leave_one_out",
    splits=("train", "val", "test"),
    ks=(1, 2, 4, 8),
    counts={"total": {"images": 11788, "classes": 200},
            "train": {"images": 5864, "classes": 100},
            "test": {"images": 5924, "classes": 100}},
    metadata=("images.txt", "image_class_labels.txt", "classes.txt"),
    layout="CUB_200_2011/ (images.txt, image_class_labels.txt, classes.txt, images/)",
    candidates=lambda root: [root / "CUB_200_2011", root],
)


def _pairs(file: Path, expected: str, int_second: bool):
    """``(line, first id, second field, text)`` of a two-column CUB file."""
    for n, line in read_lines(file):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise bad_line(file, n, expected, line)
        second = parts[1].strip()
        yield n, parse_int(file, n, parts[0], expected, line), (
            parse_int(file, n, second, expected, line) if int_second else second), line


def parse(data_root: Path) -> Parsed:
    classes_txt = data_root / "classes.txt"
    images_txt = data_root / "images.txt"
    labels_txt = data_root / "image_class_labels.txt"
    names: dict[int, str] = {}
    for n, cid, name, line in _pairs(classes_txt, "`<class_id> <class_name>`", False):
        if cid in names:
            raise bad_line(classes_txt, n, f"a new class id (class {cid} is listed above)", line)
        names[cid] = name
    label_of: dict[int, tuple[int, int]] = {}
    for n, image_id, cid, line in _pairs(labels_txt, "`<image_id> <class_id>`", True):
        if cid not in names:
            raise bad_line(labels_txt, n, f"a class id listed in {classes_txt.name}", line)
        label_of[image_id] = (cid, n)
    records = []
    for n, image_id, rel, line in _pairs(images_txt, "`<image_id> <relative image path>`", False):
        if image_id not in label_of:
            raise bad_line(images_txt, n, f"an image id that {labels_txt.name} labels", line)
        cid, _ = label_of[image_id]
        records.append(Record(f"images/{rel}", cid, names[cid], "train" if cid <= TRAIN_CLASSES else "test",
                              f"{images_txt}, line {n}"))
    return Parsed(records, declared=names, declared_in=str(classes_txt))


prepare_cub200 = register(RELEASE, parse)
