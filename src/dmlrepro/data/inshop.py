"""DeepFashion In-Shop Clothes Retrieval (Liu et al., CVPR 2016) in its official layout (``inshop``).

``root`` holds ``Eval/list_eval_partition.txt`` and ``img/``. The partition file's first line is
the number of images, the second the header ``image_name item_id evaluation_status``, then one
whitespace-padded row per image::

    img/WOMEN/Dresses/id_00000002/02_1_front.jpg      id_00000002    train

(paths relative to root). ``train`` rows (3,997 items, 25,882 images) are the training pool;
``query`` (14,218) and ``gallery`` (12,612) rows keep their split and share their 3,985 items:
each query image searches the gallery (Recall@1,10,20,30,40,50).
"""
from __future__ import annotations

from pathlib import Path

from .official import Parsed, Record, Release, bad_line, parse_int, read_lines, register

PARTITION = "Eval/list_eval_partition.txt"
HEADER = ["image_name", "item_id", "evaluation_status"]
STATUS = ("train", "query", "gallery")

RELEASE = Release(
    kind="inshop",
    title="DeepFashion In-Shop Clothes Retrieval",
    url="http://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
    protocol="query_gallery",
    splits=("train", "val", "query", "gallery"),
    ks=(1, 10, 20, 30, 40, 50),
    counts={"total": {"images": 52712, "classes": 7982},
            "train": {"images": 25882, "classes": 3997},
            "query": {"images": 14218, "classes": 3985},
            "gallery": {"images": 12612, "classes": 3985}},
    metadata=(PARTITION,),
    layout="Eval/list_eval_partition.txt and img/",
)


def parse(data_root: Path) -> Parsed:
    file = data_root / PARTITION
    lines = read_lines(file)
    n, first = next(lines, (1, ""))
    declared = parse_int(file, n, first.strip(), "the number of images", first)
    n, header = next(lines, (n + 1, ""))
    if header.split() != HEADER:
        raise bad_line(file, n, f"the header `{' '.join(HEADER)}`", header)
    expected = "`<image_name> <item_id> <evaluation_status: train|query|gallery>`"
    records = []
    for n, line in lines:
        parts = line.split()
        if len(parts) != 3 or parts[2] not in STATUS:
            raise bad_line(file, n, expected, line)
        path, item, status = parts
        records.append(Record(path, item, item, status, f"{file}, line {n}"))
    warnings = []
    if declared != len(records):
        warnings.append(f"warning: inshop: {file} says {declared:,} images on line 1 but lists {len(records):,}")
    return Parsed(records, warnings=warnings)


prepare_inshop = register(RELEASE, parse)
