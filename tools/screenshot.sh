#!/usr/bin/env bash
# Screenshot of the real window under Xvfb after a generation on the tiny test models:
# photo with face boxes, preview, gallery. Needs xvfb, xdotool, imagemagick and Mesa's
# Vulkan/GL drivers (apt-get install xvfb xdotool imagemagick mesa-vulkan-drivers libgl1-mesa-dri).
#
#   tools/screenshot.sh BIN OUT.png
set -euo pipefail
BIN=$(realpath "$1") OUT=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# The tiny generation models plus the face models (a 24-d recognizer fits the tiny encoder).
M=$WORK/models
mkdir -p "$M/antelopev2"
cp -r "$ROOT"/tests/fixtures/tiny/models/{arc2face,encoder,vae,scheduler} "$M/"
cp "$ROOT/tests/fixtures/faces/models/antelopev2/scrfd_10g_bnkps.onnx" "$M/antelopev2/"
cp "$ROOT/tests/fixtures/faces/arcface_d24.onnx" "$M/arcface.onnx"

export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$("$ROOT/scripts/onnxruntime.sh")}
export XDG_DATA_HOME=$WORK/data XDG_CONFIG_HOME=$WORK/config HOME=$WORK
export DISPLAY=:97
Xvfb :97 -screen 0 1280x800x24 >/dev/null 2>&1 &
sleep 2
"$BIN" --models "$M" "$ROOT/tests/fixtures/faces/photos/astronaut.jpg" >"$WORK/app.log" 2>&1 &
APP=$!
sleep 10
# Ctrl+Enter: Generate. Without a window manager, focus the window first.
WINDOW=$(xdotool search --name "Arc2Face Studio" | head -n 1 || true)
[[ -n "$WINDOW" ]] && { xdotool windowfocus --sync "$WINDOW" || true; }
xdotool key ctrl+Return || true
sleep "${WAIT_SECONDS:-40}"
kill -0 "$APP" || { echo "the app exited; its log:" >&2; cat "$WORK/app.log" >&2; exit 1; }
import -window root "$OUT"
echo "wrote $OUT"
