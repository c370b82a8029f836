// Prefill layer (collective softmax): online softmax over a thread's rows of the S accumulator,
// rescaling O as the row maxima grow; the scale comes from the variant (softmax_scale_log2).
#pragma once

#include <math.h>

#include <cute/tensor.hpp>

#include "../common/math.cuh"

namespace fib::prefill {

// The four lanes of a quad (lane bits 0-1) hold one accumulator row between them.
constexpr int kQuadLaneMask = 3;

// x[0] = op over x[0 .. 2 * kWidth): pairwise, so the dependency depth is log2 of the length.
template <int kWidth, class Op>
__device__ __forceinline__ void reduce_pairwise(float* x, Op op) {
  if constexpr (kWidth > 0) {
    CUTE_UNROLL
    for (int i = 0; i < kWidth; ++i) x[i] = op(x[i], x[i + kWidth]);
    reduce_pairwise<kWidth / 2>(x, op);
  }
}

// Reduction of a row of a rowcol tensor. Pairwise rather than a serial chain, which is what the
// softmax's latency is made of (measured on an H100: with serial max/sum chains per row the warps
// were stalled on fixed-latency dependencies 41% of their cycles, FlashAttention-2's 31%).
template <class Row, class Op>
__device__ __forceinline__ float reduce_row(const Row& row, Op op) {
  constexpr int kCols = decltype(cute::size(row))::value;
  static_assert((kCols & (kCols - 1)) == 0, "rows of a power-of-two length");
  float x[kCols];
  CUTE_UNROLL
  for (int i = 0; i < kCols; ++i) x[i] = row(i);
  reduce_pairwise<kCols / 2>(x, op);
  return x[0];
}

template <int kRows>
struct OnlineSoftmax {
  float row_max[kRows];  // running max of the transformed logits; -inf while every key was masked
  float row_sum[kRows];  // this thread's share of the running sum; finalize() reduces the quad

  // s, o: rowcol views (rows of this thread, columns). s becomes the unnormalised weights P.
  template <bool kFirst, class S, class O>
  __device__ __forceinline__ void update(S& s, O& o, float scale_log2) {
    float factor[kRows];
    update_scores<kFirst>(s, scale_log2, factor, [&](bool grew) { rescale(o, factor, grew); });
  }

  // update() with the O rescale left to the caller, for mainloops that rescale O later (once the
  // MMA that accumulates into it has finished): s becomes P; factor[mi] is what row mi of O must be
  // scaled by; returns whether any row of the warp grew (factor != 1 somewhere; warp-uniform).
  // rescale_now(grew) runs where update() rescales O (before the exponentials: keeping that order
  // keeps the sm80 mainloop's machine code as it was). Each phase runs over all rows, so the rows'
  // dependency chains interleave.
  template <bool kFirst, class S, class RescaleNow>
  __device__ __forceinline__ bool update_scores(S& s, float scale_log2, float (&factor)[kRows],
                                                RescaleNow&& rescale_now) {
    static_assert(decltype(cute::size<0>(s))::value == kRows, "S must be a rowcol view with kRows rows");
    auto max_op = [](float a, float b) { return fmaxf(a, b); };
    auto sum_op = [](float a, float b) { return a + b; };
    float m[kRows];
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) m[mi] = reduce_row(s(mi, cute::_), max_op);
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) m[mi] = warp_max<kQuadLaneMask>(kFirst ? m[mi] : fmaxf(m[mi], row_max[mi]));
    float m_scaled[kRows];
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      // A row with every key masked so far keeps m = -inf: subtract 0 so exp2 gives 0, not NaN.
      m_scaled[mi] = m[mi] == -INFINITY ? 0.f : m[mi] * scale_log2;
    }
    bool grew = false;
    if constexpr (!kFirst) {
      CUTE_UNROLL
      for (int mi = 0; mi < kRows; ++mi) {
        factor[mi] = fast_exp2(row_max[mi] * scale_log2 - m_scaled[mi]);  // exactly 1 when the max held
        row_sum[mi] *= factor[mi];
        grew |= factor[mi] != 1.f;
      }
      // Past the first tiles a row's max rarely grows: rescale() skips O when no row of the warp grew.
      grew = __any_sync(0xffffffffu, grew);
      rescale_now(grew);
    }
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      row_max[mi] = m[mi];
      CUTE_UNROLL
      for (int ni = 0; ni < cute::size<1>(s); ++ni) s(mi, ni) = fast_exp2(s(mi, ni) * scale_log2 - m_scaled[mi]);
    }
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      const float sum = reduce_row(s(mi, cute::_), sum_op);
      row_sum[mi] = kFirst ? sum : row_sum[mi] + sum;
    }
    return grew;
  }

  // o *= factor row by row, skipped when no row of the warp grew (a warp-uniform branch).
  template <class O>
  __device__ __forceinline__ void rescale(O& o, const float (&factor)[kRows], bool grew) {
    if (!grew) return;
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      CUTE_UNROLL
      for (int ni = 0; ni < cute::size<1>(o); ++ni) o(mi, ni) *= factor[mi];
    }
  }

  // Normalises o; returns each row's natural-log LSE (-inf, with o = 0, when no key was visible).
  template <class O>
  __device__ __forceinline__ void finalize(O& o, float scale_log2, float (&lse)[kRows]) {
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      const float sum = warp_sum<kQuadLaneMask>(row_sum[mi]);
      const bool empty = !(sum > 0.f);
      const float inv = empty ? 0.f : 1.f / sum;
      CUTE_UNROLL
      for (int ni = 0; ni < cute::size<1>(o); ++ni) o(mi, ni) *= inv;
      lse[mi] = empty ? -INFINITY : (row_max[mi] * scale_log2 + fast_log2(sum)) * kLn2;
    }
  }
};

}  // namespace fib::prefill
