// Prefill layer (fusion applied to a tile): fused RoPE on a (rows, head_dim) tile in shared memory,
// run after the tile lands and before the MMA reads it, so the KV cache stays un-rotated.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>

#include "../fusion/rope.cuh"

namespace fib::prefill {

// Fills inv_freq[i] for the rotation pairs (i, i + head_dim / 2).
template <int HeadDim, int Threads>
__device__ __forceinline__ void fill_rope_inv_freq(const fib_attention_params& p, float* inv_freq, int tid) {
  for (int i = tid; i < HeadDim / 2; i += Threads) inv_freq[i] = rope_inv_freq(p, i, HeadDim);
}

// Rotates every row of sX in place; position(row) is the row's position in its request. Each
// thread takes 16-byte chunks of the low half and the matching chunk of the high half.
template <class Traits, class SmemTensor, class PositionFn>
__device__ __forceinline__ void rope_rotate_tile(SmemTensor& sX, const float* inv_freq, int tid, PositionFn position) {
  using Element = typename Traits::Element;
  using Chunk = cutlass::AlignedArray<Element, Traits::kVecElems>;
  constexpr int kRows = decltype(cute::size<0>(sX))::value;
  constexpr int kHalf = Traits::kHeadDim / 2;
  constexpr int kChunksPerRow = kHalf / Traits::kVecElems;
  for (int task = tid; task < kRows * kChunksPerRow; task += Traits::kThreads) {
    const int row = task / kChunksPerRow;
    const int col = task % kChunksPerRow * Traits::kVecElems;
    // A 16-byte chunk stays contiguous under the swizzle, which permutes whole chunks.
    Chunk* lo_ptr = reinterpret_cast<Chunk*>(&sX(row, col));
    Chunk* hi_ptr = reinterpret_cast<Chunk*>(&sX(row, col + kHalf));
    Chunk lo = *lo_ptr, hi = *hi_ptr;
    const float pos = float(position(row));
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < Traits::kVecElems; ++i) {
      float x_lo = float(lo[i]), x_hi = float(hi[i]);
      rope_rotate(pos, inv_freq[col + i], x_lo, x_hi);
      lo[i] = Element(x_lo);
      hi[i] = Element(x_hi);
    }
    *lo_ptr = lo;
    *hi_ptr = hi;
  }
}

}  // namespace fib::prefill
