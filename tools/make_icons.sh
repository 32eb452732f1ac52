#!/usr/bin/env bash
# Renders the app icon master icons/arc2face.svg into the files the packages use:
#   icons/hicolor/<N>x<N>/apps/io.github.arc2face.Studio.png   N = 16 24 32 48 64 128 256 512
#   icons/arc2face.ico    Windows (16, 24, 32, 48, 64, 256)
#   icons/arc2face.icns   macOS  (16, 32, 48, 128, 256, 512: the sizes ICNS has)
#
#   tools/make_icons.sh
#
# Needs rsvg-convert (Debian/Ubuntu: librsvg2-bin) and ImageMagick (`magick` or `convert`);
# png2icns (icnsutils) for the .icns, else a small python3 writer that stores PNG entries.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ICONS=$ROOT/icons
SVG=$ICONS/arc2face.svg
APP_ID=io.github.arc2face.Studio
SIZES=(16 24 32 48 64 128 256 512)
ICO_SIZES=(16 24 32 48 64 256)
ICNS_SIZES=(16 32 48 128 256 512)

command -v rsvg-convert >/dev/null || { echo "make_icons.sh: rsvg-convert not found (apt-get install librsvg2-bin)" >&2; exit 1; }
if command -v magick >/dev/null; then IM=(magick)
elif command -v convert >/dev/null; then IM=(convert)
else echo "make_icons.sh: ImageMagick not found (apt-get install imagemagick)" >&2; exit 1
fi

png() { echo "$ICONS/hicolor/$1x$1/apps/$APP_ID.png"; }

for n in "${SIZES[@]}"; do
  mkdir -p "$ICONS/hicolor/${n}x${n}/apps"
  rsvg-convert --width "$n" --height "$n" --format png "$SVG" --output "$(png "$n")"
  echo "$(png "$n")"
done

ico_inputs=()
for n in "${ICO_SIZES[@]}"; do ico_inputs+=("$(png "$n")"); done
"${IM[@]}" "${ico_inputs[@]}" "$ICONS/arc2face.ico"
echo "$ICONS/arc2face.ico"

icns_inputs=()
for n in "${ICNS_SIZES[@]}"; do icns_inputs+=("$(png "$n")"); done
rm -f "$ICONS/arc2face.icns"
if command -v png2icns >/dev/null && png2icns "$ICONS/arc2face.icns" "${icns_inputs[@]}" >/dev/null \
   && [[ -s "$ICONS/arc2face.icns" ]]; then
  :
else
  # Fallback: an ICNS whose entries are plain PNG files (macOS 10.7+ reads these).
  python3 - "$ICONS/arc2face.icns" "${icns_inputs[@]}" <<'PY'
import struct, sys
# ICNS types that hold a PNG, by pixel size; 48 has none and is skipped.
TYPES = {16: b"icp4", 32: b"icp5", 64: b"icp6", 128: b"ic07", 256: b"ic08", 512: b"ic09", 1024: b"ic10"}
out, entries = sys.argv[1], b""
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    width = struct.unpack(">I", data[16:20])[0]
    if width not in TYPES:
        continue
    entries += TYPES[width] + struct.pack(">I", 8 + len(data)) + data
open(out, "wb").write(b"icns" + struct.pack(">I", 8 + len(entries)) + entries)
PY
fi
echo "$ICONS/arc2face.icns"
