#!/usr/bin/env bash
# Builds the add-on package target/debian/arc2face-studio-cuda_<version>-1_amd64.deb and prints
# its path: the CUDA build of arc2face (scripts/build-cuda) as /usr/bin/arc2face-cuda, and the
# CUDA 13.0 runtime, cuBLAS and cuRAND libraries it links (from the same PyPI wheels) in
# /usr/lib/arc2face/. Installed beside arc2face-studio of the same version, `arc2face` hands over
# to the CUDA build whenever the NVIDIA driver (libcuda.so.1, driver 580 or later) loads, and
# stays on the CPU otherwise: one command, one app, whichever machine.
#
#   packaging/build-deb.sh && packaging/build-deb-cuda.sh
#   sudo apt install ./target/debian/arc2face-studio_*.deb ./target/debian/arc2face-studio-cuda_*.deb
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

BIN=$(scripts/build-cuda)
VERSION=$(cargo metadata --no-deps --format-version 1 | python3 -c "import json, sys; print(json.load(sys.stdin)['packages'][0]['version'])")
TOOLKIT=target/cuda-toolkit
LIBS=(libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10)

STAGE=target/debian/arc2face-studio-cuda
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN" "$STAGE/usr/bin" "$STAGE/usr/lib/arc2face" "$STAGE/usr/share/doc/arc2face-studio-cuda"
install -m 755 "$BIN" "$STAGE/usr/bin/arc2face-cuda"
for lib in "${LIBS[@]}"; do install -m 644 "$TOOLKIT/nvidia/cu13/lib/$lib" "$STAGE/usr/lib/arc2face/"; done
# NVIDIA's licence for the redistributed libraries, as their wheels carry it.
{
  echo "The CUDA libraries in /usr/lib/arc2face come from NVIDIA's PyPI wheels (nvidia-cuda-runtime,"
  echo "nvidia-cublas, nvidia-curand) under NVIDIA's licence, which follows."
  echo
  cat "$TOOLKIT"/nvidia_cuda_runtime-*.dist-info/licenses/License.txt
} >"$STAGE/usr/share/doc/arc2face-studio-cuda/copyright"
cat >"$STAGE/DEBIAN/control" <<CONTROL
Package: arc2face-studio-cuda
Version: $VERSION-1
Architecture: amd64
Maintainer: Arc2Face Studio developers
Depends: arc2face-studio (= $VERSION-1)
Section: graphics
Priority: optional
Installed-Size: $(du -sk "$STAGE/usr" | cut -f1)
Description: Arc2Face Studio on NVIDIA GPUs
 The CUDA build of Arc2Face Studio, with the CUDA 13.0 runtime, cuBLAS and cuRAND libraries it
 links. arc2face runs it instead of the CPU build whenever the NVIDIA driver (580 or later) is
 present. It generates in f16 on the GPU.
CONTROL
DEB=target/debian/arc2face-studio-cuda_${VERSION}-1_amd64.deb
dpkg-deb --root-owner-group -Zzstd --build "$STAGE" "$DEB" >&2
echo "$ROOT/$DEB"
