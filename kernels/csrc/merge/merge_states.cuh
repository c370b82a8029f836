// Merge layer: combines partial attention states (o, lse) by their log-sum-exp, a variable number
// of states per output row (fib_merge_params in api.h).
//
// One warp per (row, head): the states' lse are read once by the lanes in parallel and turned into
// softmax weights, which the accumulation loop then takes from lanes by shuffle; each lane owns
// float4 slices of the head dim, so every partial row is read with 16-byte coalesced loads.
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

constexpr int kWarpsPerCta = 4;
constexpr int kThreads = kWarpsPerCta * 32;
constexpr int kMaxDimSlices = 2;  // float4 slices per lane: head_dim <= 256 (checked in Python)
constexpr int kUnroll = 8;        // states whose loads are in flight together

template <typename T>
__device__ __forceinline__ void store4(T* dst, const float (&x)[4]) {
  Vec<T, 4> v;
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = from_float<T>(x[i]);
  v.store(dst);
}

template <typename OutT>
__global__ void __launch_bounds__(kThreads) merge_states_kernel(const fib_merge_params p) {
  using T = native_t<OutT>;
  const int lane = threadIdx.x % 32;
  const int64_t pair = int64_t(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32;
  if (pair >= int64_t(p.num_rows) * p.num_heads) return;
  const int row = int(pair / p.num_heads), head = int(pair % p.num_heads);
  const int begin = p.merge_indptr[row], end = p.merge_indptr[row + 1];
  if (begin >= end) return;  // rows with no state are left untouched (api.h)

  const int slices = p.head_dim / 4;
  float m = -INFINITY;
  for (int i = begin + lane; i < end; i += 32) {
    m = fmaxf(m, p.partial_lse[int64_t(p.merge_indices[i]) * p.num_heads + head]);
  }
  m = warp_max<31>(m);
  // Every state empty (lse = -inf): the merged row saw no key either.
  const float m_ref = m == -INFINITY ? 0.0f : m;

  float acc[kMaxDimSlices][4] = {};
  float total = 0.0f;
  for (int base = begin; base < end; base += 32) {
    const int i = base + lane;
    int64_t state = 0;
    float w = 0.0f;
    if (i < end) {
      state = p.merge_indices[i];
      w = fast_exp(p.partial_lse[state * p.num_heads + head] - m_ref);
    }
    total += w;
    // kUnroll states at a time: their loads go out together instead of one latency per state.
    const int n = min(32, end - base);
    for (int j0 = 0; j0 < n; j0 += kUnroll) {
      float wj[kUnroll];
      float4 x[kUnroll][kMaxDimSlices];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int j = (j0 + u) & 31;
        wj[u] = __shfl_sync(kFullWarp, w, j);
        const int64_t sj = __shfl_sync(kFullWarp, state, j);
        // An empty state (lse = -inf, w = 0) adds nothing, whatever its o holds: it is not read.
        const bool live = j0 + u < n && wj[u] != 0.0f;
        const float4* src = reinterpret_cast<const float4*>(p.partial_o + (sj * p.num_heads + head) * p.head_dim);
#pragma unroll
        for (int s = 0; s < kMaxDimSlices; ++s) {
          const int slice = lane + 32 * s;
          x[u][s] = live && slice < slices ? load_streaming(src + slice) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (j0 + u >= n || wj[u] == 0.0f) continue;
#pragma unroll
        for (int s = 0; s < kMaxDimSlices; ++s) {
          acc[s][0] += wj[u] * x[u][s].x;
          acc[s][1] += wj[u] * x[u][s].y;
          acc[s][2] += wj[u] * x[u][s].z;
          acc[s][3] += wj[u] * x[u][s].w;
        }
      }
    }
  }
  total = warp_sum<31>(total);
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;

  T* out = static_cast<T*>(p.o) + int64_t(row) * p.o_stride_n + int64_t(head) * p.o_stride_h;
#pragma unroll
  for (int s = 0; s < kMaxDimSlices; ++s) {
    const int slice = lane + 32 * s;
    if (slice < slices) {
      float x[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) x[e] = acc[s][e] * inv;
      store4(out + 4 * slice, x);
    }
  }
  if (p.lse != nullptr && lane == 0) {
    p.lse[int64_t(row) * p.num_heads + head] = total > 0.0f ? m_ref + logf(total) : -INFINITY;
  }
}

template <typename OutT>
cudaError_t run(const fib_merge_params* p, cudaStream_t stream) {
  const int64_t pairs = int64_t(p->num_rows) * p->num_heads;
  if (pairs == 0) return cudaSuccess;
  const unsigned grid = unsigned((pairs + kWarpsPerCta - 1) / kWarpsPerCta);
  merge_states_kernel<OutT><<<grid, kThreads, 0, stream>>>(*p);
  return cudaGetLastError();
}

template <typename OutT>
cudaError_t info(fib_kernel_info* info) {
  return fill_kernel_info<merge_states_kernel<OutT>>(info, kThreads, 0, kWarpsPerCta, 0);
}

}  // namespace fib::merge
