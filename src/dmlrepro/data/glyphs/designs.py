"""Which faces are designs: coverage screen, probe renderings, one design per family and per rendering.

A face stays a candidate unless it matches an ``exclude`` glob or draws fewer than ``min_coverage``
x (requested characters). ``probe_count`` characters spread evenly over those every candidate
draws are rendered at :data:`PROBE_SIZE` px; the similarity of faces a and b is

    s(a, b) = median over probes p of pearson(x_a[p], x_b[p]).

Faces are visited in order of preference (weight closest to 400, then discovery order). Step 4:
faces with the same non-empty family key are one design, the first preferred stands for it.
Step 5, over those: a face is merged into a kept design when s > ``duplicate_threshold``
(near-duplicate) or s > :data:`TWIN_MIN_CORRELATION` and at least :func:`twin_min_identical`
of up to :data:`TWIN_SAMPLE` common characters render byte-identically (twin: shared glyph
data); otherwise it is kept. Thresholds and their evidence: docs/datasets/glyphs.md.
"""
from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...errors import DmlReproError
from ..parallel import ordered_map, progress_bar
from .fonts import Face
from .render import fit_ink, notdef_ink, open_face, render_ink, same_ink

PROBE_SIZE = 64                 # px; probes do not depend on image_size
TWIN_MIN_CORRELATION = 0.80     # twins: median probe correlation above this ...
TWIN_MIN_IDENTICAL = 0.005      # ... and this share (at least 2) of the twin sample byte-identical
TWIN_SAMPLE = 2048              # at most this many common characters rendered for the twin test


def spread_evenly(cps: Sequence[int], k: int) -> list[int]:
    """At most ``k`` of ``cps`` (sorted code points), spread evenly over them by position."""
    n = min(k, len(cps))
    return [cps[i] for i in sorted(set(np.linspace(0, len(cps) - 1, n).round().astype(int).tolist()))]


def screen_candidates(faces: Sequence[Face], exclude: Sequence[str], min_coverage: float,
                      n_requested: int) -> list[Face]:
    """Step 2: leave out the faces matching an ``exclude`` file-name glob or drawing fewer than
    ``min_coverage`` x ``n_requested`` characters; returns the faces still in the running."""
    min_cov = int(np.ceil(min_coverage * n_requested))
    for f in faces:
        if f.status == "excluded":
            continue
        pat = next((p for p in exclude if fnmatch.fnmatch(Path(f.file).name.lower(), p.lower())), None)
        if pat is not None:
            f.status, f.reason = "excluded", f"matches exclude pattern {pat!r}"
        elif f.coverage == 0 or f.coverage < min_cov:
            f.status, f.reason = "excluded", (
                f"draws only {f.coverage} of the {n_requested} requested characters "
                f"(min_coverage {min_coverage} needs {min_cov})")
    return [f for f in faces if f.status != "excluded"]


def common_characters(faces: Sequence[Face]) -> list[int]:
    """The code points every face draws, sorted (:class:`DmlReproError` when there is none)."""
    common = sorted(set.intersection(*(set(f.covered) for f in faces)))
    if not common:
        raise DmlReproError(
            "glyphs: no requested character is drawn by every candidate font face; candidates: "
            + ", ".join(f"{f.label()} ({f.coverage})" for f in faces)
            + ". Narrow `characters` or remove the odd fonts (datasets.glyphs.exclude)."
        )
    return common


def probe_face(args) -> tuple[np.ndarray | None, str]:
    """Probe renderings of one face as (n_probes, PROBE_SIZE**2) float32, or (None, why not)."""
    file, index, bitmap_size, notdef_char, probes, fill = args
    try:
        font = open_face(file, index, bitmap_size or 2 * PROBE_SIZE)
        notdef = notdef_ink(font, notdef_char)
        out = np.empty((len(probes), PROBE_SIZE * PROBE_SIZE), dtype=np.float32)
        blank, boxes = [], []
        for k, cp in enumerate(probes):
            ink = render_ink(font, chr(cp))
            if ink is None:
                blank.append(chr(cp))
                continue
            if same_ink(ink, notdef):
                boxes.append(chr(cp))
                continue
            img = fit_ink(ink, PROBE_SIZE, fill, nearest=bitmap_size is not None)
            out[k] = np.asarray(img, dtype=np.float32).ravel()
    except (OSError, ValueError) as e:  # FreeType errors, e.g. "invalid opcode" (broken hinting)
        return None, f"FreeType cannot render it ({e})"
    if blank:
        return None, f"draws nothing for probe character(s) {''.join(blank[:8])} despite its cmap"
    if boxes:
        return None, f"draws its .notdef box for probe character(s) {''.join(boxes[:8])}"
    if np.any(out.std(axis=1) == 0):
        return None, "renders a uniform image for some probe character"
    return out, ""


def probe_faces(pool, faces: Sequence[Face], probes: Sequence[int], fill: float) -> tuple[list[Face], list[np.ndarray]]:
    """Step 3: the faces whose probes render, with their probe images; the others are left out."""
    with progress_bar(len(faces), "glyphs: probing designs", "face") as bar:
        probed = ordered_map(pool, probe_face,
                             [(f.file, f.index, f.bitmap_size, f.notdef_char, probes, fill) for f in faces], bar)
    ok: list[Face] = []
    arrays = []
    for f, (arr, why) in zip(faces, probed):
        if arr is None:
            f.status, f.reason = "excluded", why
        else:
            ok.append(f)
            arrays.append(arr)
    return ok, arrays


def similarity_matrix(probes: np.ndarray) -> np.ndarray:
    """(F, P, D) probe images -> (F, F) median over probes of the per-probe Pearson correlation."""
    x = np.array(probes, dtype=np.float32)  # a copy, normalised in place
    x -= x.mean(axis=2, keepdims=True)
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    per_probe = np.stack([x[:, p] @ x[:, p].T for p in range(x.shape[1])])  # (P, F, F)
    return np.median(per_probe, axis=0).astype(np.float64)


def _preference(faces: Sequence[Face]) -> list[int]:
    """Face indices in order of preference: weight closest to 400 (Regular), then the given order."""
    return sorted(range(len(faces)), key=lambda i: (abs(faces[i].weight - 400), i))


def family_representatives(faces: Sequence[Face]) -> list[int | None]:
    """Step 4: for each face ``None`` if it stands for its family, else the index of the face that
    does (the preferred face with the same non-empty ``family_key``)."""
    first: dict[str, int] = {}
    out: list[int | None] = [None] * len(faces)
    for i in _preference(faces):
        key = faces[i].family_key
        if key:
            j = first.setdefault(key, i)
            out[i] = None if j == i else j
    return out


def twin_min_identical(n_sample: int) -> int:
    """Byte-identical renderings (of ``n_sample``) that, with the correlation, make two faces twins."""
    return max(2, int(np.ceil(TWIN_MIN_IDENTICAL * n_sample)))


def select_designs(faces: Sequence[Face], sim: np.ndarray, threshold: float,
                   identical: Callable[[int, int], int] | None = None, n_sample: int = 0,
                   ) -> list[tuple[int, int | None, str]]:
    """Step 5, greedy: for each face ``(i, None, "")`` if kept, or ``(i, j, rule)``, j the kept face
    it matches and rule ``"near-duplicate"`` (median probe correlation above ``threshold``) or
    ``"twin"`` (above :data:`TWIN_MIN_CORRELATION`, and ``identical(i, j)`` -- how many of
    ``n_sample`` characters the two render byte-identically, asked only for such pairs -- at least
    :func:`twin_min_identical`). Preference: weight closest to 400, then the given order."""
    need = twin_min_identical(n_sample)
    kept: list[int] = []
    result: dict[int, tuple[int | None, str]] = {}
    for i in _preference(faces):
        dup = max(kept, key=lambda j: sim[i, j], default=None)
        if dup is not None and sim[i, dup] > threshold:
            result[i] = (dup, "near-duplicate")
            continue
        same = {} if identical is None else {
            j: identical(i, j) for j in kept if sim[i, j] > TWIN_MIN_CORRELATION}
        twins = [j for j, n in same.items() if n >= need]
        if twins:
            result[i] = (max(twins, key=lambda j: (same[j], sim[i, j])), "twin")
        else:
            kept.append(i)
            result[i] = (None, "")
    return [(i, *result[i]) for i in range(len(faces))]


def rendering_digests(face: Face, cps: Sequence[int], fill: float) -> list[bytes | None]:
    """For the twin test: a digest of each character's rendering as a probe (None: draws nothing)."""
    out: list[bytes | None] = [None] * len(cps)
    try:
        font = open_face(face.file, face.index, face.bitmap_size or 2 * PROBE_SIZE)
        for k, cp in enumerate(cps):
            ink = render_ink(font, chr(cp))
            if ink is not None:
                img = fit_ink(ink, PROBE_SIZE, fill, nearest=face.bitmap_size is not None)
                out[k] = hashlib.blake2b(img.tobytes(), digest_size=16).digest()
    except (OSError, ValueError):  # FreeType errors: no evidence from the rest
        pass
    return out


def count_identical(a: Sequence[bytes | None], b: Sequence[bytes | None]) -> int:
    """Characters two faces render byte-identically (digests from :func:`rendering_digests`)."""
    return sum(1 for x, y in zip(a, b) if x is not None and x == y)


@dataclass
class Selection:
    """What steps 4-5 decided; each face's ``status``, ``reason`` and ``same_design_as`` are set on it."""

    designs: list[Face]                # the kept faces, in discovery order
    families: int                      # distinct family keys (and faces without one) among the probed faces
    designs_before_family_rule: int    # what the near-duplicate test alone keeps of all probed faces
    faces_merged: dict[str, int]       # by rule: same_family, near_duplicate, twin
    twin_test: dict | None             # the size of its sample and its thresholds


def choose_designs(faces: list[Face], probe_images: list[np.ndarray], common: Sequence[int],
                   threshold: float, fill: float) -> Selection:
    """Steps 4-5 over the probed ``faces``: one design per family, then one per rendering."""
    merged = {"same_family": 0, "near_duplicate": 0, "twin": 0}
    if not faces:
        return Selection([], 0, 0, merged, None)
    sim = similarity_matrix(np.stack(probe_images))
    # the rule before the family rule existed: the near-duplicate test over all faces
    before = sum(1 for _, j, _ in select_designs(faces, sim, threshold) if j is None)
    reps = family_representatives(faces)
    idx = [i for i, r in enumerate(reps) if r is None]
    sub_sim = sim[np.ix_(idx, idx)]
    sample = spread_evenly(common, TWIN_SAMPLE)
    digests: dict[int, list] = {}  # rendered on demand: only faces in a twin-band pair

    def identical(a: int, b: int) -> int:
        for k in (a, b):
            if k not in digests:
                digests[k] = rendering_digests(faces[idx[k]], sample, fill)
        return count_identical(digests[a], digests[b])

    merged_into: dict[int, int] = {}  # face -> the face it was merged into
    for a, b, rule in select_designs([faces[i] for i in idx], sub_sim, threshold, identical, len(sample)):
        f = faces[idx[a]]
        if b is None:
            f.status = "kept"
            continue
        g = faces[idx[b]]
        f.status = "excluded"
        merged_into[idx[a]] = idx[b]
        merged[rule.replace("-", "_")] += 1
        if rule == "twin":
            f.reason = (f"twin of {g.design_id}: median probe correlation {sub_sim[a, b]:.3f} > "
                        f"{TWIN_MIN_CORRELATION:.2f} and {identical(a, b)} of {len(sample)} common "
                        f"characters render byte-identically (>= {twin_min_identical(len(sample))})")
        else:
            f.reason = (f"near-duplicate of {g.design_id} (median probe correlation "
                        f"{sub_sim[a, b]:.3f} > duplicate_threshold {threshold})")
    for i, r in enumerate(reps):
        if r is not None:
            f, g = faces[i], faces[r]
            f.status = "excluded"
            merged_into[i] = r
            merged["same_family"] += 1
            f.reason = (f"same family as {g.design_id} (family key '{f.family_key}'; weight {f.weight}, "
                        f"the face closest to weight 400 stands for the family)")
    _link_to_kept_designs(faces, merged_into)
    twin_test = {"characters": len(sample), "faces_rendered": len(digests),
                 "min_correlation": TWIN_MIN_CORRELATION, "min_identical": twin_min_identical(len(sample))}
    return Selection([f for f in faces if f.status == "kept"], len(idx), before, merged, twin_test)


def _link_to_kept_designs(faces: list[Face], merged_into: dict[int, int]) -> None:
    """Point each merged face at the kept design its chain of merges ends in; say so in the reasons."""
    n_same: dict[int, int] = {}
    for i in merged_into:
        j = merged_into[i]
        while j in merged_into:
            j = merged_into[j]
        faces[i].same_design_as = faces[j].design_id
        n_same[j] = n_same.get(j, 0) + 1
    for i, f in enumerate(faces):
        if f.status == "kept":
            f.reason = f"design of family '{f.family_key}'" + (
                f"; {n_same[i]} other face(s) are the same design" if i in n_same else "")
