// Prefill layer (heuristics): the CTA tile shape per head dim and arch, kept apart from the kernels.
#pragma once

namespace fib::prefill {

// block_m: packed query rows per CTA (api.h: row = token * group_size + head_in_group);
// block_n: keys per mainloop step; warps: each warp owns block_m / warps whole rows, so the
// row-wise softmax never leaves a warp; min_ctas_per_sm: the register cap (__launch_bounds__).
struct TileShape {
  int block_m;
  int block_n;
  int warps;
  int min_ctas_per_sm;
};

// sm is 80 or 90: the sm90a pack runs this same mainloop (until a wgmma one exists) on H100,
// which has more shared memory per SM (228 KB against the A100's 164 KB); both take the same tiles
// for now.
//
// Measured on an H100 (2026-11-27, bf16, head dim 128, causal, 8k tokens, 32 heads, an earlier
// mainloop with serial softmax reductions; TFLOP/s): 128 x 64 x 4 warps (2 CTAs/SM) 245;
// 64 x 64 x 4 warps (3 CTAs/SM, 168 registers, 28 bytes spilled) 261; 128 x 128 x 8 warps (1 CTA/SM)
// 241; 128 x 64 x 8 warps (16 rows a warp, 248 registers: 1 CTA/SM) 221. Warps resident per SM
// decided more than tile size: the MMA stream stalls on softmax dependencies unless another warp of
// the scheduler has MMAs to issue. The 64-row tile's lead was not re-measured after the softmax
// reductions became pairwise (which took 128 x 64 to 283): the next thing to try.
constexpr TileShape tile_shape(int head_dim, int sm) {
  // head dim 64: 128 x 128 keeps the 4-warp MMA units busy with little softmax work per FLOP
  // (S is 128 fp32 registers a thread, O 64).
  // head dim 128: 128 x 64, 4 warps: O takes 128 fp32 registers a thread and S 64, so two CTAs
  // (8 warps) fit an SM at <= 255 registers.
  // head dim 256: 128 x 64 with 8 warps (16 rows each): O alone is 128 registers a thread.
  return head_dim <= 64    ? TileShape{128, 128, 4, 2}
         : head_dim <= 128 ? TileShape{128, 64, 4, 2}
                           : TileShape{128, 64, 8, 1};
}

}  // namespace fib::prefill
