// Prefill layer (fusion applied to a tile): the variant's logits transform and mask policy on one
// S tile. Only tiles that the policy cannot prove fully visible pay for per-element tests.
#pragma once

#include <math.h>

#include <cute/tensor.hpp>

#include "../fusion/variant.cuh"
#include "tile_scheduler.cuh"

namespace fib::prefill {

// The accumulator rows one thread holds, as query tokens and query heads.
template <int kRows>
struct ThreadRows {
  int32_t row[kRows];      // tile-relative packed row
  int32_t token[kRows];    // query token within the request (clamped to an existing row)
  int32_t qo_head[kRows];
};

// coord: rowcol view of the identity tensor over any (BLK_M, x) accumulator of this thread.
// Recomputed where needed rather than kept live across the mainloop, which is register-bound.
template <int kRows, class Coord>
__device__ __forceinline__ ThreadRows<kRows> thread_rows(const WorkTile& t, const Coord& coord) {
  ThreadRows<kRows> rows;
  CUTE_UNROLL
  for (int mi = 0; mi < kRows; ++mi) {
    rows.row[mi] = cute::get<0>(coord(mi, 0));
    const int32_t packed = t.row_begin + min(rows.row[mi], t.num_rows - 1);
    rows.token[mi] = packed / t.group;
    rows.qo_head[mi] = t.kv_head * t.group + (packed - rows.token[mi] * t.group);
  }
  return rows;
}

// s: rowcol view of the S tile whose first key is tile_start; coord: its identity rowcol view.
// With kCheck, keys >= kv_hi and keys the variant does not keep get -inf.
template <class VariantT, bool kCheck, class S, class Coord>
__device__ __forceinline__ void apply_logits_and_mask(const fib_attention_params& p, const WorkTile& t, S& s,
                                                      const Coord& coord, int32_t tile_start) {
  if constexpr (!kCheck && !VariantT::kNeedsPerElementTransform) return;
  constexpr int kRows = decltype(cute::size<0>(s))::value;
  const ThreadRows<kRows> rows = thread_rows<kRows>(t, coord);
  RowContext ctx = t.ctx;
  CUTE_UNROLL
  for (int mi = 0; mi < kRows; ++mi) {
    ctx.qo_head = rows.qo_head[mi];
    const int32_t q = rows.token[mi];
    CUTE_UNROLL
    for (int ni = 0; ni < cute::size<1>(s); ++ni) {
      const int32_t kv = tile_start + cute::get<1>(coord(0, ni));
      float x = s(mi, ni);
      if constexpr (VariantT::kNeedsPerElementTransform) x = VariantT::logits_transform(p, ctx, q, kv, x);
      if (kCheck && (kv >= t.kv_hi || !VariantT::keep(p, ctx, q, kv))) x = -INFINITY;
      s(mi, ni) = x;
    }
  }
}

}  // namespace fib::prefill
