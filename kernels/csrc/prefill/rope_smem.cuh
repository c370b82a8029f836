// Prefill layer (fusion applied to a tile): fused RoPE on a (rows, head_dim) tile in shared memory,
// run after the tile lands and before the MMA reads it, so the KV cache stays un-rotated.
//
// Every CTA rotates each K tile it visits (as much work per tile as the softmax), so K rows are
// rotated by angle addition: a thread owns one 16-byte chunk of columns on rows row0, row0 +
// kRowStride, ..., takes cos/sin once at row0's position and steps by the rotation of kRowStride
// positions, read from the CTA's table. Q rows (packed tokens and heads) take cos/sin per row.
#pragma once

#include <math.h>

#include <cute/tensor.hpp>
#include <cutlass/array.h>

#include "../fusion/rope.cuh"

namespace fib::prefill {

// Per rotation pair (i, i + head_dim / 2): its frequency and the rotation by a fixed number of
// positions (the K tile walk's row stride).
struct alignas(16) RopePair {
  RopeFreq freq;
  float step_cos;
  float step_sin;
};

template <class Traits>
struct RopeTile {
  using Element = typename Traits::Element;
  using Chunk = cutlass::AlignedArray<Element, Traits::kVecElems>;
  static constexpr int kHalf = Traits::kHeadDim / 2;
  static constexpr int kChunksPerRow = kHalf / Traits::kVecElems;
  static_assert(Traits::kThreads % kChunksPerRow == 0, "threads must cover whole rows of chunks");
  static constexpr int kRowStride = Traits::kThreads / kChunksPerRow;  // rows between a thread's rows

  // The table holds pair col + i of a thread's chunk at [i][chunk]: for one i, the 16-byte entries
  // of the eight chunks are contiguous, so a warp reads them without bank conflicts (in pair order,
  // the eight chunks' entries sat 128 bytes apart, all in the same banks).
  __device__ __forceinline__ static const RopePair& pair(const RopePair* table, int col, int i) {
    return table[i * kChunksPerRow + col / Traits::kVecElems];
  }

  // Fills the CTA's table once. The step is taken with the accurate sincospif: its error adds up
  // over a K tile's steps.
  __device__ __forceinline__ static void fill(const fib_attention_params& p, RopePair* table, int tid) {
    const RopeFrequencies frequencies(p);
    for (int d = tid; d < kHalf; d += Traits::kThreads) {
      const RopeFreq f = frequencies(d, Traits::kHeadDim);
      float c, s;
      sincospif(2.0f * rope_turns(float(kRowStride), f), &s, &c);
      table[d % Traits::kVecElems * kChunksPerRow + d / Traits::kVecElems] = {f, c, s};
    }
  }

  // Rotates the chunk at (row, col) of the low half and its partner in the high half by (c, s).
  // A 16-byte chunk stays contiguous under the swizzle, which permutes whole chunks.
  template <class SmemTensor>
  __device__ __forceinline__ static void rotate_chunk(SmemTensor& sX, int row, int col, const float* c,
                                                      const float* s) {
    Chunk* lo_ptr = reinterpret_cast<Chunk*>(&sX(row, col));
    Chunk* hi_ptr = reinterpret_cast<Chunk*>(&sX(row, col + kHalf));
    Chunk lo = *lo_ptr, hi = *hi_ptr;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < Traits::kVecElems; ++i) {
      float x_lo = float(lo[i]), x_hi = float(hi[i]);
      rope_rotate(c[i], s[i], x_lo, x_hi);
      lo[i] = Element(x_lo);
      hi[i] = Element(x_hi);
    }
    *lo_ptr = lo;
    *hi_ptr = hi;
  }

  // Rows at consecutive positions first_pos + row (a K tile).
  template <class SmemTensor>
  __device__ __forceinline__ static void rotate_consecutive(SmemTensor& sX, const RopePair* table, int tid,
                                                            int first_pos) {
    constexpr int kRows = decltype(cute::size<0>(sX))::value;
    static_assert(kRows % kRowStride == 0, "every thread takes the same number of rows");
    const int col = tid % kChunksPerRow * Traits::kVecElems;
    const int row0 = tid / kChunksPerRow;
    // In registers before the first store to sX, which the compiler cannot tell apart from the table.
    float c[Traits::kVecElems], s[Traits::kVecElems], step_c[Traits::kVecElems], step_s[Traits::kVecElems];
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < Traits::kVecElems; ++i) {
      const RopePair entry = pair(table, col, i);
      rope_cos_sin(float(first_pos + row0), entry.freq, c[i], s[i]);
      step_c[i] = entry.step_cos;
      step_s[i] = entry.step_sin;
    }
    CUTLASS_PRAGMA_UNROLL
    for (int step = 0; step < kRows / kRowStride; ++step) {
      rotate_chunk(sX, row0 + step * kRowStride, col, c, s);
      if (step + 1 < kRows / kRowStride) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < Traits::kVecElems; ++i) {
          const float next_c = c[i] * step_c[i] - s[i] * step_s[i];
          s[i] = s[i] * step_c[i] + c[i] * step_s[i];
          c[i] = next_c;
        }
      }
    }
  }

  // Every row of sX at its own position(row) (the Q tile: rows are tokens x heads).
  template <class SmemTensor, class PositionFn>
  __device__ __forceinline__ static void rotate_rows(SmemTensor& sX, const RopePair* table, int tid,
                                                     PositionFn position) {
    constexpr int kRows = decltype(cute::size<0>(sX))::value;
    for (int task = tid; task < kRows * kChunksPerRow; task += Traits::kThreads) {
      const int row = task / kChunksPerRow;
      const int col = task % kChunksPerRow * Traits::kVecElems;
      const float pos = float(position(row));
      float c[Traits::kVecElems], s[Traits::kVecElems];
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < Traits::kVecElems; ++i) rope_cos_sin(pos, pair(table, col, i).freq, c[i], s[i]);
      rotate_chunk(sX, row, col, c, s);
    }
  }
};

}  // namespace fib::prefill
