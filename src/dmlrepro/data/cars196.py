"""Cars196 (Stanford Cars, Krause et al., 2013) in its official layout, as the ``cars196`` kind.

``root`` holds ``cars_annos.mat`` and ``car_ims/``. The .mat file (MATLAB 5, read with
``scipy.io.loadmat``) has a struct array ``annotations`` with the fields ``relative_im_path``
(``car_ims/000001.jpg``), ``bbox_x1 bbox_y1 bbox_x2 bbox_y2``, ``class`` (1..196) and ``test``,
and a cell array ``class_names`` (``class_names[k - 1]`` names class ``k``).

Deep-metric-learning split: classes 1-98 are the training pool (8,054 images), 99-196 the test set
(8,131 images), evaluated leave-one-out; the release's ``test`` flag (a per-image split for
classification) is ignored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DmlReproError
from .official import Parsed, Record, Release, register

TRAIN_CLASSES = 98  # class ids 1..98 train, 99..196 test
FIELDS = ("relative_im_path", "class")

RELEASE = Release(
    kind="cars196",
    title="Cars196 (Stanford Cars)",
    url="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
    protocol="leave_one_out",
    splits=("train", "val", "test"),
    ks=(1, 2, 4, 8),
    counts={"total": {"images": 16185, "classes": 196},
            "train": {"images": 8054, "classes": 98},
            "test": {"images": 8131, "classes": 98}},
    metadata=("cars_annos.mat",),
    layout="cars_annos.mat and car_ims/",
)


def _scalar(value) -> object:
    a = np.asarray(value)
    while a.dtype == object and a.size == 1:
        a = np.asarray(a.reshape(-1)[0])
    if a.size != 1:
        raise ValueError(f"expected one value, got {a.size}")
    return a.reshape(-1)[0].item() if a.dtype != object else a.reshape(-1)[0]


def parse(data_root: Path) -> Parsed:
    import scipy.io

    file = data_root / "cars_annos.mat"
    try:
        mat = scipy.io.loadmat(str(file), squeeze_me=True)
    except Exception as e:  # noqa: BLE001 -- scipy raises ValueError, TypeError, OSError ...
        raise DmlReproError(f"cannot read {file} as a MATLAB file: {e}; re-download it from {RELEASE.url}") from None
    ann = mat.get("annotations")
    fields = getattr(getattr(ann, "dtype", None), "names", None) or ()
    if ann is None or any(f not in fields for f in FIELDS) or "class_names" not in mat:
        raise DmlReproError(
            f"{file}: expected a struct array `annotations` with the fields {', '.join(FIELDS)} and a cell array "
            f"`class_names` (the official cars_annos.mat); found variables "
            f"{', '.join(k for k in mat if not k.startswith('__'))}" + (f", annotation fields {', '.join(fields)}" if fields else ""))
    ann = np.atleast_1d(ann)
    try:
        names = {i + 1: str(_scalar(n)).strip() for i, n in enumerate(np.atleast_1d(mat["class_names"]))}
    except ValueError as e:
        raise DmlReproError(f"{file}: `class_names` is not a list of strings ({e})") from None
    records = []
    for i, a in enumerate(ann, 1):
        try:
            rel, cid = _scalar(a["relative_im_path"]), _scalar(a["class"])
            if not isinstance(rel, str) or not rel or float(cid) != int(cid):
                raise ValueError(f"relative_im_path {rel!r}, class {cid!r}")
            cid = int(cid)
        except (ValueError, TypeError) as e:
            raise DmlReproError(f"{file}, annotation {i}: expected a relative_im_path string and an integer "
                                f"class ({e}); the file does not follow the official format") from None
        if cid not in names:
            raise DmlReproError(f"{file}, annotation {i}: class {cid} has no entry in class_names "
                                f"({len(names)} classes)")
        records.append(Record(rel, cid, names[cid], "train" if cid <= TRAIN_CLASSES else "test",
                              f"{file}, annotation {i}"))
    return Parsed(records, declared=names, declared_in=f"{file} (class_names)")


prepare_cars196 = register(RELEASE, parse)
