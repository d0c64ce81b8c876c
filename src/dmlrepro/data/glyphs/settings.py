"""The settings of a ``glyphs`` dataset: defaults, their JSON schema, checks, the character spec.

A ``datasets.<name>`` entry of params.yaml with ``kind: glyphs`` is filled in from :data:`DEFAULTS`
and checked by :func:`resolve_config`; ``characters`` is read by :func:`parse_characters`.
:func:`tiny_glyphs_config` is the seconds-fast fixture the tests build.
"""
from __future__ import annotations

import os
import re
from typing import Any

from ...errors import DmlReproError

CJK_UNIFIED = (0x4E00, 0x9FFF)  # CJK Unified Ideographs block

DEFAULTS: dict[str, Any] = {
    "font_dirs": ["fonts/usr/share/fonts"],  # `make fonts`; not /usr/share/fonts: same set everywhere
    "fonts": None,               # explicit font files (tests); overrides font_dirs
    "characters": "cjk",         # "cjk", ranges "U+0041-U+005A,U+0391-U+03A9", or literal chars
    "image_size": 112,
    "fill": 0.85,                # larger side of the ink box / image side
    "val_fraction": 0.2,
    "max_classes": None,
    "min_designs": 25,           # the default font set gives 28
    "min_coverage": 0.1,         # fraction of the requested characters a face must draw
    "duplicate_threshold": 0.88, # median probe correlation above which two faces are one design (step 5)
    "probe_count": 64,
    "exclude": ["AoyagiKouzanT*"],  # file-name globs; fonts-aoyagi-kouzan-t has gaps
    "seed": 0,                   # seeds the validation class choice and the jittered views
    "workers": None,             # processes; None = os.cpu_count()
    # The stand-in shapes (SOP, In-Shop, VehicleID, Cars): which characters are classes, how many
    # images each, how the test classes are evaluated (see manifest_rows).
    "missing_designs": [0, 0],   # a class is a character that between [min, max] kept designs do not draw
    "views_per_design": 1,       # images per (class, design): the rendering, then jittered views
    "test_classes": None,        # None: the second half of the classes; else this many (the last ones)
    "test_split": "leave_one_out",  # leave_one_out | query_gallery | vehicleid
    "ks": None,                  # Recall@K of this dataset (None: evaluation.ks)
}

#: The settings a `glyphs` entry of params.yaml may hold (a fragment of params.schema.json).
SETTINGS_SCHEMA = {
    "font_dirs": {"type": "array", "items": {"type": "string"}},
    "fonts": {"type": "array", "items": {"type": "string"}},
    "characters": {"type": "string", "minLength": 1},
    "image_size": {"type": "integer", "minimum": 16, "maximum": 1024},
    "val_fraction": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
    "max_classes": {"type": ["integer", "null"], "minimum": 2},
    "min_designs": {"type": "integer", "minimum": 1},
    "min_coverage": {"type": "number", "minimum": 0, "maximum": 1},
    "duplicate_threshold": {"type": "number", "minimum": 0, "maximum": 1},
    "fill": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "probe_count": {"type": "integer", "minimum": 1},
    "exclude": {"type": "array", "items": {"type": "string"}},
    "seed": {"type": "integer", "minimum": 0},
    "workers": {"type": ["integer", "null"], "minimum": 1},
    "missing_designs": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
    "views_per_design": {"type": "integer", "minimum": 1},
    "test_classes": {"type": ["integer", "null"], "minimum": 1},
    "test_split": {"enum": ["leave_one_out", "query_gallery", "vehicleid"]},
    "ks": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 1}, "minItems": 1},
}

# A seconds-fast fixture for tests on any machine: letters in the DejaVu fonts (GUIDE: every
# machine here has them). Look-alikes (l/I, o/O, c/C, s/S ...) are left out: glyphs are fitted
# to the image, so case differences of the same shape would be indistinguishable classes.
DEJAVU_DIR = "/usr/share/fonts/truetype/dejavu"
TINY_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghijmnqrtyΓΔΘΛΞΠΣΦΨΩαβγδεζηθλμξπσφψω"


def tiny_glyphs_config(**overrides) -> dict:
    """A glyphs dataset config that builds in about a second from the DejaVu fonts.

    For unit/integration tests (also as ``datasets.<name>`` in a test params.yaml): 67 letters x
    the DejaVu designs (one per family and slope: Sans, Sans Mono, Serif -- kept as its near-duplicate
    Math TeX Gyre -- and their obliques/italics; 6 at the default duplicate threshold), 32 px images.
    """
    cfg = {
        "kind": "glyphs",
        "font_dirs": [DEJAVU_DIR],
        "characters": TINY_CHARACTERS,
        "image_size": 32,
        "val_fraction": 0.2,
        "max_classes": None,
        "min_designs": 4,
        "duplicate_threshold": DEFAULTS["duplicate_threshold"],
    }
    cfg.update(overrides)
    return cfg


def settings_error(key: str, why: str) -> DmlReproError:
    """The error for a bad value of setting ``key`` (names where to fix it)."""
    return DmlReproError(f"glyphs dataset setting `{key}`: {why} (fix it under datasets.<name> in params.yaml)")


def resolve_config(cfg: dict) -> dict:
    """``cfg`` with defaults filled in and values checked (:class:`DmlReproError` on a bad value)."""
    out = dict(DEFAULTS)
    out.update({k: v for k, v in cfg.items()
                if v is not None or k in ("max_classes", "fonts", "workers", "test_classes", "ks")})
    for key in ("image_size", "min_designs", "probe_count", "seed"):
        v = out[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (16 if key == "image_size" else 0):
            raise settings_error(key, f"expected an integer{' >= 16' if key == 'image_size' else ' >= 0'}, got {v!r}")
    if out["probe_count"] < 1:
        raise settings_error("probe_count", f"expected an integer >= 1, got {out['probe_count']!r}")
    mc = out["max_classes"]
    if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 2):
        raise settings_error("max_classes", f"expected null or an integer >= 2, got {mc!r}")
    w = out["workers"]
    if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
        raise settings_error("workers", f"expected null or an integer >= 1, got {w!r}")
    for key, lo, hi in (("val_fraction", 0.0, 1.0), ("fill", 0.05, 1.0),
                        ("min_coverage", 0.0, 1.0), ("duplicate_threshold", -1.0, 1.0)):
        v = out[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi or (key == "val_fraction" and v >= 1):
            raise settings_error(key, f"expected a number in [{lo}, {hi}{')' if key == 'val_fraction' else ']'}, got {v!r}")
    for key in ("font_dirs", "exclude"):
        v = out[key]
        if isinstance(v, (str, os.PathLike)):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, (str, os.PathLike)) for x in v):
            raise settings_error(key, f"expected a list of strings, got {v!r}")
        out[key] = [str(x) for x in v]
    if out["fonts"] is not None:
        v = out["fonts"]
        if isinstance(v, (str, os.PathLike)) or not all(isinstance(x, (str, os.PathLike)) for x in v):
            raise settings_error("fonts", f"expected a list of font file paths, got {v!r}")
        out["fonts"] = [str(x) for x in v]
    md = out["missing_designs"]
    if (not isinstance(md, (list, tuple)) or len(md) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                      and x >= 0 for x in md) or md[0] > md[1]):
        raise settings_error("missing_designs", f"expected [min, max] with 0 <= min <= max, got {md!r}")
    out["missing_designs"] = [int(md[0]), int(md[1])]
    v = out["views_per_design"]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise settings_error("views_per_design", f"expected an integer >= 1, got {v!r}")
    tc = out["test_classes"]
    if tc is not None and (not isinstance(tc, int) or isinstance(tc, bool) or tc < 1):
        raise settings_error("test_classes", f"expected null or an integer >= 1, got {tc!r}")
    if out["test_split"] not in ("leave_one_out", "query_gallery", "vehicleid"):
        raise settings_error("test_split", f"expected leave_one_out, query_gallery or vehicleid, got {out['test_split']!r}")
    if not isinstance(out["characters"], str) or not out["characters"]:
        raise settings_error("characters", f"expected 'cjk', code point ranges or a string of characters, got {out['characters']!r}")
    return out


_RANGES = re.compile(r"^\s*U\+[0-9A-Fa-f]{1,6}(\s*-\s*U\+[0-9A-Fa-f]{1,6})?(\s*,\s*U\+[0-9A-Fa-f]{1,6}(\s*-\s*U\+[0-9A-Fa-f]{1,6})?)*\s*$")


def parse_characters(spec: str) -> list[int]:
    """Requested code points, sorted and unique.

    ``"cjk"``: CJK Unified Ideographs U+4E00-U+9FFF. ``"U+0041-U+005A,U+0391-U+03A9"``: code point
    ranges (inclusive) and single code points. Anything else: the characters of the string itself
    (whitespace ignored).
    """
    if spec.strip().lower() == "cjk":
        return list(range(CJK_UNIFIED[0], CJK_UNIFIED[1] + 1))
    if _RANGES.match(spec):
        cps: set[int] = set()
        for part in spec.split(","):
            ends = [int(x.strip()[2:], 16) for x in part.split("-")]
            lo, hi = ends[0], ends[-1]
            if hi < lo:
                raise settings_error("characters", f"empty range {part.strip()!r}")
            cps.update(range(lo, hi + 1))
        return sorted(cps)
    cps = sorted({ord(c) for c in spec if not c.isspace()})
    if not cps:
        raise settings_error("characters", f"no characters in {spec!r}")
    return cps
