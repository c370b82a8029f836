// Prefill layer (collective load): cp.async copies of Q and K/V tiles whose rows are gathered from
// packed query rows, ragged KV rows or pages of the paged cache.
#pragma once

#include <cute/tensor.hpp>
#include <stdint.h>

#include "../api.h"
#include "../common/cp_async.cuh"
#include "tile_scheduler.cuh"

namespace fib::prefill {

// Element offset of packed query row `row` (tile-relative; clamped to an existing row) in q or o.
__device__ __forceinline__ int64_t packed_row_offset(const WorkTile& t, int row, int64_t stride_n, int64_t stride_h) {
  const int32_t packed = t.row_begin + min(row, t.num_rows - 1);
  const int32_t token = packed / t.group;
  const int32_t head = t.kv_head * t.group + (packed - token * t.group);
  return int64_t(t.q_token0 + token) * stride_n + int64_t(head) * stride_h;
}

// Q tile (BLK_M, D) into shared memory; rows past the tile's last are zero.
template <class Traits, class SmemTensor>
__device__ __forceinline__ void load_q_tile(const fib_attention_params& p, const WorkTile& t, SmemTensor& sQ,
                                            int tid) {
  using namespace cute;
  using Element = typename Traits::Element;
  auto thr_copy = typename Traits::GmemTiledCopy{}.get_thread_slice(tid);
  Tensor tQsQ = thr_copy.partition_D(sQ);  // (CPY, CPY_M, CPY_D)
  Tensor tQcQ = thr_copy.partition_D(make_identity_tensor(make_shape(size<0>(sQ), size<1>(sQ))));
  const Element* q = static_cast<const Element*>(p.q);
  CUTE_UNROLL
  for (int m = 0; m < size<1>(tQsQ); ++m) {
    const int row = get<0>(tQcQ(0, m, 0));
    const Element* src = q + packed_row_offset(t, row, p.q_stride_n, p.q_stride_h);
    CUTE_UNROLL
    for (int d = 0; d < size<2>(tQsQ); ++d) {
      fib::cp_async<16>(&tQsQ(0, m, d), src + get<1>(tQcQ(0, m, d)), row < t.num_rows);
    }
  }
}

// Element offsets of the key rows of one K/V tile (K and V share strides), written to shared
// memory by the first BLK_N threads. Paged caches cost a page-id load per row: prefetch() issues it
// a whole mainloop step before store() needs it. The rows one copy thread reads are stored next to
// each other (slot()), so that it fetches all of them with 16-byte reads before its first copy:
// one row at a time, each copy's address waited on a shared-memory load (measured on an H200, the
// copy issue stalled on that latency eight times a step at head dim 128).
template <class Traits>
struct KvRowTable {
  static constexpr int kRowsPerPass = Traits::kGmemRowsPerPass;
  static constexpr int kRowsPerThread = Traits::kKvRowsPerThread;
  int32_t page_id = 0;

  // Table position of key row `row`: the rows row % kRowsPerPass + i * kRowsPerPass are adjacent.
  CUTE_HOST_DEVICE static int slot(int row) {
    return row % kRowsPerPass * kRowsPerThread + row / kRowsPerPass;
  }

  __device__ __forceinline__ void prefetch(const fib_attention_params& p, const WorkTile& t, int32_t tile_start,
                                           int tid) {
    const int32_t key = tile_start + tid;
    if (p.kv_indices && tid < Traits::kBlockN && key < t.kv_hi) {
      page_id = p.kv_indices[t.kv_entry0 + key / p.page_size];
    }
  }

  __device__ __forceinline__ void store(const fib_attention_params& p, const WorkTile& t, int32_t tile_start,
                                        int tid, int64_t* table) const {
    if (tid >= Traits::kBlockN) return;
    const int32_t key = tile_start + tid;
    int64_t offset = int64_t(t.kv_head) * p.kv_stride_h;
    if (p.kv_indices) {
      offset += int64_t(page_id) * p.kv_stride_page + int64_t(key % p.page_size) * p.kv_stride_n;
    } else {
      offset += int64_t(t.kv_entry0 + key) * p.kv_stride_n;
    }
    table[slot(tid)] = key < t.kv_hi ? offset : 0;
  }
};

// K or V tile (BLK_N, D) into shared memory from the rows in `table` (KvRowTable's order); rows
// >= num_valid are zero, so that masked keys cannot bring NaN or Inf into P @ V.
template <class Traits, class SmemTensor, class Element>
__device__ __forceinline__ void load_kv_tile(const Element* base, const int64_t* table, int num_valid,
                                             SmemTensor& sKV, int tid) {
  using namespace cute;
  constexpr int kRows = Traits::kKvRowsPerThread;
  auto thr_copy = typename Traits::GmemTiledCopy{}.get_thread_slice(tid);
  Tensor tKsK = thr_copy.partition_D(sKV);  // (CPY, CPY_N, CPY_D)
  Tensor tKcK = thr_copy.partition_D(make_identity_tensor(make_shape(size<0>(sKV), size<1>(sKV))));
  static_assert(decltype(size<1>(tKsK))::value == kRows, "a thread copies kKvRowsPerThread rows");
  const int first_row = get<0>(tKcK(0, 0, 0));
  int64_t offset[kRows];
  CUTE_UNROLL
  for (int i = 0; i < kRows / 2; ++i) {
    reinterpret_cast<longlong2*>(offset)[i] =
        reinterpret_cast<const longlong2*>(table + KvRowTable<Traits>::slot(first_row))[i];
  }
  CUTE_UNROLL
  for (int n = 0; n < kRows; ++n) {
    const int row = get<0>(tKcK(0, n, 0));
    const Element* src = base + offset[n];
    CUTE_UNROLL
    for (int d = 0; d < size<2>(tKsK); ++d) {
      fib::cp_async<16>(&tKsK(0, n, d), src + get<1>(tKcK(0, n, d)), row < num_valid);
    }
  }
}

}  // namespace fib::prefill
