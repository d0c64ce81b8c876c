"""The shapes a glyphs dataset takes: which characters are classes, which split each image is in.

By default a class is a character every kept design draws (CUB-shaped: one image per design);
``missing_designs: [lo, hi]`` makes the classes the characters that between ``lo`` and ``hi``
designs do not draw (Cars-shaped: classes of unequal size). The classes, in code point order, are
split class-disjointly by :func:`..splits.split_classes`: the first half (or all but the last
``test_classes``) is the training pool with a seeded ``val`` carved out, the rest is tested as
``test_split`` says: ``leave_one_out`` (CUB, Cars, SOP), ``query_gallery`` (In-Shop: designs at even
positions query the others) or ``vehicleid`` (three nested test lists).
"""
from __future__ import annotations

from typing import Sequence

from ...errors import DmlReproError
from ..manifest import VEHICLEID_TEST_SPLITS
from ..splits import TEST, split_classes
from .fonts import Face
from .settings import settings_error
from .views import image_name


def choose_classes(designs: Sequence[Face], missing_designs: Sequence[int],
                   max_classes: int | None) -> tuple[list[int], list[set]]:
    """The classes (code points, sorted; the first ``max_classes`` if set) and each design's drawn
    characters; sets each design's ``limits_classes``."""
    covered = [set(f.covered) for f in designs]
    counts: dict[int, int] = {}
    for s in covered:
        for cp in s:
            counts[cp] = counts.get(cp, 0) + 1
    n = len(designs)
    for f, s in zip(designs, covered):
        f.limits_classes = sum(1 for cp, c in counts.items() if c == n - 1 and cp not in s)
    lo, hi = missing_designs
    eligible = sorted(cp for cp, c in counts.items() if lo <= n - c <= hi)
    if len(eligible) < 2:
        raise DmlReproError(f"glyphs: only {len(eligible)} character(s) are missing from between {lo} and {hi} "
                            f"of the {n} designs; widen `missing_designs` or `characters`")
    classes = eligible[:max_classes] if max_classes else eligible
    return classes, covered


def manifest_rows(classes: Sequence[int], designs: Sequence[Face], covered: Sequence[set], cfg: dict) -> list[dict]:
    """The manifest rows: every (class, design that draws it, view), its split decided by the class
    (train pool / val / test, :func:`..splits.split_classes` with ``test_classes``) and, for test
    classes, by ``test_split``:

    * ``leave_one_out``: split ``test`` (CUB, Cars, SOP);
    * ``query_gallery``: split ``query`` for the designs at even positions of the kept order,
      ``gallery`` for the others (In-Shop: a class's images in some designs query its images in the
      other designs);
    * ``vehicleid``: three nested test lists, ``test_800`` (the first third of the test classes),
      ``test_1600`` (two thirds) and ``test_2400`` (all): 800 / 1,600 / 2,400 classes when
      ``test_classes`` is 2400, the same ratios otherwise; an image in several lists has a row in each.
    """
    try:
        split_of = split_classes(classes, cfg["val_fraction"], seed=cfg["seed"], n_test=cfg["test_classes"])
    except ValueError as exc:
        raise settings_error("test_classes", str(exc)) from None
    test = [cp for cp in classes if split_of[cp] == TEST]
    position = {cp: i for i, cp in enumerate(test)}
    bounds = [round(len(test) * k / 3) for k in (1, 2, 3)]
    rows = []
    for label, cp in enumerate(classes):
        for d, (f, drawn) in enumerate(zip(designs, covered)):
            if cp not in drawn:
                continue
            if split_of[cp] != TEST:
                splits = [split_of[cp]]
            elif cfg["test_split"] == "query_gallery":
                splits = ["query" if d % 2 == 0 else "gallery"]
            elif cfg["test_split"] == "vehicleid":
                splits = [name for name, bound in zip(VEHICLEID_TEST_SPLITS, bounds) if position[cp] < bound]
            else:
                splits = [TEST]
            for view in range(cfg["views_per_design"]):
                for split in splits:
                    rows.append({"path": f"images/{f.design_id}/{image_name(cp, view)}", "label": label,
                                 "class_name": f"U+{cp:04X}", "split": split})
    return rows
