#!/usr/bin/env bash
# The issues' targets in one device call: the GPU tests and verify over the carried pack, then each
# target's benchmark (docs/PERFORMANCE.md, "Where we stand").
#   usage (GPU machine, repository root, a pack built into ./build): benchmarks/targets_run.sh
# benchmarks/targets_build.sh builds that pack: the ci preset plus, for the hook rows, the sm90a hd128
# bf16 prefill (none, causal_softcap, causal_rope, causal_alibi, sliding_window) and decode (softcap,
# rope, alibi, sliding_window) variants. Logs land in $OUT (or ./out); a summary prints last.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COLUMNS=160 FLASHINFER_BUILD_PACK=${FLASHINFER_BUILD_PACK:-build}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || exit 3
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"

step() {  # name, seconds, command...
  local name=$1 seconds=$2
  shift 2
  local start=$SECONDS
  timeout "$seconds" "$@" >"$OUT/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}
step gpu_tests 150 python3 -m pytest -q -x -m gpu tests/gpu
step verify 70 flashinfer-build verify --built --arch sm90a --cases 2
step verify_sm80 40 flashinfer-build verify --preset ci --arch sm80 --cases 1
step decode_latency 60 python3 benchmarks/decode_latency.py --quick --json "$OUT/decode_latency.json"
step shared_prefix 40 python3 benchmarks/shared_prefix.py --n 1,4,16 --json "$OUT/shared_prefix.json"
step prefill 50 python3 benchmarks/prefill.py --head-dims 128 --tokens 8192 --json "$OUT/prefill.json"
step plan_time 40 python3 benchmarks/plan_time.py --gpu --json "$OUT/plan_time.json"
step hooks 110 flashinfer-build bench --built --arch sm90a --workloads variants \
  --shape prefill:batch=1,tokens=4096,hd=128,causal=true --shape decode:batch=64,kv=8192 \
  --baselines sdpa-flash,flex --json "$OUT/hooks.json"

for name in gpu_tests verify verify_sm80 decode_latency shared_prefix prefill plan_time hooks; do
  echo "== $name"
  grep -v -e "^ *$" "$OUT/$name.log" | tail -n 24
done
cat "$OUT/summary.txt"
