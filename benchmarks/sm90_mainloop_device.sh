#!/bin/bash
# One device call for the wgmma (sm90a) prefill mainloop (docs/HOPPER_MAINLOOP.md): layout probes,
# compute-sanitizer, the prefill GPU tests and verify on the candidate pack, then the prefill benchmark
# of every pack on the same inputs. Logs go to $OUT (at most 8 files come back); a short table last.
#
#   benchmarks/sm90_mainloop_device.sh CANDIDATES "label=dir,label=dir,..." [STEPS]
#
# The first pack of the list is the baseline (the sm80 mainloop); CANDIDATES (comma-separated labels)
# name the packs that the tests and verify run on, the first of them also ncu and (unless SANITIZE_PACKS
# lists labels) the sanitizer.
# STEPS (default "diag,sanitize,tests,verify,bench") picks steps, "ncu" too; BENCH_ARGS overrides the
# benchmark's shape arguments, SANITIZE_IDS and SANITIZE_TOOLS what the sanitizer runs.
set -u
CANDIDATES=$1
PACKS=$2
STEPS=${3:-diag,sanitize,tests,verify,bench}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
dir_of() { tr ',' '\n' <<<"$PACKS" | sed -n "s/^$1=//p"; }
CAND_DIR=$(dir_of "${CANDIDATES%%,*}")
has() { [[ ",$STEPS," == *",$1,"* ]]; }
summary=()

nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader
if has diag; then
  for v in prefill_sm90a_bf16_hd128 prefill_sm90a_bf16_hd128_causal; do
    timeout 150 python3 benchmarks/prefill_diag.py --packs "$PACKS" --variant $v 2>&1 | tee -a "$OUT/diag.log"
  done
  summary+=("diag: $(grep -c 'rel err' "$OUT/diag.log") cases, $(grep 'rel err' "$OUT/diag.log" | awk '{if ($5+0 > 2e-2 || $5 ~ /nan/) n++} END {print n+0}') over 2e-2")
fi
if has sanitize; then
  # One child per (pack, tool, variant), so that a crash names its variant.
  for label in ${SANITIZE_PACKS:-${CANDIDATES%%,*}}; do
    for tool in ${SANITIZE_TOOLS:-racecheck memcheck}; do
      for id in ${SANITIZE_IDS:-prefill_sm90a_bf16_hd128_causal prefill_sm90a_bf16_hd128_causal_rope_softcap}; do
        echo "=== $label $id" >>"$OUT/sanitize_$tool.log"
        FLASHINFER_BUILD_PACK=$(dir_of "$label") PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 100 compute-sanitizer \
          --tool $tool --kernel-name kns=fib --print-limit 20 python3 -m flashinfer_build.kernels.verify.sanitize \
          "$id" >/tmp/sanitize.log 2>&1
        rc=$?
        cat /tmp/sanitize.log >>"$OUT/sanitize_$tool.log"
        summary+=("$tool $label $id: rc $rc $(grep -h 'SUMMARY' /tmp/sanitize.log | tr '\n' ' ')")
      done
    done
  done
fi
for cand in ${CANDIDATES//,/ }; do
  if has tests; then
    FLASHINFER_BUILD_PACK=$(dir_of "$cand") timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider \
      tests/gpu/test_prefill.py tests/gpu/test_wrappers.py -rs >>"$OUT/tests.log" 2>&1
    summary+=("tests ($cand): rc $? $(tail -1 "$OUT/tests.log")")
  fi
  if has verify; then
    FLASHINFER_BUILD_PACK=$(dir_of "$cand") timeout 120 flashinfer-build verify --built --arch sm90a --cases 2 \
      >>"$OUT/verify.log" 2>&1
    summary+=("verify ($cand): rc $? $(tail -1 "$OUT/verify.log")")
  fi
done
if has ncu; then
  # The first wgmma prefill launch of the benchmark: hd128, not causal, 8192 tokens, 32 heads.
  FLASHINFER_BUILD_PACK=$CAND_DIR timeout 240 ncu -k regex:prefill_fwd_sm90 -c 1 --section SpeedOfLight \
    --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section Occupancy \
    python3 benchmarks/prefill.py --head-dims 128 --tokens 8192 --no-sdpa >"$OUT/ncu.txt" 2>&1
  summary+=("ncu: rc $?")
fi
if has bench; then
  # shellcheck disable=SC2086
  timeout 300 python3 benchmarks/prefill.py ${BENCH_ARGS:---head-dims 128,64,256 --tokens 8192 --repeat 2} \
    --packs "$PACKS" --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
fi
echo "== summary"
printf '%s\n' "${summary[@]}"
