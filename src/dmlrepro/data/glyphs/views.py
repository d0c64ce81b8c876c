"""The image files of one design: view 0 is the rendering, views 1.. are jittered copies of it.

``views_per_design`` images per (design, class), named ``<hex>.png`` (view 0) and
``<hex>_<view>.png``. A jittered view is another photo of the same object: strokes thickened or
thinned, then an affine map ``x' = stretch * x + shear * y`` (shear ~ U(-0.25, 0.25), stretch ~
U(0.8, 1.2)), a rotation by U(-12, 12) degrees, and the fit at U(0.7, 1.0) x ``fill``, shifted
within the free margin. Each view's generator is keyed by (seed, design, code point, view), so the
images do not depend on the number of workers or the render order.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .render import fit_ink, notdef_ink, open_face, render_ink, same_ink


def image_name(cp: int, view: int) -> str:
    """The file name of one view of character ``cp`` in a design's folder."""
    return f"{cp:04x}.png" if view == 0 else f"{cp:04x}_{view}.png"


def view_seed(seed: int, design_id: str, cp: int, view: int) -> list[int]:
    """The generator key of one jittered view: independent of worker count and render order."""
    design = int.from_bytes(hashlib.sha256(design_id.encode("utf-8")).digest()[:4], "big")
    return [seed, design, cp, view]


def jittered_view(ink: Image.Image, image_size: int, fill: float, nearest: bool,
                  rng: np.random.Generator) -> Image.Image:
    """Another view of a glyph, as another photo of the same car: strokes thickened or thinned
    (a 5 px max/min filter at twice the image size, each a third of the time), sheared by up to
    0.25 and stretched horizontally by 0.8-1.2, rotated by up to 12 degrees, scaled to 70-100 % of
    ``fill`` and shifted within the free margin."""
    stroke = int(rng.integers(0, 3))
    if stroke:  # ink is white on black: a max filter thickens the strokes, a min filter thins them
        ink = ink.filter(ImageFilter.MaxFilter(5) if stroke == 1 else ImageFilter.MinFilter(5))
    shear, stretch = float(rng.uniform(-0.25, 0.25)), float(rng.uniform(0.8, 1.2))
    w, h = ink.size
    left = min(0.0, shear * h)  # x_out = stretch * x + shear * y, moved right by -left
    size = (max(1, int(np.ceil(stretch * w + abs(shear) * h))), h)
    ink = ink.transform(size, Image.Transform.AFFINE, (1 / stretch, -shear / stretch, left / stretch, 0, 1, 0),
                        resample=Image.Resampling.BICUBIC, fillcolor=0)
    ink = ink.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BICUBIC, expand=True, fillcolor=0)
    box = ink.getbbox()
    ink = ink.crop(box) if box else ink
    return fit_ink(ink, image_size, fill * float(rng.uniform(0.7, 1.0)), nearest,
                   shift=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))))


def write_design_images(args) -> tuple[int, list[tuple[int, str]]]:
    """Render some code points of one design (every view) into ``dest``; return (count, [(cp, why bad)])."""
    file, index, bitmap_size, notdef_char, cps, image_size, fill, dest, views, seed = args
    font = open_face(file, index, bitmap_size or 2 * image_size)
    notdef = notdef_ink(font, notdef_char)
    bad: list[tuple[int, str]] = []
    dest = Path(dest)
    for cp in cps:
        try:
            ink = render_ink(font, chr(cp))
        except (OSError, ValueError) as e:
            bad.append((cp, f"FreeType error ({e})"))
            continue
        if ink is None:
            bad.append((cp, "renders blank"))
            continue
        if same_ink(ink, notdef):
            bad.append((cp, "renders as .notdef"))
            continue
        nearest = bitmap_size is not None
        fit_ink(ink, image_size, fill, nearest).save(dest / image_name(cp, 0), format="PNG")
        for view in range(1, views):
            rng = np.random.default_rng(view_seed(seed, dest.name, cp, view))
            jittered_view(ink, image_size, fill, nearest, rng).save(dest / image_name(cp, view), format="PNG")
    return len(cps), bad
