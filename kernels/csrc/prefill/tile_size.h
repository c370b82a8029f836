// Prefill layer (heuristics): the CTA tile shape per head dim and arch, kept apart from the kernels.
#pragma once

namespace fib::prefill {

// block_m: packed query rows per CTA (api.h: row = token * group_size + head_in_group);
// block_n: keys per mainloop step; warps: each warp owns block_m / warps whole rows, so the
// row-wise softmax never leaves a warp; min_ctas_per_sm: the register cap (__launch_bounds__);
// k_stages: K tile buffers (2: the next K tile is in flight during the whole current step).
struct TileShape {
  int block_m;
  int block_n;
  int warps;
  int min_ctas_per_sm;
  int k_stages;
};

// sm is 80 or 90: the sm90a pack runs this same mainloop (until a wgmma one exists) on H100/H200,
// which have more shared memory per SM (228 KB against the A100's 164 KB): there the head-dim-128
// tile takes a second K buffer (2 x 84 KB a SM), which two A100 CTAs would not fit.
//
// Measured on an H100 (2026-11-27, bf16, head dim 128, causal, 8k tokens, 32 heads, an earlier
// mainloop with serial softmax reductions; TFLOP/s): 128 x 64 x 4 warps (2 CTAs/SM) 245;
// 64 x 64 x 4 warps (3 CTAs/SM, 168 registers, 28 bytes spilled) 261; 128 x 128 x 8 warps (1 CTA/SM)
// 241; 128 x 64 x 8 warps (16 rows a warp, 248 registers: 1 CTA/SM) 221.
// Re-measured on an H200 after the pairwise softmax reductions (2026-11-27, same shape, two runs
// each, TFLOP/s at 8k causal / 8k none / 2k causal; SDPA FLASH_ATTENTION 303.6 / 344.3 / 200.9):
//   128 x 64, 1 K buffer   281-285 / 321-324 / 180-183  (255 registers, 104 bytes of stack)
//   128 x 64, 2 K buffers  297 / 331-338 / 188-189      <- head dim 128 on sm90
//   128 x 32, 1 K buffer   297-298 / 328 / 191         (255 registers, no spills)
//   128 x 32, 2 K buffers  289 / 321 / 187
//   64 x 64, 3 CTAs/SM     278-282 / 297-298 / 199-203  (168 registers, 48 bytes of stack)
//   64 x 64, 2 K buffers   272 / 286 / 196-197
// The 64-row tile lost its lead: with 16 rows a warp every warp reads all of K and V through
// ldmatrix for half the MMAs, and only helps where 128-row tiles leave SMs idle (2k causal).
// Nsight Compute (8k causal): the 128 x 64 tile's tensor pipe is active 50% of the cycles (52% with
// 2 K buffers, FlashAttention-2's 56%); its warps stall mostly on fixed-latency dependencies and on
// ldmatrix results, which the register allocator issues right before their MMAs (no registers
// left to load a k-slice ahead); 128 x 32 frees 32 registers and the loads move ahead.
// With the row table read in 16-byte loads (a later H200 run, TFLOP/s at 8k causal / 8k none /
// 2k causal, flash 312.4 / 342.4 / 204.7): 128 x 64 with 2 K buffers 307-308 / 344-346 / 194-195;
// 128 x 32 with 1 K buffer 310 / 331-333 / 195-196. A second K buffer lost at the other head dims
// (8k causal, against one buffer): head dim 64 249 vs 254-257, head dim 256 275-277 vs 282-285.
constexpr TileShape tile_shape(int head_dim, int sm) {
  // head dim 64: 128 x 128 keeps the 4-warp MMA units busy with little softmax work per FLOP
  // (S is 128 fp32 registers a thread, O 64).
  // head dim 128: 128 x 64, 4 warps: O takes 128 fp32 registers a thread and S 64, so two CTAs
  // (8 warps) fit an SM at <= 255 registers.
  // head dim 256: 128 x 64 with 8 warps (16 rows each): O alone is 128 registers a thread.
  return head_dim <= 64    ? TileShape{128, 128, 4, 2, 1}
         : head_dim <= 128 ? TileShape{128, 64, 4, 2, sm >= 90 ? 2 : 1}
                           : TileShape{128, 64, 8, 1, 1};
}

}  // namespace fib::prefill
