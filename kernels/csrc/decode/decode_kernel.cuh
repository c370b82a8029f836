// Decode layer: the batch-decode kernel over a paged (or ragged) KV cache and its entry points.
//
// One CTA per (work item i, KV head h). It runs item i for KV head h: the packed query rows
// [qo_begin, qo_end) of its request (row = token * group + head within the group, so GQA groups,
// and the stacked query tokens of a cascade's shared level, share every KV byte read), over keys
// [kv_begin, kv_end) cut to the variant's kv_range.
// KV tiles of kTileKv keys stream through a kStages-deep cp.async pipeline; each warp takes
// 16-key slices of a tile for its m-tile of 16 rows (warps with the same m-tile split the keys;
// a warp with few partners takes kWideSlices slices a step), and the warps' partial softmax states
// are combined through shared memory at the end (a warp alone on its m-tile writes its rows from
// registers). The result goes to o/lse, or to float32 partial rows (partial_row >= 0) for the
// merge kernel.
#pragma once

#include <cuda_runtime.h>
#include <math.h>

#include <type_traits>

#include "../api.h"
#include "../common/convert.cuh"
#include "../common/cp_async.cuh"
#include "../common/launch.cuh"
#include "../common/math.cuh"
#include "../common/vec.cuh"
#include "../fusion/rope.cuh"
#include "../fusion/variant.cuh"
#include "decode_traits.cuh"
#include "kv_tile_loader.cuh"
#include "warp_mma_sm80.cuh"

namespace fib::decode {

template <class Tr>
constexpr float kRealPerStored = [] {
  if constexpr (Tr::kFp8) return Fp8Unpack<typename Tr::KvType>::kRealPerHalf;
  return 1.0f;
}();

// Number of keys of `request` (paged: full pages plus the last page's fill).
__device__ __forceinline__ int32_t kv_length(const fib_attention_params& p, int request) {
  const int32_t count = p.kv_indptr[request + 1] - p.kv_indptr[request];
  if (p.kv_indices == nullptr) return count;
  return count > 0 ? (count - 1) * p.page_size + p.kv_last_page_len[request] : 0;
}

// The request's first query token: its index (one token per request) without qo_indptr; with
// qo_indptr (variants without masks or positions, api.h), qo_indptr[request], and packed row r is
// its token r / group.
__device__ __forceinline__ int32_t first_token(const fib_attention_params& p, int request) {
  return p.qo_indptr == nullptr ? request : p.qo_indptr[request];
}

// The CTA's query rows on their way to shared memory as Math (Q, fp16 for fp8 KV), RoPE applied
// at the query's position; rows past the work item's are zeroed so every m-tile computes on finite
// data. load() issues every global load and store() waits for them: the KV pipeline's first copies
// go out in between, and no load waits for a store (a load-convert-store loop paid a dependent round
// trip per 16-byte piece: 5.9 us of prologue on an H100 for 64 stacked rows against 3.0 for 4).
template <class Tr, class Var>
struct QueryStage {
  using QN = typename Tr::QNative;
  using M = typename Tr::Math;
  static constexpr int kGroups = Tr::kHeadDim / 8;  // 8-dim groups per row
  static constexpr bool kRope = Var::kPos == PosEncoding::kRope;
  static constexpr int kHalves = kRope ? 2 : 1;
  static constexpr int kTasksPerRow = kGroups / kHalves;  // RoPE: a task rotates groups g and g + kGroups / 2
  static constexpr int kTasks = Tr::kTileQ * kTasksPerRow;
  static constexpr int kIters = ceil_div(kTasks, Tr::kThreads);

  Vec<QN, 8> v[kIters][kHalves];

  // token0: the request's first query token (first_token).
  __device__ __forceinline__ void load(const fib_attention_params& p, const fib_work_item& item, int64_t token0,
                                       int rows, int group, int kv_head, int tid) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int task = tid + i * Tr::kThreads, row = task / kTasksPerRow, g = task % kTasksPerRow;
      if (task < kTasks && row < rows) {
        const int packed = item.qo_begin + row;
        const int head = kv_head * group + packed % group;
        const QN* src =
            static_cast<const QN*>(p.q) + (token0 + packed / group) * p.q_stride_n + int64_t(head) * p.q_stride_h;
#pragma unroll
        for (int half = 0; half < kHalves; ++half) v[i][half] = Vec<QN, 8>::load(src + 8 * (g + half * kGroups / 2));
      }
    }
  }

  __device__ __forceinline__ void store(const fib_attention_params& p, int rows, float q_pos, char* s_q, int tid) const {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int task = tid + i * Tr::kThreads, row = task / kTasksPerRow, g = task % kTasksPerRow;
      if (task >= kTasks) break;
      float x[kHalves][8] = {};
      if (row < rows) {
#pragma unroll
        for (int half = 0; half < kHalves; ++half) {
#pragma unroll
          for (int e = 0; e < 8; ++e) x[half][e] = to_float(v[i][half][e]);
        }
        if constexpr (kRope) {
          const RopeFrequencies frequencies(p);
#pragma unroll
          for (int e = 0; e < 8; ++e) rope_rotate(q_pos, frequencies(8 * g + e, Tr::kHeadDim), x[0][e], x[1][e]);
        }
      }
#pragma unroll
      for (int half = 0; half < kHalves; ++half) {
        Vec<M, 8> out;
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = from_float<M>(x[half][e]);
        out.store(reinterpret_cast<M*>(s_q + row * Tr::kQPitch) + 8 * (g + half * kGroups / 2));
      }
    }
  }
};

template <typename QT, typename KVT, int HeadDim, class Var>
__global__ void __launch_bounds__(DecodeTraits<QT, KVT, HeadDim>::kThreads)
    decode_kernel(const __grid_constant__ fib_attention_params p) {
  using Tr = DecodeTraits<QT, KVT, HeadDim>;
  using QN = typename Tr::QNative;
  constexpr bool kRope = Var::kPos == PosEncoding::kRope;
  extern __shared__ __align__(128) char smem[];

  // Programmatic launch (launch.cuh): this CTA may start while the previous kernel still runs. It
  // walks the page table (work item -> kv_indptr -> kv_indices, three dependent loads, ~3 us of a
  // 1 x 32k split's 53 us) before waiting for that kernel where the flags (api.h) say those arrays
  // were in place before it started, and reads q, k, v and writes its outputs only after.
  launch_dependents();
  if (!(p.flags & FIB_INDEX_READY)) wait_for_previous_grid();

  // CTA (i, h) of the api.h grid is block i * num_kv_heads + h: the KV heads of one work item are
  // dispatched together, so the CTAs reading the same pages run side by side (whole pages per DRAM
  // row instead of one head's slice of each).
  const fib_work_item item = p.work[blockIdx.x / p.num_kv_heads];
  if (item.request < 0) return;  // padding of a fixed-size grid
  const int kv_head = blockIdx.x % p.num_kv_heads;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int group = p.num_qo_heads / p.num_kv_heads;
  const int rows = min(item.qo_end - item.qo_begin, Tr::kTileQ);
  const int kv_len = kv_length(p, item.request);

  // Decode: one query token per request, at position kv_len - 1. For it, kv_range is exact (every
  // key inside is visible), so the mainloop needs no per-element mask, only the tail cut. Stacked
  // tokens (qo_indptr given) come only with variants that have no mask or positions: they too see
  // exactly [0, kv_len).
  const RowContext ctx{item.request, 1, kv_len, 0};
  int32_t lo, hi;
  Var::kv_range(p, ctx, 0, 0, &lo, &hi);
  const int32_t kv_begin = max(item.kv_begin, lo), kv_end = min(item.kv_end, hi);
  const int num_tiles = kv_end > kv_begin ? ceil_div(kv_end - kv_begin, Tr::kTileKv) : 0;
  const KvSource src{p.kv_indptr[item.request], kv_head};
  const int64_t token0 = first_token(p, item.request);  // an index array, as kv_indptr (api.h)

  int64_t* offsets = reinterpret_cast<int64_t*>(smem + Tr::kOffsetsAt);  // (kOffsetSlots, kTileKv)
  char* s_q = smem + Tr::kQAt;                                            // (kTileQ, kQPitch)

  // Page lookups run ahead of their copies: the row offsets of tile t are loaded into registers at
  // the end of iteration t - kStages - 1, published to shared memory at the end of the next one,
  // and read by the copies issued in iteration t - kStages + 1: a lookup's latency overlaps a whole
  // iteration instead of ending one (measured: fp8 stuck at ~77% of copy bandwidth before).
  const auto lookup = [&](int tile, int64_t(&dst)[Tr::kLookupsPerThread]) {
#pragma unroll
    for (int i = 0; i < Tr::kLookupsPerThread; ++i) {
      const int row = tid + i * Tr::kThreads;
      dst[i] = row < Tr::kTileKv && tile < num_tiles ? kv_row_offset(p, src, kv_begin + tile * Tr::kTileKv + row, kv_end)
                                                     : -1;
    }
  };
  const auto publish = [&](int tile, const int64_t(&from)[Tr::kLookupsPerThread]) {
#pragma unroll
    for (int i = 0; i < Tr::kLookupsPerThread; ++i) {
      const int row = tid + i * Tr::kThreads;
      if (row < Tr::kTileKv) offsets[(tile % Tr::kOffsetSlots) * Tr::kTileKv + row] = from[i];
    }
  };
  if (!(p.flags & FIB_PAGES_READY)) wait_for_previous_grid();
  int64_t first[Tr::kStages][Tr::kLookupsPerThread], ahead[Tr::kLookupsPerThread];
  // Warp roles: m-tiles of 16 rows; the warps of one m-tile take every slices-th key slice.
  const int m_tiles = ceil_div(rows, 16);
  const int slices = Tr::kWarps / m_tiles;
  const int m_tile = warp % m_tiles, slice = warp / m_tiles;
  const bool active = slice < slices;
  // Warps that share their m-tile with no more than one other warp (stacked rows: a cascade's
  // shared level, or a GQA group of over 16 heads) take kWideSlices slices a step: more independent
  // mma chains in flight and one softmax update per step, where a 16-key step leaves a warp stalled
  // on its own latencies. RoPE keeps one slice a step (its key angles turn by one stride a step).
  const bool wide = !kRope && m_tiles >= 2 && slices * Tr::kWideSlices <= Tr::kTileSlices;
  const int r = lane / 4, c = lane % 4;
  using KeyRopeT = KeyRope<Tr>;
  auto& rope_table = *reinterpret_cast<typename KeyRopeT::Table*>(smem + Tr::kRopeAt);
  if constexpr (kRope) KeyRopeT::fill(p, rope_table, slices, tid);

#pragma unroll
  for (int t = 0; t < Tr::kStages; ++t) lookup(t, first[t]);
  lookup(Tr::kStages, ahead);
  wait_for_previous_grid();  // q, the cache and the outputs may be the previous kernel's
  // Query loads first (a prefix CTA's 64 rows are 16 KB, on the prologue's critical path), then
  // the first tiles' copies, whose round trip the loads then share.
  QueryStage<Tr, Var> q_stage;
  q_stage.load(p, item, token0, rows, group, kv_head, tid);
#pragma unroll
  for (int t = 0; t < Tr::kStages; ++t) publish(t, first[t]);
  __syncthreads();  // the first tiles' row offsets, for every copying thread
#pragma unroll
  for (int t = 0; t < Tr::kStages - 1; ++t) {
    if (t < num_tiles) issue_tile<Tr>(p, smem + t * Tr::kStageBytes, offsets + t * Tr::kTileKv, tid);
    cp_async_commit();
  }
  q_stage.store(p, rows, float(Var::query_pos(ctx, 0)), s_q, tid);
  __syncthreads();

  const char* q_row0 = s_q + (m_tile * 16 + r) * Tr::kQPitch;
  uint32_t qf[Tr::kQInRegisters ? Tr::kKSteps : 1][4];
  if constexpr (Tr::kQInRegisters) {
#pragma unroll
    for (int j = 0; j < Tr::kKSteps; ++j) load_q_step<Tr>(q_row0, c, j, qf[j]);
  }
  // The warp's slices sit kSliceKeys * slices keys apart, across tiles too (kTileSlices % slices == 0).
  KeyRopeT key_rope;
  int rope_slices = 0;
  if constexpr (kRope) key_rope.seed(rope_table, c, float(kv_begin + slice * Tr::kSliceKeys + r));

  // Logit of raw dot product s for key kv in the log2 domain (k_scale folded in; fp8 widened to
  // fp16 reads kRealPerStored too small).
  const float k_scale = p.k_scale * kRealPerStored<Tr>;
  const float scale_log2 = Var::softmax_scale_log2(p);
  const float logit_scale = k_scale * scale_log2;
  RowContext row_ctx[2] = {ctx, ctx};
#pragma unroll
  for (int h = 0; h < 2; ++h) row_ctx[h].qo_head = kv_head * group + (item.qo_begin + m_tile * 16 + r + 8 * h) % group;

  const LaneOffsets<Tr> at(lane);
  WarpState<Tr> st;
  init_state<Tr>(st);

  for (int t = 0; t < num_tiles; ++t) {
    cp_async_wait<Tr::kStages - 2>();
    __syncthreads();  // tile t landed for all threads; tile t - 1's stage and offsets are free
    const int next = t + Tr::kStages - 1;
    if (next < num_tiles) {
      issue_tile<Tr>(p, smem + (next % Tr::kStages) * Tr::kStageBytes,
                     offsets + (next % Tr::kOffsetSlots) * Tr::kTileKv, tid);
    }
    cp_async_commit();

    const int tile_pos = kv_begin + t * Tr::kTileKv;
    const char* s_k = smem + (t % Tr::kStages) * Tr::kStageBytes;
    const char* s_v = s_k + Tr::kTileKv * Tr::kRowBytes;
    // One step of a warp: kN consecutive slices from slice ks: S = Q K^T, the logits, one online
    // softmax update over all kN * 16 keys, then O += P V.
    const auto step = [&](auto slices_per_step, int ks) {
      constexpr int kN = decltype(slices_per_step)::value;
      float s[2 * kN][4];
      qk_step<Tr, kRope>(s_k + ks * Tr::kSliceKeys * Tr::kRowBytes, at, lane, qf, q_row0, key_rope, rope_table, s);
      if constexpr (kRope) {
        static_assert(kN == 1, "RoPE turns the key angles by one slice stride a step");
        if (++rope_slices % KeyRopeT::kReseedSlices == 0) {
          key_rope.seed(rope_table, c, float(tile_pos + (ks + slices) * Tr::kSliceKeys + r));
        } else {
          key_rope.advance(rope_table, c);
        }
      }
      const int key0 = tile_pos + ks * Tr::kSliceKeys;
#pragma unroll
      for (int n = 0; n < 2 * kN; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if constexpr (Var::kNeedsPerElementTransform) {
            const int kv = key0 + 8 * n + 2 * c + (e & 1);
            s[n][e] = Var::logits_transform(p, row_ctx[e >> 1], 0, kv, s[n][e] * k_scale) * scale_log2;
          } else {
            s[n][e] *= logit_scale;
          }
        }
      }
      if (key0 + kN * Tr::kSliceKeys > kv_end) {  // the step runs past the request's last key
#pragma unroll
        for (int n = 0; n < 2 * kN; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (key0 + 8 * n + 2 * c + (e & 1) >= kv_end) s[n][e] = -INFINITY;
          }
        }
      }
      softmax_step<Tr, 2 * kN>(st, s);
#pragma unroll
      for (int i = 0; i < kN; ++i) pv_slice<Tr>(st, s_v + (ks + i) * Tr::kSliceKeys * Tr::kRowBytes, at, s + 2 * i);
    };
    if (active) {
      if (wide) {
        constexpr int kN = kRope ? 1 : Tr::kWideSlices;  // (RoPE never takes wide steps)
        for (int j = slice; j < Tr::kTileSlices / kN && tile_pos + j * kN * Tr::kSliceKeys < kv_end; j += slices) {
          step(std::integral_constant<int, kN>{}, j * kN);
        }
      } else {
        for (int ks = slice; ks < Tr::kTileSlices && tile_pos + ks * Tr::kSliceKeys < kv_end; ks += slices) {
          step(std::integral_constant<int, 1>{}, ks);
        }
      }
    }
    publish(t + Tr::kStages, ahead);
    lookup(t + Tr::kStages + 1, ahead);
  }
  const float v_scale = p.v_scale * kRealPerStored<Tr>;
  // Writes dims [d, d + 8) of CTA row `row` (o times norm; lse with the row's first dims).
  const auto store8 = [&](int row, int d, const float (&acc)[8], float norm, float lse) {
    const int packed = item.qo_begin + row;
    const int head = kv_head * group + packed % group;
    if (item.partial_row >= 0) {
      const int64_t prow =
          int64_t(item.partial_row + packed / group - item.qo_begin / group) * p.num_qo_heads + head;
      float4* dst = reinterpret_cast<float4*>(p.partial_o + prow * Tr::kHeadDim + d);
      dst[0] = make_float4(acc[0] * norm, acc[1] * norm, acc[2] * norm, acc[3] * norm);
      dst[1] = make_float4(acc[4] * norm, acc[5] * norm, acc[6] * norm, acc[7] * norm);
      if (d == 0) p.partial_lse[prow] = lse;
    } else {
      Vec<QN, 8> out;
#pragma unroll
      for (int e = 0; e < 8; ++e) out[e] = from_float<QN>(acc[e] * norm);
      const int64_t token = token0 + packed / group;
      out.store(static_cast<QN*>(p.o) + token * p.o_stride_n + int64_t(head) * p.o_stride_h + d);
      if (d == 0 && p.lse != nullptr) p.lse[token * p.num_qo_heads + head] = lse;
    }
  };
  // A row that saw no key: o = 0, lse = -inf (api.h).
  const auto finish = [&](float m, float l, float* norm, float* lse) {
    const float m_ref = m == -INFINITY ? 0.0f : m;
    *norm = l > 0.0f ? v_scale / l : 0.0f;
    *lse = l > 0.0f ? (m_ref + __log2f(l)) * kLn2 : -INFINITY;
  };

  if (slices == 1) {
    // Each warp alone on its m-tile (stacked rows): it writes its rows from registers. Lane (r, c)
    // holds of rows r and r + 8 the output dims 2c * kDimTiles + u and (2c + 1) * kDimTiles + u
    // (warp_mma_sm80.cuh), two runs of kDimTiles, so a row's 4 lanes write it whole.
    cp_async_wait<0>();  // only empty groups are left
    if (!active) return;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = warp_sum<3>(st.l[h]);
      const int row = m_tile * 16 + r + 8 * h;
      if (row >= rows) continue;
      float norm, lse;
      finish(st.m[h], l, &norm, &lse);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
#pragma unroll
        for (int u0 = 0; u0 < Tr::kDimTiles; u0 += 8) {
          float acc[8];
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[e] = st.o[u0 + e][2 * h + half];
          store8(row, (2 * c + half) * Tr::kDimTiles + u0, acc, norm, lse);
        }
      }
    }
    return;
  }

  // Combine the warps of each m-tile: (o, m, l) through the now idle pipeline buffers.
  cp_async_wait<0>();
  __syncthreads();
  float* s_o = reinterpret_cast<float*>(smem);  // (kWarps, 16, kOPitch)
  float* s_m = s_o + Tr::kWarps * 16 * Tr::kOPitch;
  float* s_l = s_m + Tr::kWarps * 16;
  if (active) store_state<Tr>(st, lane, s_o + warp * 16 * Tr::kOPitch, s_m + warp * 16, s_l + warp * 16);
  __syncthreads();

  constexpr int kGroups = Tr::kHeadDim / 8;
  for (int task = tid; task < rows * kGroups; task += Tr::kThreads) {
    const int row = task / kGroups, g = task % kGroups;
    const int mt = row / 16, rr = row % 16;
    float m = -INFINITY;
    for (int s = 0; s < slices; ++s) m = fmaxf(m, s_m[(mt + s * m_tiles) * 16 + rr]);
    const float m_ref = m == -INFINITY ? 0.0f : m;
    float l = 0.0f, acc[8] = {};
    for (int s = 0; s < slices; ++s) {
      const int w = (mt + s * m_tiles) * 16 + rr;
      const float f = fast_exp2(s_m[w] - m_ref);
      l += s_l[w] * f;
      const float4* src_o = reinterpret_cast<const float4*>(s_o + w * Tr::kOPitch + 8 * g);
      const float4 a = src_o[0], b = src_o[1];
      acc[0] += f * a.x, acc[1] += f * a.y, acc[2] += f * a.z, acc[3] += f * a.w;
      acc[4] += f * b.x, acc[5] += f * b.y, acc[6] += f * b.z, acc[7] += f * b.w;
    }
    float norm, lse;
    finish(m, l, &norm, &lse);
    store8(row, 8 * g, acc, norm, lse);
  }
}

template <typename QT, typename KVT, int HeadDim, class Var>
cudaError_t run(const fib_attention_params* p, cudaStream_t stream) {
  using Tr = DecodeTraits<QT, KVT, HeadDim>;
  if (p->num_work <= 0 || p->num_kv_heads <= 0) return cudaSuccess;
  constexpr auto kernel = decode_kernel<QT, KVT, HeadDim, Var>;
  const cudaError_t err = configure_kernel<kernel>(Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  return launch(kernel, unsigned(p->num_work) * unsigned(p->num_kv_heads), Tr::kThreads, Tr::kSmemBytes, stream, *p);
}

template <typename QT, typename KVT, int HeadDim, class Var>
cudaError_t info(fib_kernel_info* info) {
  using Tr = DecodeTraits<QT, KVT, HeadDim>;
  return fill_kernel_info<decode_kernel<QT, KVT, HeadDim, Var>>(info, Tr::kThreads, Tr::kSmemBytes, Tr::kTileQ,
                                                                Tr::kTileKv);
}

}  // namespace fib::decode
