// Decode layer: the producer side of the KV pipeline: page-table lookups for a tile's key rows
// and the 16-byte cp.async copies of its K and V rows into one swizzled shared-memory stage.
#pragma once

#include <stdint.h>

#include "../api.h"
#include "../common/cp_async.cuh"

namespace fib::decode {

// Where one request's keys of one KV head live.
struct KvSource {
  int32_t first;    // kv_indptr[request]: first page (paged) or first row (ragged)
  int32_t kv_head;
};

// Element offset of key `pos` of a request in k and v (the two share the layout), or -1 when pos
// is past `end`. Paged: the page-table lookup, one per key row and tile, done by one thread a row
// one tile ahead of its copy, so its latency hides behind a tile of compute.
__device__ __forceinline__ int64_t kv_row_offset(const fib_attention_params& p, const KvSource& src, int32_t pos,
                                                 int32_t end) {
  if (pos >= end) return -1;
  int64_t row;
  if (p.kv_indices != nullptr) {
    const int64_t page = p.kv_indices[src.first + pos / p.page_size];
    row = page * p.kv_stride_page + int64_t(pos % p.page_size) * p.kv_stride_n;
  } else {
    row = (int64_t(src.first) + pos) * p.kv_stride_n;
  }
  return row + int64_t(src.kv_head) * p.kv_stride_h;
}

// Each thread copies chunk (tid % kChunks) of kRowsPerLoader rows of K and of V; rows past the
// end (offset -1) are zero-filled, not read.
template <class Tr>
__device__ __forceinline__ void issue_tile(const fib_attention_params& p, char* stage, const int64_t* offsets,
                                           int tid) {
  constexpr int kRowStride = Tr::kThreads / Tr::kChunks;
  const int chunk = tid % Tr::kChunks;
  const char* k = static_cast<const char*>(p.k) + chunk * Tr::kChunkBytes;
  const char* v = static_cast<const char*>(p.v) + chunk * Tr::kChunkBytes;
  char* s_k = stage;                                // (kTileKv, kRowBytes) swizzled
  char* s_v = stage + Tr::kTileKv * Tr::kRowBytes;  // (kTileKv, kRowBytes) swizzled
#pragma unroll
  for (int i = 0; i < Tr::kRowsPerLoader; ++i) {
    const int row = tid / Tr::kChunks + i * kRowStride;
    const int64_t off = offsets[row];
    const bool valid = off >= 0;
    const int64_t at = valid ? off * Tr::kKvBytes : 0;
    const int s = Tr::chunk_at(row, chunk);
    cp_async<Tr::kChunkBytes>(s_k + s, k + at, valid);
    cp_async<Tr::kChunkBytes>(s_v + s, v + at, valid);
  }
}

}  // namespace fib::decode
