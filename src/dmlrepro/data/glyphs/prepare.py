"""The ``glyphs`` stage: font files -> faces -> designs -> classes -> images, manifest and info.json.

:func:`prepare_glyphs` runs the steps in order, each deterministic: read the font files
(:mod:`.fonts`), screen and probe the faces and choose the designs (:mod:`.designs`), choose the
classes (:mod:`.shapes`), render every (design, class, view) in a process pool (:mod:`.views`),
and write, atomically (a killed run leaves no ``out_dir``)::

    out_dir/manifest.csv                    path,label,class_name,split  (see ..manifest)
    out_dir/images/<design_id>/<hex>.png    e.g. images/notosanscjk-regular-0/4e00.png
    out_dir/info.json                       fonts (kept or why not), designs, counts, settings

A character that renders blank or as ``.notdef`` in any design is dropped from every design.
The steps, the info.json fields and the evidence behind the rules: docs/datasets/glyphs.md.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ...atomic import atomic_path, write_json
from ...errors import DmlReproError
from ..manifest import MANIFEST_NAME, write_manifest
from ..parallel import ordered_map, process_pool, progress_bar
from .designs import Selection, choose_designs, common_characters, probe_faces, screen_candidates, spread_evenly
from .fonts import Face, assign_design_ids, find_font_files, flag_copies, missing_fonts_error, read_font_file
from .settings import parse_characters, resolve_config
from .shapes import choose_classes, manifest_rows
from .views import image_name, write_design_images


def prepare_glyphs(cfg: dict, out_dir: str | os.PathLike) -> dict:
    """Build the glyphs dataset in ``out_dir`` (docs/datasets/glyphs.md); returns the info.json dict."""
    t0 = time.time()
    cfg = resolve_config(cfg)
    out_dir = Path(out_dir)
    requested = parse_characters(cfg["characters"])
    workers = cfg["workers"] or os.cpu_count() or 1
    files, searched = find_font_files(cfg["font_dirs"], cfg["fonts"])
    timings: dict[str, float] = {}

    with process_pool(min(workers, max(1, len(files)))) as pool:
        faces = read_faces(pool, files, requested)  # 1. fonts and what they draw
        _lap(timings, "read", t0)
        candidates = screen_candidates(faces, cfg["exclude"], cfg["min_coverage"], len(requested))  # 2.
        if len(candidates) < max(1, cfg["min_designs"]):
            raise missing_fonts_error(cfg["min_designs"], searched, faces, len(candidates))
        common = common_characters(candidates)
        probes = spread_evenly(common, cfg["probe_count"])
        probed, probe_images = probe_faces(pool, candidates, probes, cfg["fill"])  # 3.
        _lap(timings, "probe", t0)
        selection = choose_designs(probed, probe_images, common, cfg["duplicate_threshold"], cfg["fill"])  # 4-5.
        _lap(timings, "select", t0)
        designs = selection.designs
        if len(designs) < max(1, cfg["min_designs"]):
            raise missing_fonts_error(cfg["min_designs"], searched, faces, len(designs))
        classes, covered = choose_classes(designs, cfg["missing_designs"], cfg["max_classes"])  # 6.

        with atomic_path(out_dir) as tmp:  # 7.
            dropped = render_images(pool, tmp / "images", designs, covered, classes, cfg)
            _lap(timings, "render", t0)
            classes = [cp for cp in classes if cp not in dropped]
            if len(classes) < 2:
                raise DmlReproError(f"glyphs: only {len(classes)} class(es) left after rendering; "
                                    "widen `characters` or raise `max_classes`")
            rows = manifest_rows(classes, designs, covered, cfg)
            write_manifest(tmp / MANIFEST_NAME, rows)
            info = dataset_info(cfg, n_requested=len(requested), covered=covered, probes=probes,
                                selection=selection, dropped=dropped, n_files=len(files), faces=faces,
                                searched=searched, classes=classes, rows=rows)
            write_json(tmp / "info.json", info)

    _report(info, faces, designs, timings, time.time() - t0, out_dir)
    return info


def _lap(timings: dict[str, float], phase: str, t0: float) -> None:
    timings[phase] = time.time() - t0 - sum(timings.values())


def _read_font_file_args(args):
    return read_font_file(*args)


def read_faces(pool, files: Sequence[Path], requested: Sequence[int]) -> list[Face]:
    """Every face of every file (copies of an earlier file left out), with its design id."""
    req_set = set(requested)
    with progress_bar(len(files), "glyphs: reading fonts", "file") as bar:
        per_file = ordered_map(pool, _read_font_file_args, [(str(f), req_set) for f in files], bar)
    faces = flag_copies(per_file)
    assign_design_ids(faces)
    return faces


def render_images(pool, img_root: Path, designs: Sequence[Face], covered: Sequence[set],
                  classes: Sequence[int], cfg: dict) -> dict[int, str]:
    """Write every view of every class each design draws under ``img_root/<design_id>/``.

    Returns the characters that render blank, as ``.notdef`` or not at all in some design
    (``{cp: why}``); their images are removed from every design."""
    drawn_by = [[cp for cp in classes if cp in s] for s in covered]
    views = cfg["views_per_design"]
    tasks = []
    chunk = max(1, 256 // views)
    for f, cps in zip(designs, drawn_by):
        (img_root / f.design_id).mkdir(parents=True)
        for s in range(0, len(cps), chunk):
            tasks.append((f.file, f.index, f.bitmap_size, f.notdef_char, cps[s:s + chunk],
                          cfg["image_size"], cfg["fill"], str(img_root / f.design_id), views, cfg["seed"]))
    with progress_bar(sum(map(len, drawn_by)) * views, "glyphs: rendering", "img") as bar:
        rendered = ordered_map(pool, write_design_images, tasks, bar, weight=lambda t: len(t[4]) * t[8])
    dropped: dict[int, str] = {}
    for task, (_, bad) in zip(tasks, rendered):
        for cp, why in bad:
            dropped.setdefault(cp, f"{why} in {Path(task[0]).name}#{task[1]}")
    for f in designs:
        for cp in dropped:
            for view in range(views):
                (img_root / f.design_id / image_name(cp, view)).unlink(missing_ok=True)
    return dropped


def _split_counts(rows: Sequence[dict]) -> tuple[dict[str, int], dict[str, int]]:
    """Classes and image rows per manifest split (``train`` and ``val`` always listed)."""
    split_counts = {s: {"classes": set(), "images": 0} for s in ("train", "val")}
    for row in rows:
        c = split_counts.setdefault(row["split"], {"classes": set(), "images": 0})
        c["classes"].add(row["label"])
        c["images"] += 1
    return ({s: len(c["classes"]) for s, c in split_counts.items()},
            {s: c["images"] for s, c in split_counts.items()})


def dataset_info(cfg: dict, *, n_requested: int, covered: Sequence[set], probes: Sequence[int],
                 selection: Selection, dropped: dict[int, str], n_files: int, faces: Sequence[Face],
                 searched: list[dict], classes: Sequence[int], rows: Sequence[dict]) -> dict:
    """The info.json of a built dataset (field by field: docs/datasets/glyphs.md)."""
    designs = selection.designs
    n_cls, n_img = _split_counts(rows)
    return {
        "kind": "glyphs",
        "characters": cfg["characters"],
        "requested_characters": n_requested,
        "common_characters": len(set.intersection(*covered)),
        "probe_characters": "".join(chr(cp) for cp in probes),
        "twin_test": selection.twin_test,
        "dropped_characters": {f"U+{cp:04X}": why for cp, why in sorted(dropped.items())},
        "image_size": cfg["image_size"],
        "designs": [f.design_id for f in designs],
        "counts": {
            "font_files": n_files,
            "faces": len(faces),
            "families": selection.families,
            "designs_before_family_rule": selection.designs_before_family_rule,
            "designs": len(designs),
            "faces_merged": selection.faces_merged,
            "faces_excluded": sum(1 for f in faces if f.status == "excluded"),
            "classes": {**n_cls, "total": len(classes)},
            "images": {**n_img, "total": len(rows), "files": len({r["path"] for r in rows})},
            "images_per_class": round(len({r["path"] for r in rows}) / len(classes), 2),
        },
        "fonts": [f.record() for f in faces],
        "font_dirs": searched,
        "settings": {k: v for k, v in cfg.items() if k not in ("workers", "ks")},  # the images do not depend on them
        "versions": _versions(),
    }


def _versions() -> dict:
    import PIL
    import fontTools
    from PIL import features

    return {
        "pillow": PIL.__version__,
        "freetype": features.version("freetype2"),
        "fonttools": fontTools.version,
        "numpy": np.__version__,
    }


def _report(info: dict, faces: list[Face], designs: list[Face], timings: dict, seconds: float,
            out_dir: Path) -> None:
    c = info["counts"]
    m = c["faces_merged"]
    print(f"glyphs: {c['faces']} font faces in {c['font_files']} files -> {c['families']} families -> "
          f"{c['designs']} designs ({c['faces_excluded']} faces left out; {m['same_family']} as the same "
          f"family, {m['near_duplicate']} as near-duplicates, {m['twin']} as twins; the near-duplicate test "
          f"alone would keep {c['designs_before_family_rule']} designs)")
    for f in designs:
        print(f"  design {f.design_id:28s} {f.family} {f.style} (key '{f.family_key}', weight {f.weight}, "
              f"draws {f.coverage}, alone limits the classes by {f.limits_classes})")
    for f in faces:
        if f.status == "excluded":
            print(f"  left out {f.label():34s} {f.reason}")
    cl, im = c["classes"], c["images"]
    per_split = ", ".join(f"{s} {cl[s]} classes / {im[s]} images" for s in cl if s != "total")
    print(f"glyphs: {cl['total']} classes, {im['files']} images ({c['images_per_class']} per class; {per_split}); "
          f"{info['common_characters']} characters drawn by every design; "
          f"{len(info['dropped_characters'])} characters dropped after rendering")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    print(f"glyphs: wrote {out_dir} in {seconds:.1f} s ({phases})")
