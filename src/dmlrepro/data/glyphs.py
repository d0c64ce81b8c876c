"""The ``glyphs`` benchmark: characters rendered in many font designs (class = character).

CUB-shaped stand-in that needs no download beyond Debian font packages: each class is one
character (by default a CJK ideograph), each image is that character in one font *design*.
The loader itself is script-agnostic (tests use Latin/Greek letters in the DejaVu fonts).

Pipeline of :func:`prepare_glyphs` (every step deterministic):

1. **Find fonts**: ``.ttf .otf .ttc .otc`` files under ``font_dirs`` (recursively, sorted by path,
   dirs in the order given; or exactly the files listed in ``fonts``). Every face of a collection
   (``.ttc``/``.otc``) is a candidate design. Files with the same contents (sha256) as an earlier
   one are left out.
2. **Coverage**: with fontTools, a face *draws* a requested character when its best cmap maps it to
   a glyph other than ``.notdef`` that has an outline (TrueType: non-empty ``glyf`` data; other
   formats: a non-empty FreeType bounding box) and that glyph is not a placeholder shared by more
   than :data:`MAX_SHARED_GLYPH` requested characters. Faces matching ``exclude`` (file-name
   glob patterns, default: the gappy Aoyagi Kouzan T) and faces drawing fewer than
   ``min_coverage`` x (number of requested characters) are left out: kana-only, Hangul-only and
   Latin fonts, CJK "extension" fonts (HanaMinB), empty cmap entries (setofont-ex).
3. **Probes**: ``probe_count`` characters spread evenly (by code point) over the characters every
   remaining face draws are rendered by every face at 64 px. Faces that FreeType cannot render
   (broken hinting bytecode), that draw nothing for a probe, or draw a probe identical to their
   ``.notdef`` box are left out.
4. **One design per family** (metadata): a face's *family key* is its family name -- the WWS
   family (name ID 21) if the font has one, else the typographic family (name ID 16), else the
   legacy family (name ID 1) -- normalised by :func:`family_key`: NFKC, case-folded, ``+`` read as
   ``plus`` (``M+ 1p`` = ``M PLUS 1p``), punctuation dropped, and trailing weight, width and slope
   words removed (``Regular Book Medium Bold Light Thin Black Heavy W3 ExtraLight Semi Bold
   Condensed Italic`` ...; also glued on, as in ``UnBatangBold``). A slanted face (OS/2 fsSelection
   ITALIC/OBLIQUE, head macStyle italic, or a slope word in its names) gets `` italic`` appended:
   an italic is drawn with its own letterforms (no CJK face here is slanted). Everything else in
   the name stays in the key: spacing and sub-family letters (``M+ 1p/1c/1m``, ``Mono``,
   ``Code``, ``P`` in ``IPAPGothic``), region and encoding editions (``Noto Sans CJK JP/KR``,
   ``KaitiM Big5/GB``) are separate families by metadata and are merged only by the render tests
   below, i.e. only where their requested characters render (nearly) the same -- for ideographs
   they do, for Latin letters ``M+ 1p`` and ``M+ 1c`` do not. Faces with the same key are one
   design: the face with the weight closest to Regular (OS/2 usWeightClass 400), then the first
   discovered, stands for the family; the others are left out ("same family as ..."). Faces
   without a family name are families of their own.
5. **One design per rendering** (probes), over the faces that stand for their families, visited in
   the same order of preference; a face is kept unless it matches a face already kept:

   * *near-duplicate*: the **median** over probes of the Pearson correlation of the two faces'
     renderings of a probe (robust to the few regional glyph variants that tell Noto JP from Noto
     SC) is above ``duplicate_threshold``. Derived families merge here (IPA/Monapo,
     Migu/MigMix/VL Gothic/M+, U-Kai/KaitiM Big5, LXGW WenKai/Klee One).
   * *twin*: the median correlation is above :data:`TWIN_MIN_CORRELATION` (0.80) and at least
     :data:`TWIN_MIN_IDENTICAL` (0.5 %, and at least 2) of the characters every candidate draws
     (at most :data:`TWIN_SAMPLE`, spread evenly by code point), rendered like the probes, are
     **byte-identical**: the two fonts share glyph data. Only the faces of pairs the selection
     compares in that band are rendered (8 faces of the default set, about 8 s).

   Evidence (the fonts of :data:`GLYPH_FONT_PACKAGES`, ``duplicate_threshold`` 0.88, 64 probes):
   after the family rule, the 29 designs kept by the near-duplicate test have pairwise median
   correlations of median 0.46, 99th percentile 0.83, and highest AR PL KaitiM Big5 / GB 0.872,
   AR PL Mingti2L Big5 / SungtiL GB 0.851 and IPAGothic / BIZ UDGothic 0.848. The first two pairs
   look like one design each, the third are two designs (Typebank's IPA Gothic, Morisawa's UD
   Gothic), 0.003 below the second: no correlation threshold separates twins from designs.
   Rendered over all 1,898 common ideographs, no two of these 29 designs share a single
   byte-identical rendering except KaitiM Big5 / GB (50, 2.6 %, against the 10 needed; a
   512-character sample would have held only 8), while faces merged as near-duplicates share many
   (Noto Sans CJK JP/TC 573, Noto Serif CJK JP/TC 657, KaitiM Big5/UKai 396). So KaitiM GB is a
   twin of KaitiM Big5. Mingti2L Big5 and SungtiL GB share no outline and no rendering and stay
   two designs: a known limit (merging them by correlation would merge IPA and BIZ UD Gothic).
   Result: 146 candidate faces in 92 families -> 28 designs (the near-duplicate test alone kept
   38: M PLUS 1 at five weights, the Bold of Noto Sans/Serif CJK, UnBatang, UnDotum and LXGW
   WenKai, and both KaitiM).
6. **Classes**: the characters every kept design draws, in code point order (first
   ``max_classes`` only, if set). Zero-shot split from :mod:`.splits`: first half train pool
   (``val_fraction`` of it carved out as class-disjoint ``val``), second half ``test``.
7. **Render** every (design, class): FreeType via Pillow (basic layout, no shaping), glyph drawn
   at 2x image_size, cropped to its ink bounding box, scaled (LANCZOS; NEAREST for bitmap-only
   fonts, drawn at their largest strike) so its larger side is ``fill`` x image_size, centred on
   a white square, black ink, 8-bit grayscale PNG. A glyph that renders blank or as ``.notdef`` in
   any design drops that class everywhere (recorded in info.json).

Output (written atomically: a killed run leaves no ``out_dir``)::

    out_dir/manifest.csv                    path,label,class_name,split  (see .manifest)
    out_dir/images/<design_id>/<hex>.png    e.g. images/notosanscjk-regular-0/4e00.png
    out_dir/info.json                       fonts (kept or why not), designs, counts, settings

info.json records every face (:meth:`Face.record`): its family name and ``family_key``,
``status`` (kept | excluded), ``reason`` and, for a face merged into a kept design,
``same_design_as`` (that design's id). ``counts`` holds ``families`` (distinct keys among the
candidate faces), ``designs_before_family_rule`` (what the near-duplicate test alone keeps of all
candidate faces: the rule before steps 4 and the twin test), ``designs`` and ``faces_merged`` (by
rule: ``same_family``, ``near_duplicate``, ``twin``); ``twin_test`` the size of its sample.
"""
from __future__ import annotations

import fnmatch
import hashlib
import logging
import multiprocessing
import os
import re
import sys
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ..atomic import atomic_path, write_json
from ..errors import DmlReproError
from ..hashing import sha256_file
from . import DATASETS
from .manifest import MANIFEST_NAME, VEHICLEID_TEST_SPLITS, write_manifest
from .splits import TEST, split_classes

# The Debian packages of the default glyph benchmark (28 designs over about 1,900 ideographs).
# workflow/scripts/fetch_fonts.sh reads this list: keep it the one source of truth.
GLYPH_FONT_PACKAGES: tuple[str, ...] = (
    "fonts-noto-cjk",
    "fonts-hanazono",
    "fonts-wqy-zenhei",
    "fonts-wqy-microhei",
    "fonts-arphic-uming",
    "fonts-arphic-ukai",
    "fonts-arphic-bsmi00lp",
    "fonts-arphic-bkai00mp",
    "fonts-arphic-gbsn00lp",
    "fonts-arphic-gkai00mp",
    "fonts-ipafont-gothic",
    "fonts-vlgothic",
    "fonts-kiloji",
    "fonts-horai-umefont",
    "fonts-seto",
    "fonts-kouzan-mouhitsu",
    "fonts-aoyagi-soseki",
    "fonts-sawarabi-gothic",
    "fonts-sawarabi-mincho",
    "fonts-motoya-l-cedar",
    "fonts-motoya-l-maruberi",
    "fonts-morisawa-bizud-gothic",
    "fonts-morisawa-bizud-mincho",
    "fonts-misaki",
    "fonts-monapo",
    "fonts-mplus",
    "fonts-lxgw-wenkai",
    "fonts-klee",
    "fonts-unfonts-core",
    "fonts-migmix",
)

FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
CJK_UNIFIED = (0x4E00, 0x9FFF)  # CJK Unified Ideographs block
PROBE_SIZE = 64                 # px; probes do not depend on image_size
MAX_SHARED_GLYPH = 8            # a glyph drawn for more requested characters is a placeholder
_NOTDEF_PROBES = (0x10FFFF, 0xFFFF, 0x10FFFE, 0xFFFE)  # noncharacters: never in a real cmap
TWIN_MIN_CORRELATION = 0.80     # twins: median probe correlation above this ...
TWIN_MIN_IDENTICAL = 0.005      # ... and this share (at least 2) of the twin sample byte-identical
TWIN_SAMPLE = 2048              # at most this many common characters rendered for the twin test

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


# ----------------------------------------------------------------------------------- config


def _cfg_error(key: str, why: str) -> DmlReproError:
    return DmlReproError(f"glyphs dataset setting `{key}`: {why} (fix it under datasets.<name> in params.yaml)")


def resolve_config(cfg: dict) -> dict:
    """``cfg`` with defaults filled in and values checked (:class:`DmlReproError` on a bad value)."""
    out = dict(DEFAULTS)
    out.update({k: v for k, v in cfg.items()
                if v is not None or k in ("max_classes", "fonts", "workers", "test_classes", "ks")})
    for key in ("image_size", "min_designs", "probe_count", "seed"):
        v = out[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (16 if key == "image_size" else 0):
            raise _cfg_error(key, f"expected an integer{' >= 16' if key == 'image_size' else ' >= 0'}, got {v!r}")
    if out["probe_count"] < 1:
        raise _cfg_error("probe_count", f"expected an integer >= 1, got {out['probe_count']!r}")
    mc = out["max_classes"]
    if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 2):
        raise _cfg_error("max_classes", f"expected null or an integer >= 2, got {mc!r}")
    w = out["workers"]
    if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
        raise _cfg_error("workers", f"expected null or an integer >= 1, got {w!r}")
    for key, lo, hi in (("val_fraction", 0.0, 1.0), ("fill", 0.05, 1.0),
                        ("min_coverage", 0.0, 1.0), ("duplicate_threshold", -1.0, 1.0)):
        v = out[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi or (key == "val_fraction" and v >= 1):
            raise _cfg_error(key, f"expected a number in [{lo}, {hi}{')' if key == 'val_fraction' else ']'}, got {v!r}")
    for key in ("font_dirs", "exclude"):
        v = out[key]
        if isinstance(v, (str, os.PathLike)):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, (str, os.PathLike)) for x in v):
            raise _cfg_error(key, f"expected a list of strings, got {v!r}")
        out[key] = [str(x) for x in v]
    if out["fonts"] is not None:
        v = out["fonts"]
        if isinstance(v, (str, os.PathLike)) or not all(isinstance(x, (str, os.PathLike)) for x in v):
            raise _cfg_error("fonts", f"expected a list of font file paths, got {v!r}")
        out["fonts"] = [str(x) for x in v]
    md = out["missing_designs"]
    if (not isinstance(md, (list, tuple)) or len(md) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                      and x >= 0 for x in md) or md[0] > md[1]):
        raise _cfg_error("missing_designs", f"expected [min, max] with 0 <= min <= max, got {md!r}")
    out["missing_designs"] = [int(md[0]), int(md[1])]
    v = out["views_per_design"]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise _cfg_error("views_per_design", f"expected an integer >= 1, got {v!r}")
    tc = out["test_classes"]
    if tc is not None and (not isinstance(tc, int) or isinstance(tc, bool) or tc < 1):
        raise _cfg_error("test_classes", f"expected null or an integer >= 1, got {tc!r}")
    if out["test_split"] not in ("leave_one_out", "query_gallery", "vehicleid"):
        raise _cfg_error("test_split", f"expected leave_one_out, query_gallery or vehicleid, got {out['test_split']!r}")
    if not isinstance(out["characters"], str) or not out["characters"]:
        raise _cfg_error("characters", f"expected 'cjk', code point ranges or a string of characters, got {out['characters']!r}")
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
                raise _cfg_error("characters", f"empty range {part.strip()!r}")
            cps.update(range(lo, hi + 1))
        return sorted(cps)
    cps = sorted({ord(c) for c in spec if not c.isspace()})
    if not cps:
        raise _cfg_error("characters", f"no characters in {spec!r}")
    return cps


# ------------------------------------------------------------------------------ font faces


_STYLE_PREFIXES = ("extra", "ultra", "semi", "demi", "super")
_WEIGHT_WORDS = ("thin", "hairline", "light", "book", "regular", "normal", "medium", "bold", "heavy",
                 "black", "fat")
_WIDTH_WORDS = ("condensed", "narrow", "compressed", "expanded", "extended")
_SLOPE_WORDS = ("italic", "oblique", "slanted", "inclined", "kursiv")
_STYLE_WORDS = _WEIGHT_WORDS + _WIDTH_WORDS + _SLOPE_WORDS
# a whole (case-folded) token that names a style: "bold", "extralight", "semibold", "w3"
_STYLE_TOKEN = re.compile(rf"(?:{'|'.join(_STYLE_PREFIXES)})?(?:{'|'.join(_STYLE_WORDS)})|w\d{{1,2}}")
# a style word glued to the end of a CamelCase token: "UnBatangBold", "FooExtraLight"
_GLUED_STYLE = re.compile(
    rf"(?<=[a-z0-9])(?:{'|'.join(w.capitalize() for w in _STYLE_PREFIXES)})?"
    rf"(?:{'|'.join(w.capitalize() for w in _STYLE_WORDS)})$")


def family_key(name: str, italic: bool = False) -> str:
    """The normalised family of a family name: faces with the same key are one design (step 4).

    NFKC, ``+`` read as ``plus``, punctuation dropped, case-folded, and trailing weight, width and
    slope words removed (separate, hyphenated or glued to a CamelCase name; a name is never
    reduced to nothing); `` italic`` appended for a slanted face or a slope word in the name.
    ``""`` for an empty name. ``family_key("M+ 1p Bold") == family_key("M PLUS 1p") == "m plus
    1p"``, ``family_key("UnBatangBold") == "unbatang"``, ``family_key("DejaVu Sans", italic=True)
    == "dejavu sans italic"``; ``M+ 1c``, ``Noto Sans CJK JP`` and ``Noto Sans CJK KR`` keep keys
    of their own.
    """
    text = unicodedata.normalize("NFKC", name).replace("+", " plus ")
    tokens = [t for t in re.split(r"[\W_]+", text) if t]
    while tokens:
        low = tokens[-1].casefold()
        if len(tokens) > 1 and _STYLE_TOKEN.fullmatch(low):
            tokens.pop()
            italic = italic or any(w in low for w in _SLOPE_WORDS)
            if len(tokens) > 1 and tokens[-1].casefold() in _STYLE_PREFIXES:  # "Semi Bold", "Extra-Light"
                tokens.pop()
            continue
        m = _GLUED_STYLE.search(tokens[-1])
        if m is not None:
            tokens[-1:] = [tokens[-1][: m.start()], tokens[-1][m.start():]]
            continue
        break
    key = " ".join(t.casefold() for t in tokens)
    return f"{key} italic" if key and italic else key


@dataclass
class Face:
    """One face of one font file: a candidate design.

    ``family``: WWS, else typographic, else legacy family name (fontTools ``getBestFamilyName``);
    ``family_key``: :func:`family_key` of it (slope included); ``same_design_as``: for a face left
    out as the same design as another, the id of the kept design it belongs to.
    """

    file: str
    index: int
    n_faces: int = 1
    sha256: str = ""
    family: str = ""
    style: str = ""
    weight: int = 400
    italic: bool = False
    family_key: str = ""
    bitmap_size: int | None = None   # ppem of the strike used for bitmap-only fonts
    coverage: int = 0                # requested characters it draws
    limits_classes: int | None = None  # kept designs: characters all other designs draw but not it
    notdef_char: int | None = None   # a code point outside its cmap: renders as .notdef
    design_id: str = ""
    status: str = "candidate"        # kept | excluded
    reason: str = ""
    same_design_as: str | None = None
    covered: list[int] = field(default_factory=list, repr=False)  # code points it draws

    def label(self) -> str:
        name = Path(self.file).name
        return f"{name}#{self.index}" if self.n_faces > 1 else name

    def record(self) -> dict:
        d = asdict(self)
        del d["covered"]
        return d


def find_font_files(font_dirs: Sequence[str], fonts: Sequence[str] | None = None) -> tuple[list[Path], list[dict]]:
    """Font files to consider and a report of where they were looked for.

    ``fonts`` (explicit files) wins over ``font_dirs``; dirs are searched recursively and their
    files sorted by path. Relative paths are relative to the current directory.
    """
    searched: list[dict] = []
    files: list[Path] = []
    if fonts is not None:
        for f in fonts:
            p = Path(f)
            searched.append({"path": str(f), "exists": p.is_file(), "font_files": int(p.is_file())})
            if p.is_file():
                files.append(p)
        return files, searched
    for d in font_dirs:
        p = Path(d)
        found = []
        if p.is_dir():
            found = sorted(
                (q for q in p.rglob("*") if q.suffix.lower() in FONT_SUFFIXES and q.is_file()),
                key=lambda q: q.as_posix(),
            )
        searched.append({"path": str(d), "exists": p.is_dir(), "font_files": len(found)})
        files.extend(found)
    return files, searched


class _QuietFontTools:
    """fontTools warns about harmless quirks (odd timestamps, glyf padding); keep stdout clean."""

    def __enter__(self):
        self.logger = logging.getLogger("fontTools")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _has_outlines(tt) -> bool:
    return any(t in tt for t in ("glyf", "CFF ", "CFF2"))


def _bitmap_strike(tt) -> int | None:
    for tag in ("EBLC", "CBLC", "bloc"):
        if tag in tt:
            sizes = [s.bitmapSizeTable.ppemY for s in tt[tag].strikes]
            if sizes:
                return int(max(sizes))
    return None


def _is_slanted(tt) -> bool:
    """OS/2 fsSelection ITALIC (bit 0) or OBLIQUE (bit 9), or head macStyle italic (bit 1)."""
    if "OS/2" in tt and tt["OS/2"].fsSelection & 0x201:
        return True
    return "head" in tt and bool(tt["head"].macStyle & 0x2)


def _drawn_codepoints(tt, path: Path, index: int, requested: set[int], bitmap_size: int | None) -> list[int]:
    """Requested code points this face maps to a non-.notdef, inked, non-placeholder glyph."""
    cmap = tt.getBestCmap() or {}
    order = tt.getGlyphOrder()
    notdef = order[0] if order else ".notdef"
    cand = {cp: g for cp, g in cmap.items() if cp in requested and g != notdef and g != ".notdef"}
    if not cand:
        return []
    counts: dict[str, int] = {}
    for g in cand.values():
        counts[g] = counts.get(g, 0) + 1
    cand = {cp: g for cp, g in cand.items() if counts[g] <= MAX_SHARED_GLYPH}
    if "glyf" in tt and "loca" in tt:
        loca = tt["loca"]
        gid = tt.getReverseGlyphMap()
        return sorted(cp for cp, g in cand.items() if loca[gid[g] + 1] > loca[gid[g]])
    font = ImageFont.truetype(str(path), bitmap_size or 32, index=index, layout_engine=ImageFont.Layout.BASIC)
    drawn = []
    for cp in sorted(cand):
        left, top, right, bottom = font.getbbox(chr(cp), anchor="ls")
        if right > left and bottom > top:
            drawn.append(cp)
    return drawn


def read_font_file(path: str | os.PathLike, requested: Sequence[int] | set[int]) -> list[Face]:
    """Every face of one font file with its names, weight and the requested characters it draws.

    An unreadable file gives one face with ``status="excluded"`` and the error as ``reason``.
    """
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    p = Path(path)
    req = requested if isinstance(requested, set) else set(requested)
    try:
        digest = sha256_file(p)
    except OSError as e:
        return [Face(file=str(path), index=0, status="excluded", reason=f"unreadable: {e}")]
    faces: list[Face] = []
    with _QuietFontTools():
        try:
            n = 1
            if p.suffix.lower() in (".ttc", ".otc"):
                n = len(TTCollection(str(p), lazy=True).fonts)
            for i in range(n):
                tt = TTFont(str(p), fontNumber=i, lazy=True)
                names = tt["name"] if "name" in tt else None
                face = Face(
                    file=str(path), index=i, n_faces=n, sha256=digest,
                    family=(names.getBestFamilyName() or "") if names else "",
                    style=(names.getBestSubFamilyName() or "") if names else "",
                    weight=int(tt["OS/2"].usWeightClass) if "OS/2" in tt else 400,
                )
                face.italic = _is_slanted(tt) or any(w in face.style.casefold() for w in _SLOPE_WORDS)
                face.family_key = family_key(face.family, face.italic)
                if not _has_outlines(tt):
                    face.bitmap_size = _bitmap_strike(tt)
                    if face.bitmap_size is None:
                        face.status, face.reason = "excluded", "neither outlines nor bitmap strikes"
                        faces.append(face)
                        continue
                cmap = tt.getBestCmap() or {}
                face.notdef_char = next((cp for cp in _NOTDEF_PROBES if cp not in cmap), None)
                face.covered = _drawn_codepoints(tt, p, i, req, face.bitmap_size)
                face.coverage = len(face.covered)
                faces.append(face)
                tt.close()
        except (TTLibError, OSError, KeyError, AssertionError, ValueError, IndexError, TypeError) as e:
            faces.append(Face(file=str(path), index=len(faces), sha256=digest, status="excluded",
                              reason=f"unreadable by fontTools/FreeType: {type(e).__name__}: {e}"))
    return faces


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "font"


def assign_design_ids(faces: Sequence[Face]) -> None:
    """Short stable ids: file stem (plus ``-<face>`` in collections), ``-<sha8>`` when two
    different files share a stem. Copies of one file (same sha256 and face) share their id."""
    base = [_slug(Path(f.file).stem) + (f"-{f.index}" if f.n_faces > 1 else "") for f in faces]
    keys: dict[str, set] = {}
    for f, b in zip(faces, base):
        keys.setdefault(b, set()).add((f.sha256, f.index))
    taken: dict[str, tuple] = {}
    for f, b in zip(faces, base):
        key = (f.sha256, f.index)
        did = f"{b}-{f.sha256[:8]}" if len(keys[b]) > 1 else b
        k = 2
        while taken.setdefault(did, key) != key:
            did, k = f"{b}-{f.sha256[:8]}-{k}", k + 1
        f.design_id = did


# -------------------------------------------------------------------------------- rendering


_FONT_CACHE: dict[tuple, ImageFont.FreeTypeFont] = {}


def open_face(file: str | os.PathLike, index: int, size: int) -> ImageFont.FreeTypeFont:
    """A FreeType font (basic layout: no shaping, identical on every machine), cached per process."""
    key = (str(file), index, size)
    font = _FONT_CACHE.get(key)
    if font is None:
        if len(_FONT_CACHE) > 16:
            _FONT_CACHE.clear()
        font = ImageFont.truetype(str(file), size, index=index, layout_engine=ImageFont.Layout.BASIC)
        _FONT_CACHE[key] = font
    return font


def render_ink(font: ImageFont.FreeTypeFont, char: str) -> Image.Image | None:
    """The glyph's ink (white on black, 'L'), cropped to its bounding box; None if it draws nothing."""
    left, top, right, bottom = font.getbbox(char, anchor="ls")
    if right <= left or bottom <= top:
        return None
    pad = 2
    im = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(im).text((pad - left, pad - top), char, font=font, fill=255, anchor="ls")
    box = im.getbbox()
    return im.crop(box) if box else None


def fit_ink(ink: Image.Image, image_size: int, fill: float = 0.85, nearest: bool = False,
            shift: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Scale ink so its larger side is ``fill * image_size``, centre it (moved by ``shift``, fractions
    in [-1, 1] of the free margin); black ink on white."""
    w, h = ink.size
    target = max(1, round(fill * image_size))
    scale = target / max(w, h)
    nw, nh = max(1, min(image_size, round(w * scale))), max(1, min(image_size, round(h * scale)))
    if (nw, nh) != (w, h):
        ink = ink.resize((nw, nh), Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS)
    canvas = Image.new("L", (image_size, image_size), 0)
    mx, my = (image_size - nw) // 2, (image_size - nh) // 2
    canvas.paste(ink, (mx + round(shift[0] * mx), my + round(shift[1] * my)))
    return Image.eval(canvas, lambda v: 255 - v)


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


def view_seed(seed: int, design_id: str, cp: int, view: int) -> list[int]:
    """The generator key of one jittered view: independent of worker count and render order."""
    design = int.from_bytes(hashlib.sha256(design_id.encode("utf-8")).digest()[:4], "big")
    return [seed, design, cp, view]


def image_name(cp: int, view: int) -> str:
    return f"{cp:04x}.png" if view == 0 else f"{cp:04x}_{view}.png"


def _notdef_ink(font: ImageFont.FreeTypeFont, notdef_char: int | None) -> Image.Image | None:
    return None if notdef_char is None else render_ink(font, chr(notdef_char))


def _same(a: Image.Image | None, b: Image.Image | None) -> bool:
    return a is not None and b is not None and a.size == b.size and a.tobytes() == b.tobytes()


def render_glyph(
    file: str | os.PathLike, index: int, char: str, image_size: int, fill: float = 0.85,
    bitmap_size: int | None = None,
) -> Image.Image | None:
    """One glyph as the benchmark renders it: ``image_size`` square 'L' image, or None if blank."""
    font = open_face(file, index, bitmap_size or 2 * image_size)
    ink = render_ink(font, char)
    return None if ink is None else fit_ink(ink, image_size, fill, nearest=bitmap_size is not None)


def _probe_face(args) -> tuple[np.ndarray | None, str]:
    """Probe renderings of one face as (n_probes, PROBE_SIZE**2) float32, or (None, why not)."""
    file, index, bitmap_size, notdef_char, probes, fill = args
    try:
        font = open_face(file, index, bitmap_size or 2 * PROBE_SIZE)
        notdef = _notdef_ink(font, notdef_char)
        out = np.empty((len(probes), PROBE_SIZE * PROBE_SIZE), dtype=np.float32)
        blank, boxes = [], []
        for k, cp in enumerate(probes):
            ink = render_ink(font, chr(cp))
            if ink is None:
                blank.append(chr(cp))
                continue
            if _same(ink, notdef):
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


def _render_chunk(args) -> tuple[int, list[tuple[int, str]]]:
    """Render some code points of one design into ``dest``; return (count, [(cp, why bad)])."""
    file, index, bitmap_size, notdef_char, cps, image_size, fill, dest, views, seed = args
    font = open_face(file, index, bitmap_size or 2 * image_size)
    notdef = _notdef_ink(font, notdef_char)
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
        if _same(ink, notdef):
            bad.append((cp, "renders as .notdef"))
            continue
        nearest = bitmap_size is not None
        fit_ink(ink, image_size, fill, nearest).save(dest / image_name(cp, 0), format="PNG")
        for view in range(1, views):
            rng = np.random.default_rng(view_seed(seed, dest.name, cp, view))
            jittered_view(ink, image_size, fill, nearest, rng).save(dest / image_name(cp, view), format="PNG")
    return len(cps), bad


# ------------------------------------------------------------------------- design selection


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


# ------------------------------------------------------------------------------- the stage


def _missing_fonts_error(cfg: dict, searched: list[dict], faces: list[Face], n_designs: int) -> DmlReproError:
    where = "\n".join(
        f"  {s['path']}: " + (f"{s['font_files']} font file(s)" if s["exists"] else "missing")
        for s in searched
    ) or "  (no font_dirs configured)"
    groups: dict[str, list[Face]] = {}
    for f in faces:
        if f.status == "excluded":
            key = re.sub(r"[\d.]+", "N", f.reason.split(" (")[0].split(":")[0])
            groups.setdefault(key, []).append(f)
    why = "".join(
        f"\n  {len(fs)} face(s), e.g. {fs[0].label()}: {fs[0].reason}"
        for fs in sorted(groups.values(), key=lambda fs: -len(fs))
    )
    pkgs = " ".join(GLYPH_FONT_PACKAGES)
    return DmlReproError(
        f"glyphs: {n_designs} usable font design(s) found, but min_designs = {cfg['min_designs']}.\n"
        f"Font files searched:\n{where}\n"
        f"{len(faces)} face(s) read" + (f"; left out:{why}" if why else "") + "\n"
        "The glyphs benchmark renders characters in the fonts of these Debian packages:\n"
        f"  {pkgs}\n"
        "Get them without root into ./fonts (apt-get download + dpkg-deb -x):\n"
        "  make fonts        # runs workflow/scripts/fetch_fonts.sh\n"
        "or install them system-wide:\n"
        f"  sudo apt-get install {pkgs}\n"
        "and point datasets.glyphs.font_dirs in params.yaml at /usr/share/fonts (or any folder that\n"
        "holds them; every other font found there then takes part too)."
    )


def _pool(workers: int):
    if workers <= 1:
        return None
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ctx.Pool(workers)


def _map(pool, fn, items: list, progress=None, weight=lambda item: 1):
    """Ordered map over ``items`` (inline without a pool), updating ``progress`` as results arrive."""
    it = pool.imap(fn, items, chunksize=1) if pool is not None else map(fn, items)
    out = []
    for item, res in zip(items, it):
        out.append(res)
        if progress is not None:
            progress.update(weight(item))
    return out


def _progress(total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                mininterval=0.5 if sys.stderr.isatty() else 5.0)


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


@DATASETS.register("glyphs", protocol="leave_one_out", splits=["train", "val", "test"],
                   stand_in_for="CUB-200-2011 (glyphs), Cars196, SOP, In-Shop, VehicleID (its settings give each shape)",
                   schema=SETTINGS_SCHEMA)
def prepare_glyphs(cfg: dict, out_dir: str | os.PathLike) -> dict:
    """Build the glyphs dataset in ``out_dir`` (see the module doc); returns the info.json dict."""
    t0 = time.time()
    cfg = resolve_config(cfg)
    out_dir = Path(out_dir)
    requested = parse_characters(cfg["characters"])
    req_set = set(requested)
    workers = cfg["workers"] or os.cpu_count() or 1
    files, searched = find_font_files(cfg["font_dirs"], cfg["fonts"])

    pool = _pool(min(workers, max(1, len(files))))
    try:
        # 1-2. faces and coverage -----------------------------------------------------------
        with _progress(len(files), "glyphs: reading fonts", "file") as bar:
            per_file = _map(pool, _read_font_file_args, [(str(f), req_set) for f in files], bar)
        faces: list[Face] = []
        first_of_sha: dict[str, str] = {}
        for file_faces in per_file:
            for f in file_faces:
                if f.sha256 and f.status != "excluded":
                    first = first_of_sha.setdefault(f.sha256, f.file)
                    if first != f.file:
                        f.status, f.reason = "excluded", f"same file contents (sha256) as {first}"
                faces.append(f)
        assign_design_ids(faces)
        timings = {"read": time.time() - t0}
        min_cov = int(np.ceil(cfg["min_coverage"] * len(requested)))
        for f in faces:
            if f.status == "excluded":
                continue
            pat = next((p for p in cfg["exclude"] if fnmatch.fnmatch(Path(f.file).name.lower(), p.lower())), None)
            if pat is not None:
                f.status, f.reason = "excluded", f"matches exclude pattern {pat!r}"
            elif f.coverage == 0 or f.coverage < min_cov:
                f.status, f.reason = "excluded", (
                    f"draws only {f.coverage} of the {len(requested)} requested characters "
                    f"(min_coverage {cfg['min_coverage']} needs {min_cov})")
        cands = [f for f in faces if f.status != "excluded"]
        if len(cands) < max(1, cfg["min_designs"]):
            raise _missing_fonts_error(cfg, searched, faces, len(cands))
        common = sorted(set.intersection(*(set(f.covered) for f in cands)))
        if not common:
            raise DmlReproError(
                "glyphs: no requested character is drawn by every candidate font face; candidates: "
                + ", ".join(f"{f.label()} ({f.coverage})" for f in cands)
                + ". Narrow `characters` or remove the odd fonts (datasets.glyphs.exclude)."
            )

        # 3. probes ------------------------------------------------------------------------
        k = min(cfg["probe_count"], len(common))
        probes = [common[i] for i in sorted(set(np.linspace(0, len(common) - 1, k).round().astype(int).tolist()))]
        with _progress(len(cands), "glyphs: probing designs", "face") as bar:
            probed = _map(pool, _probe_face,
                          [(f.file, f.index, f.bitmap_size, f.notdef_char, probes, cfg["fill"]) for f in cands], bar)
        ok: list[Face] = []
        arrays = []
        for f, (arr, why) in zip(cands, probed):
            if arr is None:
                f.status, f.reason = "excluded", why
            else:
                ok.append(f)
                arrays.append(arr)

        timings["probe"] = time.time() - t0 - sum(timings.values())

        # 4-5. one design per family, then per rendering ------------------------------------
        designs: list[Face] = []
        thr = cfg["duplicate_threshold"]
        n_families = before = 0
        merged = {"same_family": 0, "near_duplicate": 0, "twin": 0}
        if ok:
            sim = similarity_matrix(np.stack(arrays))
            # the rule before the family rule existed: the near-duplicate test over all faces
            before = sum(1 for _, j, _ in select_designs(ok, sim, thr) if j is None)
            reps = family_representatives(ok)
            idx = [i for i, r in enumerate(reps) if r is None]
            n_families = len(idx)
            sub_sim = sim[np.ix_(idx, idx)]
            n_s = min(TWIN_SAMPLE, len(common))
            picks = np.linspace(0, len(common) - 1, n_s).round().astype(int).tolist()
            sample = [common[i] for i in sorted(set(picks))]
            digests: dict[int, list] = {}  # rendered on demand: only faces in a twin-band pair

            def identical(a: int, b: int) -> int:
                for k in (a, b):
                    if k not in digests:
                        digests[k] = rendering_digests(ok[idx[k]], sample, cfg["fill"])
                return count_identical(digests[a], digests[b])

            direct: dict[int, int] = {}
            for a, b, rule in select_designs([ok[i] for i in idx], sub_sim, thr, identical, len(sample)):
                f = ok[idx[a]]
                if b is None:
                    f.status = "kept"
                    continue
                g = ok[idx[b]]
                f.status = "excluded"
                direct[idx[a]] = idx[b]
                merged[rule.replace("-", "_")] += 1
                if rule == "twin":
                    f.reason = (f"twin of {g.design_id}: median probe correlation {sub_sim[a, b]:.3f} > "
                                f"{TWIN_MIN_CORRELATION:.2f} and {identical(a, b)} of {len(sample)} common "
                                f"characters render byte-identically (>= {twin_min_identical(len(sample))})")
                else:
                    f.reason = (f"near-duplicate of {g.design_id} (median probe correlation "
                                f"{sub_sim[a, b]:.3f} > duplicate_threshold {thr})")
            for i, r in enumerate(reps):
                if r is not None:
                    f, g = ok[i], ok[r]
                    f.status = "excluded"
                    direct[i] = r
                    merged["same_family"] += 1
                    f.reason = (f"same family as {g.design_id} (family key '{f.family_key}'; weight {f.weight}, "
                                f"the face closest to weight 400 stands for the family)")
            n_same: dict[int, int] = {}
            for i in direct:
                j = direct[i]
                while j in direct:
                    j = direct[j]
                ok[i].same_design_as = ok[j].design_id
                n_same[j] = n_same.get(j, 0) + 1
            for i, f in enumerate(ok):
                if f.status == "kept":
                    f.reason = f"design of family '{f.family_key}'" + (
                        f"; {n_same[i]} other face(s) are the same design" if i in n_same else "")
            designs = [f for f in ok if f.status == "kept"]
        timings["select"] = time.time() - t0 - sum(timings.values())
        twin_test = {"characters": len(sample), "faces_rendered": len(digests),
                     "min_correlation": TWIN_MIN_CORRELATION, "min_identical": twin_min_identical(len(sample))
                     } if ok else None
        if len(designs) < max(1, cfg["min_designs"]):
            raise _missing_fonts_error(cfg, searched, faces, len(designs))

        # 6. classes -----------------------------------------------------------------------
        covered = [set(f.covered) for f in designs]
        all_common = sorted(set.intersection(*covered))
        counts: dict[int, int] = {}
        for s in covered:
            for cp in s:
                counts[cp] = counts.get(cp, 0) + 1
        n = len(designs)
        for f, s in zip(designs, covered):
            f.limits_classes = sum(1 for cp, c in counts.items() if c == n - 1 and cp not in s)
        lo, hi = cfg["missing_designs"]
        eligible = sorted(cp for cp, c in counts.items() if lo <= n - c <= hi)
        if len(eligible) < 2:
            raise DmlReproError(f"glyphs: only {len(eligible)} character(s) are missing from between {lo} and {hi} "
                                f"of the {n} designs; widen `missing_designs` or `characters`")
        classes = eligible[: cfg["max_classes"]] if cfg["max_classes"] else eligible
        drawn_by = [[cp for cp in classes if cp in s] for s in covered]

        # 7. render (atomically) -------------------------------------------------------------
        with atomic_path(out_dir) as tmp:
            img_root = tmp / "images"
            tasks = []
            chunk = max(1, 256 // cfg["views_per_design"])
            for f, cps in zip(designs, drawn_by):
                (img_root / f.design_id).mkdir(parents=True)
                for s in range(0, len(cps), chunk):
                    tasks.append((f.file, f.index, f.bitmap_size, f.notdef_char, cps[s:s + chunk],
                                  cfg["image_size"], cfg["fill"], str(img_root / f.design_id),
                                  cfg["views_per_design"], cfg["seed"]))
            n_images = sum(map(len, drawn_by)) * cfg["views_per_design"]
            with _progress(n_images, "glyphs: rendering", "img") as bar:
                rendered = _map(pool, _render_chunk, tasks, bar, weight=lambda t: len(t[4]) * t[8])
            timings["render"] = time.time() - t0 - sum(timings.values())
            dropped: dict[int, str] = {}
            for task, (_, bad) in zip(tasks, rendered):
                for cp, why in bad:
                    dropped.setdefault(cp, f"{why} in {Path(task[0]).name}#{task[1]}")
            if dropped:
                for f in designs:
                    for cp in dropped:
                        for view in range(cfg["views_per_design"]):
                            (img_root / f.design_id / image_name(cp, view)).unlink(missing_ok=True)
                classes = [cp for cp in classes if cp not in dropped]
            if len(classes) < 2:
                raise DmlReproError(f"glyphs: only {len(classes)} class(es) left after rendering; "
                                    "widen `characters` or raise `max_classes`")

            rows = manifest_rows(classes, designs, covered, cfg)
            write_manifest(tmp / MANIFEST_NAME, rows)
            split_counts = {s: {"classes": set(), "images": 0} for s in ("train", "val")}
            for row in rows:
                c = split_counts.setdefault(row["split"], {"classes": set(), "images": 0})
                c["classes"].add(row["label"])
                c["images"] += 1
            n_cls = {s: len(c["classes"]) for s, c in split_counts.items()}
            n_img = {s: c["images"] for s, c in split_counts.items()}
            info = {
                "kind": "glyphs",
                "characters": cfg["characters"],
                "requested_characters": len(requested),
                "common_characters": len(all_common),
                "probe_characters": "".join(chr(cp) for cp in probes),
                "twin_test": twin_test,
                "dropped_characters": {f"U+{cp:04X}": why for cp, why in sorted(dropped.items())},
                "image_size": cfg["image_size"],
                "designs": [f.design_id for f in designs],
                "counts": {
                    "font_files": len(files),
                    "faces": len(faces),
                    "families": n_families,
                    "designs_before_family_rule": before,
                    "designs": len(designs),
                    "faces_merged": merged,
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
            write_json(tmp / "info.json", info)
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    _report(info, faces, designs, timings, time.time() - t0, out_dir)
    return info


def manifest_rows(classes: Sequence[int], designs: Sequence[Face], covered: Sequence[set], cfg: dict) -> list[dict]:
    """The manifest rows: every (class, design that draws it, view), its split decided by the class
    (train pool / val / test, :func:`.splits.split_classes` with ``test_classes``) and, for test
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
        raise _cfg_error("test_classes", str(exc)) from None
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


def _read_font_file_args(args):
    return read_font_file(*args)


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
