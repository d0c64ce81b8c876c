#!/usr/bin/env bash
# Fetch the Debian font packages of the `glyphs` benchmark into ./fonts, without root:
#   apt-get download <packages>   into the .deb cache  (.dmlrepro/debs)
#   dpkg-deb -x <each .deb>       into ./fonts         (fonts end up in fonts/usr/share/fonts)
#
# Usage: workflow/scripts/fetch_fonts.sh            (what `make fonts` runs)
# Env:   FONT_DIR (default: fonts)  DEB_DIR (default: .dmlrepro/debs; point it at a folder of
#        already downloaded .debs to work offline)  PYTHON (default: .venv/bin/python if present,
#        else python, else python3)
#
# The package list comes from dmlrepro.data.glyphs.GLYPH_FONT_PACKAGES (one source of truth).
# Idempotent: .debs already in DEB_DIR are not downloaded again, and a .deb already extracted
# (stamp in FONT_DIR/.fetched/) is not extracted again; an interrupted run is finished by the next.
# On success it touches FONT_DIR/.complete (the Makefile's target).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."   # the repository root
FONT_DIR=${FONT_DIR:-fonts}
DEB_DIR=${DEB_DIR:-.dmlrepro/debs}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python
    elif command -v python >/dev/null 2>&1; then PYTHON=python
    else PYTHON=python3; fi
fi

die() { echo "fetch_fonts: error: $*" >&2; exit 1; }

PKGS=$("$PYTHON" -c 'from dmlrepro.data.glyphs import GLYPH_FONT_PACKAGES; print(" ".join(GLYPH_FONT_PACKAGES))') \
    || die "cannot read the package list from dmlrepro.data.glyphs with '$PYTHON'; install the project first (make install, or pip install -e .) and activate its virtual environment, or set PYTHON=/path/to/venv/bin/python"
read -r -a packages <<< "$PKGS"

command -v dpkg-deb >/dev/null 2>&1 \
    || die "dpkg-deb not found: this script needs a Debian/Ubuntu machine. Elsewhere, get the fonts of these Debian packages some other way and list their folder in datasets.glyphs.font_dirs (params.yaml): ${PKGS}"

mkdir -p "$DEB_DIR" "$FONT_DIR/.fetched"

# newest cached .deb of a package (empty if none)
cached_deb() { ls -1 "$DEB_DIR/${1}_"*.deb 2>/dev/null | sort -V | tail -n 1 || true; }

missing=()
for pkg in "${packages[@]}"; do
    [ -n "$(cached_deb "$pkg")" ] || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; cannot download: ${missing[*]}"
    echo "fetch_fonts: downloading ${#missing[@]} package(s) into $DEB_DIR: ${missing[*]}"
    tmp=$(mktemp -d "$DEB_DIR/.download.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    if ! (cd "$tmp" && apt-get download "${missing[@]}"); then
        die "apt-get download failed (see above). If apt says 'Unable to locate package', refresh the package lists: sudo apt-get update, then rerun 'make fonts'. Or install the fonts system-wide (sudo apt-get install ${PKGS}) and set datasets.glyphs.font_dirs in params.yaml to [/usr/share/fonts] (every other font there then takes part too)"
    fi
    mv "$tmp"/*.deb "$DEB_DIR"/   # only complete downloads reach the cache
fi

extracted=0
for pkg in "${packages[@]}"; do
    deb=$(cached_deb "$pkg")
    [ -n "$deb" ] || die "no .deb for $pkg in $DEB_DIR after downloading"
    stamp="$FONT_DIR/.fetched/$(basename "$deb").done"
    if [ ! -e "$stamp" ]; then
        dpkg-deb -x "$deb" "$FONT_DIR" || die "dpkg-deb -x $deb failed; delete it and rerun to download it again"
        touch "$stamp"
        extracted=$((extracted + 1))
    fi
done

n_fonts=$(find "$FONT_DIR/usr/share/fonts" -type f \( -iname '*.ttf' -o -iname '*.otf' -o -iname '*.ttc' -o -iname '*.otc' \) 2>/dev/null | wc -l)
touch "$FONT_DIR/.complete"
echo "fetch_fonts: ${#packages[@]} packages ready ($extracted extracted now); $n_fonts font files in $FONT_DIR/usr/share/fonts"
