"""The manifest: one CSV per prepared dataset, shared by every dataset kind.

``<dataset dir>/manifest.csv`` has one row per image and (at least) these columns::

    path,label,class_name,split

* ``path``: the image, relative to the dataset directory (or absolute, for external datasets
  such as CUB or SOP that stay where the user keeps them); see :func:`resolve_image_path`.
* ``label``: integer class id, ``0..C-1`` in class order (classes are numbered once over the
  whole dataset, so a label means the same class in every split).
* ``class_name``: a human-readable class name; one name per label and one label per name.
* ``split``: one of :data:`SPLITS`: ``train``, ``val`` and the evaluation sets -- ``test``
  (leave-one-out retrieval), or ``query`` and ``gallery`` (In-Shop: queries searched in the
  gallery), or ``test_800``, ``test_1600``, ``test_2400`` (VehicleID's three test lists, each
  evaluated leave-one-out on its own; an image in several lists has one row per list).

Extra columns are allowed (kept in :attr:`Manifest.extra`); rows are written in the order
given. Files are written atomically, so a killed job never leaves a half-written manifest.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..atomic import write_text
from ..errors import DmlReproError

MANIFEST_NAME = "manifest.csv"
COLUMNS = ("path", "label", "class_name", "split")
VEHICLEID_TEST_SPLITS = ("test_800", "test_1600", "test_2400")
SPLITS = ("train", "val", "test", "query", "gallery", *VEHICLEID_TEST_SPLITS)
#: Splits whose classes must not meet: training, validation (selection) and evaluation. Query and
#: gallery share their classes by design (In-Shop), and VehicleID's test lists may share theirs,
#: so the evaluation splits form one group.
CLASS_DISJOINT_GROUPS = {"train": "train", "val": "val",
                         **{s: "evaluation" for s in SPLITS if s not in ("train", "val")}}


def resolve_image_path(dataset_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The file a manifest ``path`` refers to: absolute paths as they are, others under ``dataset_dir``."""
    p = Path(path)
    return p if p.is_absolute() else Path(dataset_dir) / p


@dataclass(frozen=True)
class Manifest:
    """A validated manifest held as parallel columns (row ``i`` is ``paths[i]``, ``labels[i]`` ...)."""

    file: Path                      # the manifest.csv it was read from
    paths: list[str]
    labels: np.ndarray              # int64, shape (N,)
    class_names: list[str]          # per row
    splits: list[str]               # per row
    extra: dict[str, list[str]] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """The dataset directory (the manifest's folder); relative paths are resolved against it."""
        return self.file.parent

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def label_names(self) -> list[str]:
        """Class name of each label, indexed by label."""
        names = [""] * self.num_classes
        for label, name in zip(self.labels.tolist(), self.class_names):
            names[label] = name
        return names

    def split_names(self) -> list[str]:
        """Splits present, in :data:`SPLITS` order."""
        present = set(self.splits)
        return [s for s in SPLITS if s in present]

    def indices(self, split: str) -> np.ndarray:
        """Row indices of one split (in file order)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return np.flatnonzero(np.asarray(self.splits, dtype=object) == split)

    def image_path(self, i: int) -> Path:
        return resolve_image_path(self.root, self.paths[i])

    def image_paths(self, indices: Iterable[int] | None = None) -> list[Path]:
        idx = range(len(self)) if indices is None else indices
        return [resolve_image_path(self.root, self.paths[i]) for i in idx]

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for i in range(len(self)):
            row: dict[str, Any] = {
                "path": self.paths[i],
                "label": int(self.labels[i]),
                "class_name": self.class_names[i],
                "split": self.splits[i],
            }
            for k, v in self.extra.items():
                row[k] = v[i]
            out.append(row)
        return out


def manifest_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """The CSV text for ``rows`` (dicts with at least :data:`COLUMNS`; extra keys become columns)."""
    rows = list(rows)
    extra: list[str] = []
    for row in rows:
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"manifest row {row!r} lacks column(s) {', '.join(missing)}")
        for k in row:
            if k not in COLUMNS and k not in extra:
                extra.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, *extra], lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buf.getvalue()


def write_manifest(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` (dicts, or a :class:`Manifest`'s ``rows()``) to ``path`` atomically."""
    write_text(path, manifest_text(rows))


def _fix_hint(dataset: str) -> str:
    return f"run `dmlrepro prepare --dataset {dataset}` to (re)build it"


def _check_class_disjoint(file, labels, names, splits, dataset) -> None:
    """Zero-shot protocol: a class belongs to one of train, val and the evaluation sets. A class in
    two of them would let selection or training see test classes, so the manifest is refused."""
    group_of: dict[int, str] = {}
    for label, name, split in zip(labels, names, splits):
        group = CLASS_DISJOINT_GROUPS[split]
        first = group_of.setdefault(label, group)
        if first != group:
            raise DmlReproError(
                f"{file}: class {name!r} (label {label}) appears in both the {first} and the {group} "
                f"splits; train, val and the evaluation splits must have disjoint classes; "
                f"{_fix_hint(dataset)}"
            )


def read_manifest(
    path: str | os.PathLike, dataset: str | None = None, check_files: bool = False
) -> Manifest:
    """Read and validate a manifest; ``path`` is the CSV or its dataset directory.

    Raises :class:`DmlReproError` naming the file (and line) on a missing file, a missing column,
    a bad row (empty path, non-integer or negative label, unknown split, a label with two names or a
    name with two labels), labels that are not ``0..C-1`` and, with ``check_files``, missing images.
    ``dataset`` only goes into the messages (default: the dataset directory's name).
    """
    file = Path(path)
    if file.is_dir() or file.suffix != ".csv":
        file = file / MANIFEST_NAME
    name = dataset or file.parent.name or "NAME"
    if not file.is_file():
        raise DmlReproError(f"dataset manifest {file} not found; {_fix_hint(name)}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DmlReproError(f"cannot read dataset manifest {file}: {e}; {_fix_hint(name)}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DmlReproError(
            f"{file}: header {','.join(header) or '(empty file)'} lacks column(s) {', '.join(missing)} "
            f"(expected {','.join(COLUMNS)}); {_fix_hint(name)}"
        )
    extra_cols = [c for c in header if c not in COLUMNS]
    paths: list[str] = []
    labels: list[int] = []
    names: list[str] = []
    splits: list[str] = []
    extra: dict[str, list[str]] = {c: [] for c in extra_cols}
    name_of: dict[int, str] = {}
    label_of: dict[str, int] = {}

    def bad(line: int, why: str) -> DmlReproError:
        return DmlReproError(f"{file}, line {line}: {why}; {_fix_hint(name)}")

    for row in reader:
        line = reader.line_num
        if None in row or any(row.get(c) is None for c in COLUMNS):
            raise bad(line, f"expected {len(header)} fields")
        p, lab, cname, split = (row[c] for c in COLUMNS)
        if not p:
            raise bad(line, "empty path")
        try:
            label = int(lab)
        except ValueError:
            raise bad(line, f"label {lab!r} is not an integer") from None
        if label < 0:
            raise bad(line, f"label {label} is negative")
        if not cname:
            raise bad(line, "empty class_name")
        if split not in SPLITS:
            raise bad(line, f"split {split!r} is not one of {', '.join(SPLITS)}")
        if name_of.setdefault(label, cname) != cname:
            raise bad(line, f"label {label} is class {name_of[label]!r} above but {cname!r} here")
        if label_of.setdefault(cname, label) != label:
            raise bad(line, f"class {cname!r} has label {label_of[cname]} above but {label} here")
        paths.append(p)
        labels.append(label)
        names.append(cname)
        splits.append(split)
        for c in extra_cols:
            extra[c].append(row[c])
    if not paths:
        raise DmlReproError(f"dataset manifest {file} has no rows; {_fix_hint(name)}")
    n_classes = max(name_of) + 1
    if len(name_of) != n_classes:
        absent = sorted(set(range(n_classes)) - set(name_of))
        raise DmlReproError(
            f"{file}: labels must be 0..C-1 with every class present, but {len(absent)} label(s) "
            f"are missing (first: {absent[:5]}); {_fix_hint(name)}"
        )
    _check_class_disjoint(file, labels, names, splits, name)
    manifest = Manifest(
        file=file,
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=names,
        splits=splits,
        extra=extra,
    )
    if check_files:
        for i, p in enumerate(manifest.image_paths()):
            if not p.is_file():
                raise DmlReproError(
                    f"{file}, line {i + 2}: image {p} does not exist; {_fix_hint(name)}"
                )
    return manifest
