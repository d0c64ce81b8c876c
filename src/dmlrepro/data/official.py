"""What the official benchmark releases share: settings, root and metadata checks, the image check,
the count check and the prepare skeleton that writes ``manifest.csv`` and ``info.json``.

Each kind (:mod:`.cub200`, :mod:`.cars196`, :mod:`.sop`, :mod:`.inshop`, :mod:`.vehicleid`) is a
:class:`Release` (what the publication says) and a ``parse(data_root)`` function that reads the
official metadata into :class:`Record` s: ``(path relative to the data root, official class id,
class name, official split, extra columns)``; the official split is ``train`` for the training
pool. :func:`register` turns the pair into a registered dataset kind whose ``prepare``
(:func:`prepare_release`) checks the settings and finds the data root and its metadata files,
parses and checks the metadata (classes disjoint between pool and evaluation), decodes every
listed image in a process pool (:mod:`.parallel`), numbers the classes in canonical order and
carves a class-disjoint ``val`` split out of the training pool, compares the counts with the full
release, and writes ``manifest.csv`` (absolute paths) and ``info.json`` atomically. Each check,
and what it says when it fails: docs/datasets/official.md.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Sequence

from ..atomic import atomic_path, write_json
from ..errors import DmlReproError
from ..hashing import sha256_file
from . import DATASETS
from .manifest import MANIFEST_NAME, SPLITS, write_manifest
from .parallel import ordered_map, process_pool, progress_bar
from .splits import carve_validation

#: The settings every official kind takes (a fragment of params.schema.json).
SETTINGS_SCHEMA: dict = {
    "root": {"type": ["string", "null"], "minLength": 1},  # null: not available (tables use the stand-in)
    "val_fraction": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
    "seed": {"type": "integer", "minimum": 0},
    "skip_unreadable": {"type": "boolean"},
    "ks": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "uniqueItems": True},
    "workers": {"type": ["integer", "null"], "minimum": 1},
}
DEFAULTS: dict[str, Any] = {"root": None, "val_fraction": 0.2, "seed": 0, "skip_unreadable": False,
                            "ks": None, "workers": None}
SHOW_SKIPPED = 10  # paths of skipped images printed and recorded


@dataclass(frozen=True)
class Release:
    """What the publication says about one benchmark."""

    kind: str
    title: str
    url: str
    protocol: str                   # leave_one_out | query_gallery | leave_one_out_per_test_list
    splits: tuple[str, ...]         # manifest splits written
    ks: tuple[int, ...]             # Recall@K of the papers
    counts: dict                    # full release: {official split or "total": {"images", "classes"}}
    metadata: tuple[str, ...]       # metadata files, relative to the data root
    layout: str                     # what the data root holds (for messages)
    # candidate data roots for the configured root (CUB: root/CUB_200_2011 or root itself)
    candidates: Callable[[Path], list[Path]] = field(default=lambda root: [root])


@dataclass(slots=True)
class Record:
    path: str               # relative to the data root
    class_id: Hashable      # official id: canonical order and the validation choice
    class_name: str
    split: str              # official split: "train" (pool) or an evaluation split of SPLITS
    source: str             # "file, line N": where it was listed (messages)
    extra: dict | None = None


@dataclass
class Parsed:
    records: list[Record]
    declared: dict[Hashable, str] | None = None   # classes the metadata lists on their own: id -> name
    declared_in: str = ""                           # ... in this file
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- helpers for kinds


def bad_line(file: Path, line: int, expected: str, text: str) -> DmlReproError:
    return DmlReproError(f"{file}, line {line}: expected {expected}, got {text.rstrip()!r}; "
                         "the file does not follow the official format (re-extract it from the release)")


def read_lines(file: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a text metadata file, blank lines skipped."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DmlReproError(f"cannot read {file}: {e}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield n, line


def parse_int(file: Path, line: int, value: str, expected: str, text: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise bad_line(file, line, expected, text) from None


# ---------------------------------------------------------------------------------------- config


def settings_error(release: Release, key: str, why: str) -> DmlReproError:
    return DmlReproError(f"{release.kind} dataset setting `{key}`: {why} "
                         "(fix it under datasets.<name> in params.yaml)")


def resolve_config(release: Release, cfg: dict) -> dict:
    """``cfg`` with defaults filled in and values checked (:class:`DmlReproError` on a bad value)."""
    unknown = sorted(set(cfg) - set(DEFAULTS) - {"kind"})
    if unknown:
        raise settings_error(release, unknown[0], f"unknown setting; {release.kind} takes "
                             + ", ".join(DEFAULTS))
    out = dict(DEFAULTS)
    out.update({k: v for k, v in cfg.items() if k != "kind" and (v is not None or k in ("ks", "workers"))})
    root = out["root"]
    if root is None:
        raise settings_error(release, "root", f"required: the folder holding {release.layout} "
                             f"({release.title}, published at {release.url})")
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise settings_error(release, "root", f"expected a folder path, got {root!r}")
    v = out["val_fraction"]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
        raise settings_error(release, "val_fraction", f"expected a number in [0, 1), got {v!r}")
    if not isinstance(out["seed"], int) or isinstance(out["seed"], bool) or out["seed"] < 0:
        raise settings_error(release, "seed", f"expected an integer >= 0, got {out['seed']!r}")
    if not isinstance(out["skip_unreadable"], bool):
        raise settings_error(release, "skip_unreadable", f"expected true or false, got {out['skip_unreadable']!r}")
    ks = out["ks"]
    if ks is not None and (not isinstance(ks, (list, tuple)) or not ks or len(set(ks)) != len(ks)
                           or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks)):
        raise settings_error(release, "ks", f"expected a list of distinct integers >= 1, got {ks!r}")
    w = out["workers"]
    if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
        raise settings_error(release, "workers", f"expected null or an integer >= 1, got {w!r}")
    return out


# ----------------------------------------------------------------------------- root and metadata


def _fix(release: Release, name: str) -> str:
    return (f"{release.title} is published at {release.url}: download and unpack it, then set "
            f"`datasets.{name}.root` in params.yaml to the folder that holds {release.layout}")


def find_data_root(release: Release, root: Path, name: str) -> Path:
    """The folder holding the metadata files (one of ``release.candidates(root)``)."""
    if not root.is_dir():
        raise DmlReproError(f"{release.kind} dataset {name!r}: root folder {root} "
                            f"{'is not a folder' if root.exists() else 'does not exist'}. {_fix(release, name)}.")
    missing: list[Path] = []
    candidates = release.candidates(root)
    for cand in candidates:
        if not cand.is_dir():
            continue
        lacking = [cand / m for m in release.metadata if not (cand / m).is_file()]
        if not lacking:
            return cand
        missing += lacking
    listed = ", ".join(str(p) for p in missing)
    looked = f"looked in {' and '.join(str(c) for c in candidates)}" if len(candidates) > 1 else f"root {root}"
    raise DmlReproError(f"{release.kind} dataset {name!r}: metadata file{'s' if len(missing) > 1 else ''} {listed} not found "
                        f"({looked}). {_fix(release, name)}.")


# ------------------------------------------------------------------------------------ image check


def _verify_chunk(paths: Sequence[str]) -> list[tuple[str, str]]:
    """``(path, why)`` of the images among ``paths`` that are missing or that PIL cannot read."""
    from PIL import Image

    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.draft("RGB", (16, 16))  # JPEG: decode at 1/8 scale; still reads every byte,
                im.load()                  # so a truncated file fails here, not in extraction
        except FileNotFoundError:
            bad.append((p, "no such file"))
        except Exception as e:  # noqa: BLE001 -- PIL raises OSError, SyntaxError, ValueError, ...
            bad.append((p, f"{type(e).__name__}: {e}"))
    return bad


def check_images(paths: Sequence[str], workers: int, desc: str) -> dict[str, str]:
    """``{path: why}`` of the unreadable images, checked in ``workers`` processes (in chunks)."""
    n = len(paths)
    chunk = max(64, min(2048, n // (workers * 8) + 1))
    chunks = [paths[i:i + chunk] for i in range(0, n, chunk)]
    bad: dict[str, str] = {}
    with process_pool(min(workers, len(chunks)) if n > 2 * chunk else 1) as pool, \
            progress_bar(n, desc, "img") as bar:
        for res in ordered_map(pool, _verify_chunk, chunks, bar, weight=len):
            bad.update(res)
    return bad


# --------------------------------------------------------------------------------------- counts


def _count(records: Sequence[Record], key: Callable[[Record], str]) -> dict[str, dict[str, int]]:
    images: dict[str, set] = {}
    classes: dict[str, set] = {}
    for r in records:
        k = key(r)
        images.setdefault(k, set()).add(r.path)
        classes.setdefault(k, set()).add(r.class_id)
    out = {k: {"images": len(images[k]), "classes": len(classes[k])} for k in images}
    out["total"] = {"images": len({r.path for r in records}), "classes": len({r.class_id for r in records})}
    return out


def count_warnings(release: Release, have: dict[str, dict[str, int]], root: Path) -> list[str]:
    """One warning when the copy has fewer (or more) images or classes than the full release."""
    parts = []
    for split, full in release.counts.items():
        got = have.get(split, {"images": 0, "classes": 0})
        if got["images"] != full["images"] or got["classes"] != full["classes"]:
            where = "" if split == "total" else f"{split}: "
            parts.append((got, full, f"{where}{got['images']:,} of {full['images']:,} images, "
                                     f"{got['classes']:,} of {full['classes']:,} classes"))
    if not parts:
        return []
    fewer = all(g["images"] <= f["images"] and g["classes"] <= f["classes"] for g, f, _ in parts)
    what = "is a subset of" if fewer else "differs from"
    return [f"warning: {release.kind} at {root} {what} the official release: "
            + "; ".join(p for _, _, p in parts)]


# --------------------------------------------------------------------------------------- prepare


def _check_classes(release: Release, parsed: Parsed, records: list[Record]) -> None:
    pool_of: dict[Hashable, Record] = {}
    name_of: dict[Hashable, str] = {}
    id_of: dict[str, Hashable] = {}
    for r in records:
        first = pool_of.setdefault(r.class_id, r)
        if (first.split == "train") != (r.split == "train"):
            train, other = (first, r) if first.split == "train" else (r, first)
            raise DmlReproError(
                f"{release.kind}: class {r.class_id} is in the training pool ({train.source}) and in the "
                f"{other.split} split ({other.source}); the release's training and evaluation classes "
                "must be disjoint (is the metadata from another release?)")
        if name_of.setdefault(r.class_id, r.class_name) != r.class_name:
            raise DmlReproError(f"{release.kind}: class {r.class_id} is named {name_of[r.class_id]!r} "
                                f"and {r.class_name!r} ({r.source})")
        if id_of.setdefault(r.class_name, r.class_id) != r.class_id:
            raise DmlReproError(f"{release.kind}: classes {id_of[r.class_name]} and {r.class_id} have the "
                                f"same name {r.class_name!r} ({r.source})")
    if parsed.declared is not None:
        empty = [c for c in parsed.declared if c not in pool_of]
        if empty:
            shown = ", ".join(f"{c} ({parsed.declared[c]!r})" for c in empty[:5])
            raise DmlReproError(
                f"{release.kind}: {len(empty)} class(es) listed in {parsed.declared_in} have no image in "
                f"the metadata: {shown}{' ...' if len(empty) > 5 else ''}; the copy is incomplete "
                f"(re-extract the release from {release.url})")


def prepare_release(release: Release, parse: Callable[[Path], Parsed], cfg: dict,
                    out_dir: str | os.PathLike) -> dict:
    """Prepare one official release into ``out_dir`` (see the module doc); returns the info dict."""
    t0 = time.time()
    out_dir = Path(out_dir)
    name = out_dir.name or "NAME"
    cfg = resolve_config(release, cfg)
    root = Path(os.path.abspath(Path(cfg["root"]).expanduser()))
    data_root = find_data_root(release, root, name)
    parsed = parse(data_root)
    warnings = list(parsed.warnings)
    records = parsed.records
    if not records:
        raise DmlReproError(f"{release.kind}: the metadata in {data_root} lists no image. {_fix(release, name)}.")
    seen: set[tuple[str, str]] = set()
    unique = []
    for r in records:
        if (r.path, r.split) not in seen:
            seen.add((r.path, r.split))
            unique.append(r)
    if len(unique) < len(records):
        warnings.append(f"warning: {release.kind}: {len(records) - len(unique)} duplicate listing(s) of an "
                        "image in the same split dropped")
        records = unique
    _check_classes(release, parsed, records)

    # images ------------------------------------------------------------------------------------
    base = str(data_root)
    paths = list(dict.fromkeys(os.path.join(base, r.path) for r in records))
    workers = cfg["workers"] or os.cpu_count() or 1
    t1 = time.time()
    bad = check_images(paths, workers, f"{release.kind}: checking images")
    t_check = time.time() - t1
    skipped: dict[str, Any] = {"images": 0, "rows": 0, "first": [], "classes_emptied": []}
    if bad:
        first = sorted(bad)[:SHOW_SKIPPED]
        shown = "\n".join(f"  {p}: {bad[p]}" for p in first)
        if not cfg["skip_unreadable"]:
            raise DmlReproError(
                f"{release.kind}: {len(bad)} of {len(paths)} listed image(s) missing or unreadable:\n{shown}"
                f"{chr(10) + '  ...' if len(bad) > len(first) else ''}\nRe-extract them from the release "
                f"({release.url}), or set `datasets.{name}.skip_unreadable: true` in params.yaml to drop them.")
        before = {r.class_id for r in records}
        kept = [r for r in records if os.path.join(base, r.path) not in bad]
        emptied = sorted(before - {r.class_id for r in kept}, key=str)
        skipped = {"images": len(bad), "rows": len(records) - len(kept),
                   "first": [{"path": p, "why": bad[p]} for p in first],
                   "classes_emptied": [str(c) for c in emptied]}
        print(f"{release.kind}: skipped {len(bad)} unreadable image(s) ({skipped['rows']} manifest rows"
              + (f"; {len(emptied)} class(es) left without images: {', '.join(map(str, emptied[:10]))}" if emptied else "")
              + "), e.g.\n" + shown, file=sys.stderr)
        records = kept

    # classes, labels, validation ----------------------------------------------------------------
    pool = sorted({r.class_id for r in records if r.split == "train"})
    evaluation = sorted({r.class_id for r in records if r.split != "train"})
    if not pool or not evaluation:
        raise DmlReproError(f"{release.kind}: no image left in the {'training pool' if not pool else 'evaluation split(s)'} "
                            f"of {data_root}; {_fix(release, name)}")
    val = carve_validation(pool, cfg["val_fraction"], cfg["seed"])
    label_of = {c: i for i, c in enumerate([*pool, *evaluation])}
    order = {s: i for i, s in enumerate(SPLITS)}
    rows = []
    for r in records:
        split = ("val" if r.class_id in val else "train") if r.split == "train" else r.split
        row = {"path": os.path.join(base, r.path), "label": label_of[r.class_id],
               "class_name": r.class_name, "split": split}
        if r.extra:
            row.update(r.extra)
        rows.append(row)
    rows.sort(key=lambda row: (order[row["split"]], row["label"], row["path"]))

    # counts ------------------------------------------------------------------------------------
    counts = {s: {"images": 0, "classes": 0} for s in release.splits}
    for split in release.splits:
        sel = [row for row in rows if row["split"] == split]
        counts[split] = {"images": len(sel), "classes": len({row["label"] for row in sel})}
    counts["total"] = {"rows": len(rows), "images": len({row["path"] for row in rows}), "classes": len(label_of)}
    official = _count(records, lambda r: r.split)
    warnings += count_warnings(release, official, root)
    for w in warnings:
        print(w, file=sys.stderr)

    info = {
        "kind": release.kind,
        "title": release.title,
        "published_at": release.url,
        "protocol": release.protocol,
        "ks": list(cfg["ks"] or release.ks),
        "root": str(root),
        "data_root": str(data_root),
        "metadata": {m: {"path": str(data_root / m), "sha256": sha256_file(data_root / m)}
                     for m in release.metadata},
        "counts": counts,
        "official_split_counts": official,
        "release_counts": release.counts,
        "validation_classes": len(val),
        "warnings": warnings,
        "skipped": skipped,
        "settings": {k: v for k, v in cfg.items() if k != "workers"},  # the output does not depend on it
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_manifest(tmp / MANIFEST_NAME, rows)
        write_json(tmp / "info.json", info)
    per_split = ", ".join(f"{s} {c['images']:,} images / {c['classes']:,} classes" for s, c in counts.items()
                          if s != "total")
    print(f"{release.kind}: {counts['total']['images']:,} images of {len(label_of):,} classes from {data_root} "
          f"({per_split}); wrote {out_dir} in {time.time() - t0:.1f} s (image check {t_check:.1f} s, "
          f"{workers} worker(s))")
    return info


def register(release: Release, parse: Callable[[Path], Parsed]) -> Callable[[dict, Path], dict]:
    """Register ``release`` as a dataset kind; returns its ``prepare(cfg, out_dir)``."""

    def prepare(cfg: dict, out_dir: str | os.PathLike) -> dict:
        return prepare_release(release, parse, cfg, out_dir)

    prepare.__name__ = prepare.__qualname__ = f"prepare_{release.kind}"
    prepare.__doc__ = f"Prepare {release.title} ({release.url}) into ``out_dir``; see dmlrepro.data.official."
    return DATASETS.register(
        release.kind, protocol=release.protocol, splits=list(release.splits),
        schema=copy.deepcopy(SETTINGS_SCHEMA), ks=list(release.ks), published_at=release.url,
        counts=copy.deepcopy(release.counts), title=release.title,
    )(prepare)
