// Merge layer: combines partial attention states (o, lse) by their log-sum-exp, a variable number
// of states per output row (fib_merge_params in api.h).
//
// It runs right after the split attention kernel, so its time adds to the whole step's latency: the
// kernel is built for few dependent memory round trips rather than few threads. One CTA per (row,
// head): every warp reads the row's state indices and lse once (the lanes in parallel) and turns
// them into softmax weights, while warp w loads the o of states w * kStatesPerWarp .. of each group
// of 32 (each lane a float4 slice of the head dim, 16-byte coalesced): up to 32 states cost one
// round trip after the attention kernel ends; the warps' sums meet in shared memory. Measured on
// an H100 (batch 1 x 32k split into 32 chunks, graph replays of the merge alone): 5.5-5.9 us with
// one warp per (row, head) and 8 states per round trip, 2.9-3.0 us with the o loads behind the lse
// loads.
#pragma once

#include <cuda_runtime.h>
#include <math.h>

#include "../api.h"
#include "../common/convert.cuh"
#include "../common/launch.cuh"
#include "../common/math.cuh"
#include "../common/types.cuh"
#include "../common/vec.cuh"

namespace fib::merge {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxDimSlices = 2;                // float4 slices per lane: head_dim <= 256 (checked in Python)
constexpr int kStatesPerWarp = 32 / kWarps;     // of each group of 32 states (one per lane)

template <typename T>
__device__ __forceinline__ void store4(T* dst, const float4& x) {
  Vec<T, 4> v;
  v[0] = from_float<T>(x.x), v[1] = from_float<T>(x.y), v[2] = from_float<T>(x.z), v[3] = from_float<T>(x.w);
  v.store(dst);
}

template <typename OutT>
__global__ void __launch_bounds__(kThreads) merge_states_kernel(const fib_merge_params p) {
  using T = native_t<OutT>;
  __shared__ float4 s_acc[kWarps][kMaxDimSlices * 32];

  // Programmatic launch (launch.cuh): the merge index is read before waiting for the previous
  // kernel (the attention kernel writing the partial states) where the flags say it was in place
  // before that kernel started: two of the four dependent loads then overlap its end.
  launch_dependents();
  if (!(p.flags & FIB_INDEX_READY)) wait_for_previous_grid();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int row = int(blockIdx.x / unsigned(p.num_heads)), head = int(blockIdx.x % unsigned(p.num_heads));
  const int begin = p.merge_indptr[row], end = p.merge_indptr[row + 1];
  if (begin >= end) return;  // rows with no state are left untouched (api.h)

  // Lane i holds state begin + i of each group of 32 states; warp w loads the o slices of the
  // group's states w * kStatesPerWarp .. (each lane a float4 of the head dim, 16-byte coalesced).
  // The loads need only the merge index, not the weights: the first group's o goes out together
  // with its lse, one round trip after the wait instead of two. A slot past the end reads the
  // row's first state instead; its weight is 0 and the select below drops it, as it drops an empty
  // state (lse = -inf), whatever its o holds.
  int64_t first_state = 0;
  if (begin + lane < end) first_state = p.merge_indices[begin + lane];
  const int64_t fallback = __shfl_sync(kFullWarp, first_state, 0);
  const int slices = p.head_dim / 4;
  const float4* src[kStatesPerWarp];
  float4 x[kStatesPerWarp][kMaxDimSlices];
  const auto find_group = [&](int base, int64_t state) {
#pragma unroll
    for (int u = 0; u < kStatesPerWarp; ++u) {
      const int j = warp * kStatesPerWarp + u;
      const int64_t sj = __shfl_sync(kFullWarp, state, j);
      src[u] = reinterpret_cast<const float4*>(p.partial_o + ((base + j < end ? sj : fallback) * p.num_heads + head) *
                                                                 p.head_dim);
    }
  };
  const auto load_group = [&] {
#pragma unroll
    for (int u = 0; u < kStatesPerWarp; ++u) {
#pragma unroll
      for (int s = 0; s < kMaxDimSlices; ++s) {
        x[u][s] = lane + 32 * s < slices ? load_streaming(src[u] + lane + 32 * s) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
  };
  find_group(begin, first_state);
  wait_for_previous_grid();  // the partial states are the previous kernel's output
  load_group();
  const float first_lse = begin + lane < end ? p.partial_lse[first_state * p.num_heads + head] : -INFINITY;
  asm volatile("" ::: "memory");  // keeps the o loads above ahead of the first use of an lse
  float m = first_lse;
  for (int i = begin + 32 + lane; i < end; i += 32) {
    m = fmaxf(m, p.partial_lse[int64_t(p.merge_indices[i]) * p.num_heads + head]);
  }
  m = warp_max<31>(m);
  // Every state empty (lse = -inf): the merged row saw no key either.
  const float m_ref = m == -INFINITY ? 0.0f : m;

  float4 acc[kMaxDimSlices] = {};
  float total = 0.0f;
  for (int base = begin; base < end; base += 32) {
    float lse = first_lse;
    if (base != begin) {
      int64_t state = 0;
      lse = -INFINITY;
      if (base + lane < end) {
        state = p.merge_indices[base + lane];
        lse = p.partial_lse[state * p.num_heads + head];
      }
      find_group(base, state);
      load_group();
      asm volatile("" ::: "memory");
    }
    const float w = fast_exp(lse - m_ref);  // 0 past the end (lse = -inf)
    total += w;
#pragma unroll
    for (int u = 0; u < kStatesPerWarp; ++u) {
      const float f = __shfl_sync(kFullWarp, w, warp * kStatesPerWarp + u);
#pragma unroll
      for (int s = 0; s < kMaxDimSlices; ++s) {
        const float4 v = f != 0.0f ? x[u][s] : make_float4(0.f, 0.f, 0.f, 0.f);
        acc[s].x += f * v.x;
        acc[s].y += f * v.y;
        acc[s].z += f * v.z;
        acc[s].w += f * v.w;
      }
    }
  }
  total = warp_sum<31>(total);  // the same in every warp: each saw every weight
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;

#pragma unroll
  for (int s = 0; s < kMaxDimSlices; ++s) s_acc[warp][lane + 32 * s] = acc[s];
  __syncthreads();
  T* out = static_cast<T*>(p.o) + int64_t(row) * p.o_stride_n + int64_t(head) * p.o_stride_h;
  for (int slice = threadIdx.x; slice < slices; slice += kThreads) {
    float4 sum = s_acc[0][slice];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) {
      const float4 a = s_acc[w][slice];
      sum.x += a.x, sum.y += a.y, sum.z += a.z, sum.w += a.w;
    }
    store4(out + 4 * slice, make_float4(sum.x * inv, sum.y * inv, sum.z * inv, sum.w * inv));
  }
  if (p.lse != nullptr && threadIdx.x == 0) {
    p.lse[int64_t(row) * p.num_heads + head] = total > 0.0f ? m_ref + logf(total) : -INFINITY;
  }
}

template <typename OutT>
cudaError_t run(const fib_merge_params* p, cudaStream_t stream) {
  const int64_t pairs = int64_t(p->num_rows) * p->num_heads;
  if (pairs == 0) return cudaSuccess;
  if (pairs > int64_t(0x7fffffff)) return cudaErrorInvalidValue;  // one CTA per (row, head) in grid.x
  return launch(merge_states_kernel<OutT>, unsigned(pairs), kThreads, 0, stream, *p);
}

template <typename OutT>
cudaError_t info(fib_kernel_info* info) {
  return fill_kernel_info<merge_states_kernel<OutT>>(info, kThreads, 0, 1, 0);
}

}  // namespace fib::merge
