#!/usr/bin/env bash
# Builds the Debian package target/debian/arc2face-studio_<version>-1_<arch>.deb.
#
#   packaging/build-deb.sh [extra cargo-deb options, e.g. --features cuda]
#
# 1. provisions the pinned ONNX Runtime library into target/onnxruntime/ (scripts/onnxruntime.sh),
# 2. installs cargo-deb if it is missing,
# 3. runs `cargo deb` (a release build, then the package; config: [package.metadata.deb] in
#    Cargo.toml) and prints the .deb's path.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

if ! grep -q '^\[package\.metadata\.deb\]' Cargo.toml; then
  echo "build-deb.sh: Cargo.toml has no [package.metadata.deb]" >&2
  exit 1
fi

# The asset list names target/onnxruntime/libonnxruntime.so.1.31.1 relative to the repository root.
ORT_LIB=$(scripts/onnxruntime.sh target/onnxruntime)
echo "ONNX Runtime: $ORT_LIB" >&2

if ! cargo deb --version >/dev/null 2>&1; then
  echo "build-deb.sh: installing cargo-deb" >&2
  cargo install cargo-deb --locked
fi

# --dbgsym: the release profile's line tables go to a separate -dbgsym .ddeb, so the .deb holds a
# stripped binary. cargo deb prints the path of the package it wrote as its last line of stdout.
DEB=$(cargo deb --dbgsym "$@" | grep '\.deb$' | tail -n 1)
if [[ ! -f "$DEB" ]]; then
  echo "build-deb.sh: cargo deb did not report a package file (got: $DEB)" >&2
  exit 1
fi
echo "$DEB"
