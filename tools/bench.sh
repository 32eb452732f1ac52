#!/usr/bin/env bash
# Wall time and peak RSS: the Rust CLI vs the diffusers reference, same job, CPU.
#
#   tools/bench.sh --bin target/release/arc2face --models /tmp/full/models \
#       [--size 256] [--steps 4] [--guidance 3] [--threads N] [--rounds 3] [--python /tmp/pyref/bin/python]
#
# Builds nothing. Make the models with:
#   /work/pyref/bin/python tools/make_fixtures.py --full-size --out /tmp/full
# Runs each command under /usr/bin/time -v (apt-get install -y time if missing), --rounds times
# each, alternating (rust, diffusers, rust, …) so that drift in the machine's load hits both, and
# prints every run's wall seconds and peak RSS, their medians and the Rust/diffusers ratios of
# the medians. The identity is a random 512-d vector (seed 1), written to a temp .npy and given
# to both.
set -euo pipefail

BIN="" MODELS="" SIZE=256 STEPS=4 GUIDANCE=3 THREADS="" ROUNDS=3 PY=/tmp/pyref/bin/python
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --guidance) GUIDANCE=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ -n "$BIN" && -n "$MODELS" ]] || { echo "usage: $0 --bin PATH --models DIR [--size N] [--steps N] [--guidance G] [--threads N]" >&2; exit 2; }
[[ -x "$BIN" ]] || { echo "not executable: $BIN" >&2; exit 2; }
[[ -d "$MODELS/arc2face" ]] || { [[ -d "$MODELS/models/arc2face" ]] && MODELS="$MODELS/models"; } || true
[[ -d "$MODELS/arc2face" ]] || { echo "no arc2face/ under $MODELS" >&2; exit 2; }

if [[ ! -x /usr/bin/time ]]; then
  echo "installing GNU time" >&2
  apt-get install -y time >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y time >/dev/null; }
fi

HERE=$(cd "$(dirname "$0")" && pwd)
THREADS=${THREADS:-$(lscpu -p=core | grep -v "^#" | sort -u | wc -l)}  # physical cores, as ours defaults to
export OMP_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
WORK=$(mktemp -d /tmp/arc2face_bench.XXXXXX)
E="$WORK/id.npy"
"$PY" -c "import numpy as np; np.save('$E', np.random.default_rng(1).standard_normal(512).astype(np.float32))"

run() { # name, command...
  local name=$1; shift
  echo "== $name: $*" >&2
  if ! /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"; then
    echo "$name failed; stderr tail:" >&2; tail -n 20 "$WORK/$name.err" >&2; cat "$WORK/$name.time" >&2 || true
    exit 1
  fi
  tail -n 15 "$WORK/$name.err" >&2
}
wall() { # "Elapsed (wall clock) time (h:mm:ss or m:ss): 0:12.34" -> seconds
  awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; printf "%.2f", s}' "$1"
}
rss() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$1"; }  # MiB

# Both read the same 4 GB of weights: load them into the page cache first so neither run pays
# for the disk and the order does not matter.
cat "$MODELS"/*/* >/dev/null

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

printf '%-12s %10s %14s\n' "" "wall s" "peak RSS MiB" >"$WORK/table"
for round in $(seq 1 "$ROUNDS"); do
  run "rust$round" "$BIN" generate --threads "$THREADS" --models "$MODELS" --embedding "$E" --size "$SIZE" \
    --steps "$STEPS" --num-images 1 --guidance "$GUIDANCE" --seed 1 --out "$WORK/rust"
  run "diffusers$round" "$PY" "$HERE/bench_diffusers.py" --models "$MODELS" --embedding "$E" --size "$SIZE" \
    --steps "$STEPS" --num-images 1 --guidance "$GUIDANCE" --seed 1 --out "$WORK/diffusers" --threads "$THREADS"
  for name in rust diffusers; do
    printf '%-12s %10s %14s\n' "$name $round" "$(wall "$WORK/$name$round.time")" "$(rss "$WORK/$name$round.time")" >>"$WORK/table"
  done
done
medians() { # name -> "wall rss"
  local w r
  w=$(for i in $(seq 1 "$ROUNDS"); do wall "$WORK/$1$i.time"; echo; done | median)
  r=$(for i in $(seq 1 "$ROUNDS"); do rss "$WORK/$1$i.time"; echo; done | median)
  echo "$w $r"
}
read -r RW RR < <(medians rust)
read -r DW DR < <(medians diffusers)
echo
echo "job: ${SIZE}px, $STEPS steps, guidance $GUIDANCE, 1 image, $THREADS threads, $ROUNDS rounds alternated; outputs in $WORK"
cat "$WORK/table"
printf '%-12s %10s %14s\n' "rust median" "$RW" "$RR"
printf '%-12s %10s %14s\n' "diff median" "$DW" "$DR"
awk -v rw="$RW" -v dw="$DW" -v rr="$RR" -v dr="$DR" \
  'BEGIN { printf "%-12s %10.2f %14.2f   (rust / diffusers, medians)\n", "ratio", rw/dw, rr/dr }'
