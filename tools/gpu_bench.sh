#!/usr/bin/env bash
# The GPU benchmark: ours (the CUDA build) against diffusers (PyTorch, SDPA, fp16) on one GPU,
# 4 images × 25 steps × 512², guidance 3, on SD1.5-sized random weights. Prints it/s, time to the
# first step (= first preview), peak GPU memory, cold start (process start → first image), and
# how far our f16 latents are from our f32 ones and from diffusers' fp16 ones.
#
# It runs on a machine with an NVIDIA GPU, PyTorch and the CUDA 13 libraries in its Python
# environment, and no package index. Prepare everything here and carry it:
#   scripts/build-cuda                                   # target/cuda/release/arc2face-cuda
#   python3 -m pip download --no-deps -d target/gpu-wheels diffusers huggingface_hub safetensors \
#       transformers tokenizers regex  # whatever the GPU machine's Python lacks
#   tools/gpu_bench.sh target/cuda/release/arc2face-cuda target/gpu-wheels
# Where what can be carried is limited, carry the binary xz-compressed (76 MB → 14 MB:
# xz -k target/cuda/release/arc2face-cuda) and give the .xz: it is unpacked here.
set -euo pipefail
BIN=$(realpath "$1")
WHEELS=${2:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${GPU_BENCH_WORK:-/tmp/arc2face-gpu-bench}
PY=${PYTHON:-python3}
mkdir -p "$WORK"
if [[ $BIN == *.xz ]]; then
  xz -dc "$BIN" >"$WORK/arc2face-cuda" && chmod +x "$WORK/arc2face-cuda"
  BIN=$WORK/arc2face-cuda
fi

if [[ -n $WHEELS ]]; then
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl >&2 || true
fi
# The CUDA libraries of PyTorch's environment serve our binary too.
CUDA_LIBS=$("$PY" - <<'EOF'
import glob, os, site
dirs = set()
for base in site.getsitepackages():
    for lib in glob.glob(os.path.join(base, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH=$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

[[ -d $WORK/full/models/arc2face ]] || "$PY" "$ROOT/tools/make_fixtures.py" --full-size --out "$WORK/full" >&2
MODELS=$WORK/full/models
"$PY" -c "import numpy as np; np.save('$WORK/id.npy', np.random.default_rng(1).standard_normal(512).astype(np.float32))"

# Peak memory in use on the GPU while a command runs (MiB), sampled every 50 ms.
peak_gpu() { # out-file, command...
  local out=$1; shift
  (while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1; sleep 0.05; done) >"$out.mem" &
  local sampler=$!
  local start; start=$(date +%s.%N)
  "$@" >"$out.out" 2>"$out.err"
  local end; end=$(date +%s.%N)
  kill $sampler 2>/dev/null || true
  echo "$start $end" >"$out.wall"
  sort -n "$out.mem" | tail -n 1 >"$out.peak"
}

JOB=(--num-images 4 --steps 25 --size 512 --guidance 3 --seed 1)
BASE=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1)
for dtype in f16 f32; do
  peak_gpu "$WORK/ours_$dtype" "$BIN" generate --models "$MODELS" --embedding "$WORK/id.npy" "${JOB[@]}" \
    --device cuda --dtype "$dtype" --out "$WORK/ours_$dtype" --latents-out "$WORK/ours_$dtype.npy"
done
peak_gpu "$WORK/diffusers" "$PY" "$ROOT/tools/gpu_bench_diffusers.py" --models "$MODELS" --embedding "$WORK/id.npy" \
  --out "$WORK/diffusers" --latents-out "$WORK/diffusers.npy"

"$PY" - "$WORK" "$BASE" <<'EOF'
import re, sys
import numpy as np
work, base = sys.argv[1], float(sys.argv[2])
def read(name):
    err = open(f"{work}/{name}.err").read()
    start, end = map(float, open(f"{work}/{name}.wall").read().split())
    peak = float(open(f"{work}/{name}.peak").read() or 0) - base
    rate = re.search(r"steps at ([0-9.]+) it/s", err)
    first = re.search(r"first step after ([0-9.]+)s", err)
    image = re.search(r"image 1/4 done in ([0-9.]+)s", err) or re.search(r"first image after ([0-9.]+)s", err)
    return dict(rate=float(rate.group(1)) if rate else float("nan"), first=float(first.group(1)) if first else float("nan"),
                wall=end - start, peak=peak, image=float(image.group(1)) if image else float("nan"))
rows = {n: read(n) for n in ("ours_f16", "ours_f32", "diffusers")}
print(f"{'':12} {'it/s':>8} {'first step s':>13} {'peak GPU MiB':>13} {'wall s':>8}")
for n, r in rows.items():
    print(f"{n:12} {r['rate']:8.2f} {r['first']:13.3f} {r['peak']:13.0f} {r['wall']:8.1f}")
print(f"throughput ours f16 / diffusers fp16: {rows['ours_f16']['rate'] / rows['diffusers']['rate']:.2f}x")
lat = {n: np.load(f"{work}/{n}.npy").astype(np.float64) for n in rows}
rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
print(f"latents: ours f16 vs ours f32 {rel(lat['ours_f16'], lat['ours_f32']):.2e}; "
      f"ours f16 vs diffusers fp16 {rel(lat['ours_f16'], lat['diffusers']):.2e}; "
      f"ours f32 vs diffusers fp16 {rel(lat['ours_f32'], lat['diffusers']):.2e}")
EOF
