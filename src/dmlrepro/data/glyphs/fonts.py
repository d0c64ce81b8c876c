"""Font files and their faces: where they are found, what each face draws, its family key.

Fonts are the ``.ttf .otf .ttc .otc`` files under ``font_dirs`` (recursively, sorted by path) or
exactly the files listed in ``fonts``; every face of a collection is a candidate design, and a file
with the contents (sha256) of an earlier one is left out. A face *draws* a requested character when
its best cmap maps it to a glyph other than ``.notdef`` that has an outline (TrueType: non-empty
``glyf`` data; other formats: a non-empty FreeType bounding box) and that glyph is not a
placeholder shared by more than :data:`MAX_SHARED_GLYPH` requested characters.

:func:`family_key` normalises a face's family name (NFKC, case-folded, ``+`` read as ``plus``,
punctuation and trailing weight, width and slope words dropped, `` italic`` for a slanted face):
faces with the same key are one design. Rules and evidence: docs/datasets/glyphs.md.
"""
from __future__ import annotations

import logging
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from PIL import ImageFont

from ...errors import DmlReproError
from ...hashing import sha256_file

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
MAX_SHARED_GLYPH = 8            # a glyph drawn for more requested characters is a placeholder
_NOTDEF_PROBES = (0x10FFFF, 0xFFFF, 0x10FFFE, 0xFFFE)  # noncharacters: never in a real cmap


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



def flag_copies(per_file: Iterable[list[Face]]) -> list[Face]:
    """The faces of all files in order; a face of a file whose contents (sha256) an earlier file
    has is left out ("same file contents")."""
    faces: list[Face] = []
    first_of_sha: dict[str, str] = {}
    for file_faces in per_file:
        for f in file_faces:
            if f.sha256 and f.status != "excluded":
                first = first_of_sha.setdefault(f.sha256, f.file)
                if first != f.file:
                    f.status, f.reason = "excluded", f"same file contents (sha256) as {first}"
            faces.append(f)
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


def missing_fonts_error(min_designs: int, searched: list[dict], faces: list[Face], n_designs: int) -> DmlReproError:
    """Too few designs: where fonts were looked for, why faces were left out, how to get the fonts."""
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
        f"glyphs: {n_designs} usable font design(s) found, but min_designs = {min_designs}.\n"
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
