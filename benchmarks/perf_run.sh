#!/usr/bin/env bash
# The device run behind docs/PERFORMANCE.md: verify the carried packs, then bench them, in one call.
#   usage (GPU machine, repository root, packs in ./build): benchmarks/perf_run.sh [quick]
# Reports land in $OUT (or ./out); the tables print last. "quick" is a smoke test of the tooling: the
# ci preset and three workloads. FlexAttention compiles once per shape (seconds each), so the full run
# times it in a second bench over the rows where its score_mod/block_mask matter.
set -uo pipefail
OUT=${OUT:-out}
ARCH=${ARCH:-sm90a}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COLUMNS=200 FLASHINFER_BUILD_PACK=${FLASHINFER_BUILD_PACK:-build}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || exit 3
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
plot=()
python3 -c "import matplotlib" 2>/dev/null && plot=(--plot "$OUT/bench.png")
sdpa=sdpa-flash,sdpa-cudnn,sdpa-efficient

if [ "${1:-}" = quick ]; then
  verify=(--preset ci --arch "$ARCH" --cases 2)
  bench=(--preset ci --arch "$ARCH" --workloads skewed --shape decode:batch=64,kv=8192
         --shape decode:batch=64,kv=8192,kv_dtype=fp8e4m3 --baselines "$sdpa")
  flex=(--preset ci --arch "$ARCH" --workloads skewed --baselines flex)
else
  verify=(--preset default --arch "$ARCH" --cases 3 --sanitize)
  bench=(--preset default --arch "$ARCH" --baselines "$sdpa")
  flex=(--preset default --arch "$ARCH" --workloads variants,serving,skewed --baselines flex,sdpa-flash)
fi

run() {  # name, seconds, command...
  local name=$1 seconds=$2
  shift 2
  timeout "$seconds" "$@" >"$OUT/$name.log" 2>&1
  echo "$name exit $?"
}
run verify 180 flashinfer-build verify "${verify[@]}" --json "$OUT/verify.json"
if [ -f "$FLASHINFER_BUILD_PACK/sm80/manifest.json" ]; then  # the sm80 pack's PTX, JIT-compiled on this GPU
  run sm80 75 flashinfer-build verify --preset ci --arch sm80 --cases 2
fi
run bench 210 flashinfer-build bench "${bench[@]}" --json "$OUT/bench.json" "${plot[@]}"
run flex 100 flashinfer-build bench "${flex[@]}" --json "$OUT/flex.json"
for name in verify sm80 bench flex; do
  [ -f "$OUT/$name.log" ] || continue
  echo "== $name"
  grep -v -e "^ *$" "$OUT/$name.log" | tail -n 70
done
