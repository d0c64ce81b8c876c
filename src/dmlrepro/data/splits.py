"""Class splits for zero-shot (class-disjoint) retrieval benchmarks.

The deep metric learning protocol (CUB-200-2011, Cars196): the first half of the classes, in
their canonical order, trains; the second half tests, so no test class is ever seen in training.
Model selection needs a validation split that is class-disjoint from both, carved out of the
training classes (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020).

Rule used by :func:`split_classes`:

* ``n_train = n // 2`` classes (the first ones in the given order) form the training pool; the
  remaining ``n - n // 2`` are ``test``.
* ``round(val_fraction * n_train)`` classes of the training pool (at least one when
  ``val_fraction > 0``, and never the whole pool) become ``val``: those with the smallest
  ``sha256(f"{seed}:{class}")``, a seeded choice that depends on nothing but the class ids and the
  seed. Scattered rather than a contiguous block, because class order carries structure (CJK code
  points follow the radicals): docs/datasets/glyphs.md, "Class splits".
"""
from __future__ import annotations

import hashlib
from typing import Hashable, Sequence

TRAIN, VAL, TEST = "train", "val", "test"


def _key(seed: int, cls: Hashable) -> bytes:
    return hashlib.sha256(f"{seed}:{cls}".encode("utf-8")).digest()


def carve_validation(train_classes: Sequence[Hashable], val_fraction: float, seed: int = 0) -> set:
    """The validation classes carved out of a training pool (see the module doc for the rule).

    Used by :func:`split_classes` and by the official datasets, whose release fixes the
    train/test partition. Raises ``ValueError`` on duplicate ids (also as strings), an empty pool
    or ``val_fraction`` outside ``[0, 1)``.
    """
    pool = list(train_classes)
    if not pool:
        raise ValueError("the training pool is empty")
    if len(set(map(str, pool))) != len(pool):
        raise ValueError("class ids must be unique as strings (they seed the validation choice)")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * len(pool)))
    if val_fraction > 0:
        n_val = max(1, n_val)
    n_val = min(n_val, len(pool) - 1)  # keep at least one training class
    return set(sorted(pool, key=lambda c: _key(seed, c))[:n_val]) if n_val > 0 else set()


def split_classes(
    class_ids: Sequence[Hashable], val_fraction: float, seed: int = 0, n_test: int | None = None
) -> dict[Hashable, str]:
    """Map each class (in canonical order) to ``"train"``, ``"val"`` or ``"test"`` (see module doc).

    ``n_test``: the number of test classes (the last ones; VehicleID-shaped sets test on fewer
    classes than they train on); default ``n - n // 2``. Returns a dict in the input order. Raises
    ``ValueError`` on fewer than two classes, duplicate class ids, ``n_test`` leaving no training
    class or ``val_fraction`` outside ``[0, 1)``.
    """
    classes = list(class_ids)
    if len(set(classes)) != len(classes):
        raise ValueError("class ids must be unique")
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes for a train/test split, got {len(classes)}")
    if n_test is not None and not 1 <= n_test < len(classes):
        raise ValueError(f"n_test must leave at least one training class: {n_test} of {len(classes)} classes")
    n_train = len(classes) // 2 if n_test is None else len(classes) - n_test
    val = carve_validation(classes[:n_train], val_fraction, seed)
    out: dict[Hashable, str] = {}
    for i, c in enumerate(classes):
        out[c] = (VAL if c in val else TRAIN) if i < n_train else TEST
    return out
