"""One glyph as an image: FreeType via Pillow, cropped to its ink, fitted and centred.

FreeType (basic layout: no shaping, identical on every machine) draws the glyph at twice the
image size (bitmap-only fonts at their largest strike); the ink is cropped to its bounding box,
scaled (LANCZOS; NEAREST for bitmap fonts) so that its larger side is ``fill`` x ``image_size``,
and centred on a white square: black ink, 8-bit grayscale ('L'). A glyph that draws nothing, or
draws the same ink as the face's ``.notdef`` box, is no rendering of the character.
"""
from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont


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


def render_glyph(
    file: str | os.PathLike, index: int, char: str, image_size: int, fill: float = 0.85,
    bitmap_size: int | None = None,
) -> Image.Image | None:
    """One glyph as the benchmark renders it: ``image_size`` square 'L' image, or None if blank."""
    font = open_face(file, index, bitmap_size or 2 * image_size)
    ink = render_ink(font, char)
    return None if ink is None else fit_ink(ink, image_size, fill, nearest=bitmap_size is not None)


def notdef_ink(font: ImageFont.FreeTypeFont, notdef_char: int | None) -> Image.Image | None:
    """The ink of the face's ``.notdef`` box (drawn for ``notdef_char``, a code point outside its cmap)."""
    return None if notdef_char is None else render_ink(font, chr(notdef_char))


def same_ink(a: Image.Image | None, b: Image.Image | None) -> bool:
    """Whether two inks are the same image (neither None)."""
    return a is not None and b is not None and a.size == b.size and a.tobytes() == b.tobytes()
