#!/usr/bin/env bash
# One device call for the 8-warp stacked-row decode CTA (docs/PERFORMANCE.md, "8-warp decode CTAs for
# stacked query rows"): GPU tests on this branch's pack, the shared-prefix benchmark twice on it and
# decode latency / 64 x 8k, then the shared-prefix benchmark on the baseline pack (same Python,
# decode kernels of main).
# Run from the worktree root on the device; packs in build-x (this branch) and build-base (main).
set -u
OUT=${OUT:-/tmp/stack8-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
export FLASHINFER_BUILD_PACK=$PWD/build-x
python3 -m pytest -q -x -m gpu tests/gpu/test_cascade.py tests/gpu/test_decode.py tests/gpu/test_wrappers.py \
  2>&1 | tail -n 15 | tee "$OUT/pytest.txt"
for i in 1 2; do
  python3 benchmarks/shared_prefix.py --n 1,4,16 --json "$OUT/sp_branch$i.json" 2>&1 | tee "$OUT/sp_branch$i.txt"
done
python3 benchmarks/decode_latency.py --quick 2>&1 | tee "$OUT/latency_branch.txt"
FLASHINFER_BUILD_PACK=$PWD/build-base python3 benchmarks/shared_prefix.py --n 1,4,16 --json "$OUT/sp_base.json" \
  2>&1 | tee "$OUT/sp_base.txt"
echo "==== summary (branch x2, base) ===="
tail -n 5 "$OUT/pytest.txt" | grep -E 'passed|failed|error' || true
for f in sp_branch1 sp_branch2 sp_base; do echo "-- $f"; grep -E '^(shared|1 |4 |16 )' "$OUT/$f.txt"; done
grep -E '^(1 x 32k|64 x 8k|fp8 /)' "$OUT/latency_branch.txt"
