#!/usr/bin/env bash
# Provisions the ONNX Runtime shared library that face analysis loads at run time (ort's
# load-dynamic): takes it from the pinned PyPI `onnxruntime` wheel and checks its sha256.
#
#   scripts/onnxruntime.sh [DEST_DIR]    default: target/onnxruntime
#
# Prints the library's path. Point the app at it with ORT_DYLIB_PATH, or copy it next to the
# `arc2face` executable or into the app's data folder (see README.md).
set -euo pipefail

VERSION=1.31.1
# libonnxruntime.so.1.31.1 from onnxruntime-1.31.1-*-manylinux_2_28_x86_64 wheels.
LIB_SHA256_LINUX_X86_64=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) LIB=libonnxruntime.so.$VERSION; EXPECTED=$LIB_SHA256_LINUX_X86_64 ;;
  *) echo "scripts/onnxruntime.sh: no pinned ONNX Runtime for $(uname -s) $(uname -m); set ORT_DYLIB_PATH to an ONNX Runtime $VERSION library" >&2; exit 1 ;;
esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/target/onnxruntime}
mkdir -p "$DEST"
if [[ -f "$DEST/$LIB" ]] && echo "$EXPECTED  $DEST/$LIB" | sha256sum --check --status; then
  echo "$DEST/$LIB"
  exit 0
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$WORK" "onnxruntime==$VERSION" >&2
WHEEL=$(ls "$WORK"/onnxruntime-"$VERSION"-*.whl)
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('onnxruntime/capi/$LIB', sys.argv[2])" "$WHEEL" "$WORK"
if ! echo "$EXPECTED  $WORK/onnxruntime/capi/$LIB" | sha256sum --check --status; then
  echo "scripts/onnxruntime.sh: $LIB from $(basename "$WHEEL") does not match the pinned sha256" >&2
  exit 1
fi
cp "$WORK/onnxruntime/capi/$LIB" "$DEST/$LIB.part"
mv "$DEST/$LIB.part" "$DEST/$LIB"
echo "$DEST/$LIB"
