"""The ``glyphs`` benchmark: characters rendered in many font designs (class = character).

A CUB-shaped stand-in that needs no download beyond Debian font packages: each class is one
character (by default a CJK ideograph), each image is that character in one font *design*; its
settings also give it the shapes of Cars196, SOP, In-Shop and VehicleID (:mod:`.shapes`). The
loader is script-agnostic (the tests use Latin and Greek letters in the DejaVu fonts).

Modules, in the order :func:`prepare_glyphs` uses them: :mod:`.settings` (defaults, checks),
:mod:`.fonts` (font files, faces, family keys), :mod:`.designs` (coverage, probes, one design per
family and per rendering), :mod:`.shapes` (classes and splits), :mod:`.render` (one glyph as an
image), :mod:`.views` (the image files, jittered views), :mod:`.prepare` (the stage). The pipeline
step by step, with its evidence: docs/datasets/glyphs.md.
"""
from __future__ import annotations

from .. import DATASETS
from .designs import PROBE_SIZE, TWIN_MIN_CORRELATION, TWIN_MIN_IDENTICAL, TWIN_SAMPLE
from .fonts import (FONT_SUFFIXES, GLYPH_FONT_PACKAGES, Face, assign_design_ids, family_key, find_font_files,
                    read_font_file)
from .prepare import prepare_glyphs
from .render import render_glyph
from .settings import (DEFAULTS, DEJAVU_DIR, SETTINGS_SCHEMA, TINY_CHARACTERS, parse_characters, resolve_config,
                       tiny_glyphs_config)
from .shapes import manifest_rows

DATASETS.register("glyphs", protocol="leave_one_out", splits=["train", "val", "test"],
                  stand_in_for="CUB-200-2011 (glyphs), Cars196, SOP, In-Shop, VehicleID (its settings give each shape)",
                  schema=SETTINGS_SCHEMA)(prepare_glyphs)

__all__ = [
    "DEFAULTS", "DEJAVU_DIR", "FONT_SUFFIXES", "GLYPH_FONT_PACKAGES", "PROBE_SIZE", "SETTINGS_SCHEMA",
    "TINY_CHARACTERS", "TWIN_MIN_CORRELATION", "TWIN_MIN_IDENTICAL", "TWIN_SAMPLE", "Face",
    "assign_design_ids", "family_key", "find_font_files", "manifest_rows", "parse_characters",
    "prepare_glyphs", "read_font_file", "render_glyph", "resolve_config", "tiny_glyphs_config",
]
