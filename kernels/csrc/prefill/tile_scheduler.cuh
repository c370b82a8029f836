// Prefill layer (tile scheduling): what one CTA computes: its work item, KV head, packed query rows
// and the keys it visits.
#pragma once

#include <stdint.h>

#include "../api.h"
#include "../fusion/variant.cuh"

namespace fib::prefill {

struct WorkTile {
  RowContext ctx;        // request, q_len, kv_len; qo_head is filled in per row
  int32_t kv_head;
  int32_t group;         // query heads per KV head
  int32_t q_token0;      // the request's first query token in q and o
  int32_t row_begin;     // first packed row of the tile, counted from the request's first
  int32_t num_rows;      // packed rows that exist; the tile's other rows are padding
  int32_t first_token;   // query tokens of the first and last existing rows
  int32_t last_token;
  int32_t kv_lo, kv_hi;  // keys [kv_lo, kv_hi) to visit: the work item's range within the mask's
  int32_t kv_entry0;     // ragged: the request's first KV row; paged: index of its first page id
  int32_t partial_row;   // < 0: write o (and lse); else the partial-state row of first_token

  __device__ __forceinline__ int32_t num_kv_tiles(int32_t block_n) const {
    return (kv_hi - kv_lo + block_n - 1) / block_n;
  }
};

// Grid (num_work, num_kv_heads): CTA (i, h) runs work[i] for KV head h. The scheduler orders the
// work list so that CTAs of one KV head run together and share its keys in L2.
// Returns false when the CTA has nothing to write (padding item, or no rows).
template <int BlockM, class VariantT>
__device__ __forceinline__ bool load_work_tile(const fib_attention_params& p, WorkTile& t) {
  const fib_work_item w = p.work[blockIdx.x];
  if (w.request < 0) return false;
  const int32_t r = w.request;
  t.kv_head = blockIdx.y;
  t.group = p.num_qo_heads / p.num_kv_heads;
  t.q_token0 = p.qo_indptr ? p.qo_indptr[r] : r;
  const int32_t q_len = p.qo_indptr ? p.qo_indptr[r + 1] - t.q_token0 : 1;
  t.kv_entry0 = p.kv_indptr[r];
  const int32_t entries = p.kv_indptr[r + 1] - t.kv_entry0;
  int32_t kv_len = entries;
  if (p.kv_indices) kv_len = entries > 0 ? (entries - 1) * p.page_size + p.kv_last_page_len[r] : 0;
  t.ctx = RowContext{r, q_len, kv_len, 0};

  t.row_begin = w.qo_begin;
  t.num_rows = min(min(w.qo_end, q_len * t.group) - w.qo_begin, BlockM);
  if (t.num_rows <= 0) return false;
  t.first_token = t.row_begin / t.group;
  t.last_token = (t.row_begin + t.num_rows - 1) / t.group;

  int32_t lo, hi;
  VariantT::kv_range(p, t.ctx, t.first_token, t.last_token, &lo, &hi);
  t.kv_lo = max(lo, w.kv_begin);
  t.kv_hi = max(t.kv_lo, min(hi, w.kv_end));
  t.partial_row = w.partial_row;
  return true;
}

}  // namespace fib::prefill
