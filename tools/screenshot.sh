#!/usr/bin/env bash
# Screenshot of the real window under Xvfb on the tiny test models. Needs xvfb, xdotool,
# imagemagick and Mesa's Vulkan/GL drivers (apt-get install xvfb xdotool imagemagick
# mesa-vulkan-drivers libgl1-mesa-dri).
#
#   tools/screenshot.sh BIN OUT.png [default|pose|sweep|expression]
#
# default: generates (Ctrl+Enter) and shoots WAIT_SECONDS (40) later: photo with face boxes,
#          preview, gallery (assets/screenshot.png; the CI smoke run).
# pose:    ticks "Use this pose" and shoots while the head in the Pose panel is being dragged
#          (button still held) to yaw 30°, pitch 10°: the turned head with its skeleton
#          (assets/screenshot-pose.png).
# sweep:   head at yaw −30°, "Sweep from this pose", head to yaw +30°, "Sweep to this pose"
#          (4 images), then shoots once the images are in the gallery, at most WAIT_SECONDS
#          later: the framed "Pose sweep" group (assets/screenshot-sweep.png).
# expression: folds the Pose panel, ticks "Use this expression", picks "Mouth open",
#          Randomise, and generates: the Expression panel in use (assets/screenshot-expression.png).
#
# The pose and sweep modes click at fixed points of the 1280×800 window as the app lays it out
# (the Pose panel's 300-point head at 929..1229 × 73..373); a layout change moves them.
set -euo pipefail
BIN=$(realpath "$1") OUT=$2 MODE=${3:-default}
case $MODE in
    default | pose | sweep | expression) ;;
    *) echo "usage: $0 BIN OUT.png [default|pose|sweep|expression]" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# The tiny generation models (with the pose ControlNet and the Expression Adapter) plus the face models (a 24-d
# recognizer fits the tiny encoder).
M=$WORK/models
mkdir -p "$M/antelopev2"
cp -r "$ROOT"/tests/fixtures/tiny/models/{arc2face,encoder,vae,scheduler,controlnet,exp_adapter} "$M/"
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
# Without a window manager, focus the window first.
WINDOW=$(xdotool search --name "Arc2Face Studio" | head -n 1 || true)
[[ -n "$WINDOW" ]] && { xdotool windowfocus --sync "$WINDOW" || true; }

# Software rendering is slow: each action gets time for its frames.
click() {
    xdotool mousemove --window "$WINDOW" "$1" "$2" click 1
    sleep 2
}
# Presses at ($1, $2) and moves by ($3, $4) in $5 steps, leaving the button held.
press_and_move() {
    xdotool mousemove --window "$WINDOW" "$1" "$2" mousedown 1
    sleep 0.3
    for ((i = 0; i < $5; i++)); do
        xdotool mousemove_relative -- $(($3 / $5)) $(($4 / $5))
        sleep 0.5
    done
    sleep 1
}
release() {
    xdotool mouseup 1
    sleep 1
}
# Points in the window: the Pose panel's checkbox, head (above the eyes: neither the roll ring
# nor the chin handle) and sweep buttons.
USE_POSE=(936 60) HEAD=(1079 200) SWEEP_FROM=(999 563) SWEEP_TO=(1140 563)
# With the Pose panel folded: its header, and the Expression panel's checkbox, preset and button.
POSE_HEADER=(940 37) USE_EXPRESSION=(936 84) MOUTH_OPEN=(1040 129) RANDOMISE=(968 515)
# The head turns by 120° per 300 points dragged: 2.5 points a degree.

if [[ $MODE == pose || $MODE == sweep ]]; then
    [[ -n "$WINDOW" ]] || { echo "no window; the app's log:" >&2; cat "$WORK/app.log" >&2; exit 1; }
    sleep 5 # the photo's faces and the head
    click "${USE_POSE[@]}"
fi
case $MODE in
    default)
        xdotool key ctrl+Return || true # Generate
        sleep "${WAIT_SECONDS:-40}"
        ;;
    pose)
        press_and_move "${HEAD[@]}" 75 -25 5 # yaw +30°, pitch +10°
        ;;
    expression)
        [[ -n "$WINDOW" ]] || { echo "no window; the app's log:" >&2; cat "$WORK/app.log" >&2; exit 1; }
        sleep 5
        click "${POSE_HEADER[@]}"
        click "${USE_EXPRESSION[@]}"
        click "${MOUTH_OPEN[@]}"
        click "${RANDOMISE[@]}"
        xdotool key ctrl+Return || true # Generate
        sleep "${WAIT_SECONDS:-20}"
        ;;
    sweep)
        press_and_move "${HEAD[@]}" -75 0 5 # yaw −30°
        release
        click "${SWEEP_FROM[@]}"
        press_and_move $((HEAD[0] - 40)) "${HEAD[1]}" 150 0 10 # yaw +30°
        release
        click "${SWEEP_TO[@]}"
        # Until the sweep's 4 images are written, then a few seconds for their thumbnails.
        for ((waited = 0; waited < ${WAIT_SECONDS:-40}; waited++)); do
            (($(find "$WORK/data" -name '*.png' 2>/dev/null | wc -l) >= 4)) && break
            sleep 1
        done
        sleep 5
        ;;
esac
kill -0 "$APP" || { echo "the app exited; its log:" >&2; cat "$WORK/app.log" >&2; exit 1; }
import -window root "$OUT"
if [[ $MODE == pose ]]; then release; fi # after the shot: the drag was still going on in it
echo "wrote $OUT"
