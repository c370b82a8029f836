#!/usr/bin/env bash
# Builds the pack benchmarks/targets_run.sh needs into ./build (run on the build machine, from the
# repository root): the ci preset's variants (sm90a and sm80) plus the sm90a hd128 bf16 hook variants
# of the "hooks" row. Extra arguments go to `flashinfer-build build` (e.g. -j 2).
set -euo pipefail
ids=(
  merge_sm80_bf16 decode_sm80_bf16_hd128 decode_sm80_bf16_kvfp8e4m3_hd128 prefill_sm80_bf16_hd128_causal
  merge_sm90a_bf16 decode_sm90a_bf16_hd128 decode_sm90a_bf16_kvfp8e4m3_hd128
  decode_sm90a_bf16_hd128_softcap decode_sm90a_bf16_hd128_rope decode_sm90a_bf16_hd128_alibi
  decode_sm90a_bf16_hd128_sliding_window
  prefill_sm90a_bf16_hd128 prefill_sm90a_bf16_hd128_causal prefill_sm90a_bf16_hd128_causal_softcap
  prefill_sm90a_bf16_hd128_causal_rope prefill_sm90a_bf16_hd128_causal_alibi prefill_sm90a_bf16_hd128_sliding_window
)
only=()
for id in "${ids[@]}"; do only+=(--only "$id"); done
exec flashinfer-build build --preset default "${only[@]}" --build-dir "$PWD/build" "$@"
