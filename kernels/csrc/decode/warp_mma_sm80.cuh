// Decode layer: one warp's share of a KV tile on the sm80 tensor cores (mma.sync m16n8k16, also
// what sm90a runs until a wgmma mainloop exists): S = Q K^T for 16 keys, the online softmax, and
// O += P V, for the warp's m-tile of 16 packed query rows.
//
// Operand layouts (common/mma.cuh) are met without ldmatrix, from 16-byte shared-memory reads, by
// permuting the two summed-over indices, which changes no result:
//  - Q K^T sums over the head dim. Lane (r, c) reads chunks c + 4m of key row r and feeds their
//    elements, in order, as its B words; the Q fragments are read from the same dims.
//  - P V sums over keys; its output dims are permuted instead: lane (r, c) holds, in n-tile u,
//    output dim r * kDimTiles + u, so it reads one contiguous run of kDimTiles values per value row
//    and pairs rows 2c/2c+1 (and 2c+8/2c+9) with one byte permute per word. The combine undoes
//    the permutation when it writes o.
// fp8 words are widened to fp16 pairs right after the read (exact, convert.cuh).
#pragma once

#include <math.h>
#include <stdint.h>

#include "../common/convert.cuh"
#include "../common/math.cuh"
#include "../common/mma.cuh"
#include "../common/vec.cuh"
#include "../fusion/rope.cuh"
#include "decode_traits.cuh"

namespace fib::decode {

template <class Tr>
struct WarpState {
  float o[Tr::kDimTiles][4];  // (16 rows, kHeadDim) accumulator, dims permuted (see above)
  float m[2];                 // running max of rows r and r + 8, log2 domain
  float l[2];                 // this lane's share of their running sums
};

template <class Tr>
__device__ __forceinline__ void init_state(WarpState<Tr>& st) {
#pragma unroll
  for (int u = 0; u < Tr::kDimTiles; ++u) {
#pragma unroll
    for (int e = 0; e < 4; ++e) st.o[u][e] = 0.0f;
  }
  st.m[0] = st.m[1] = -INFINITY;
  st.l[0] = st.l[1] = 0.0f;
}

// Physical head dim of the first of the 4 elements lane c feeds to k-step j.
template <class Tr>
__device__ __forceinline__ int qk_dim(int c, int j) {
  const int flat = 4 * j;
  return (c + 4 * (flat / Tr::kChunkElems)) * Tr::kChunkElems + flat % Tr::kChunkElems;
}

// A fragment of k-step j for the m-tile whose row r starts at `q_row0` (Q staged as Math, (rows, kQPitch)).
template <class Tr>
__device__ __forceinline__ void load_q_step(const char* q_row0, int c, int j, uint32_t (&a)[4]) {
  const int at = qk_dim<Tr>(c, j) * 2;
  const uint2 lo = *reinterpret_cast<const uint2*>(q_row0 + at);
  const uint2 hi = *reinterpret_cast<const uint2*>(q_row0 + 8 * Tr::kQPitch + at);
  a[0] = lo.x;
  a[2] = lo.y;
  a[1] = hi.x;
  a[3] = hi.y;
}

// RoPE on the key rows a lane feeds to Q K^T (fusion/rope.cuh), by angle addition: every CTA
// rotates each key row it reads once, and per-element sin/cos were most of that work. The lane
// keeps cos/sin of its kKPairs pairs at the position of its row r in the warp's next slice; row
// r + 8 takes them turned by 8 positions, and the next slice (kSliceKeys * slices keys on) by the
// slice stride, both from a per-CTA table. Every kReseedSlices slices they are computed outright
// again, so rounding (~1e-7 rad a step) cannot pile up over long requests.
// Pair j of a lane is element j % 2 of its operand words j / 2 (low half) and j / 2 + kKPairs / 2.
template <class Tr>
struct KeyRope {
  static constexpr int kPairs = Tr::kKPairs;
  static constexpr int kReseedSlices = 64;

  struct Table {  // entries [pair j][lane column c]: a warp's reads of one j are 32 contiguous bytes
    RopeFreq freq[kPairs * 4];
    float2 turn8[kPairs * 4];
    float2 stride[kPairs * 4];
  };

  static_assert(sizeof(Table) <= Tr::kRopeBytes, "decode_traits.cuh reserves the table's shared memory");

  float c[kPairs];
  float s[kPairs];

  // First-half dim of pair j of lane column c (the layout load_k_words reads).
  __device__ __forceinline__ static int pair_dim(int c, int j) {
    constexpr int kPairsPerChunk = Tr::kChunkElems / 2;
    const int w = j / 2;
    return (c + 4 * (w / kPairsPerChunk)) * Tr::kChunkElems + 2 * (w % kPairsPerChunk) + j % 2;
  }

  // Once per CTA. The turns are taken with the accurate sincospif: their errors add up.
  __device__ __forceinline__ static void fill(const fib_attention_params& p, Table& table, int slices, int tid) {
    const RopeFrequencies frequencies(p);
    for (int e = tid; e < kPairs * 4; e += Tr::kThreads) {
      const RopeFreq f = frequencies(pair_dim(e % 4, e / 4), Tr::kHeadDim);
      float cs, sn;
      table.freq[e] = f;
      sincospif(2.0f * rope_turns(8.0f, f), &sn, &cs);
      table.turn8[e] = make_float2(cs, sn);
      sincospif(2.0f * rope_turns(float(Tr::kSliceKeys * slices), f), &sn, &cs);
      table.stride[e] = make_float2(cs, sn);
    }
  }

  __device__ __forceinline__ static void turn(float& cs, float& sn, float2 by) {
    const float next = cs * by.x - sn * by.y;
    sn = sn * by.x + cs * by.y;
    cs = next;
  }

  __device__ __forceinline__ void seed(const Table& table, int lane_c, float pos) {
#pragma unroll
    for (int j = 0; j < kPairs; ++j) rope_cos_sin(pos, table.freq[j * 4 + lane_c], c[j], s[j]);
  }

  __device__ __forceinline__ void advance(const Table& table, int lane_c) {
#pragma unroll
    for (int j = 0; j < kPairs; ++j) turn(c[j], s[j], table.stride[j * 4 + lane_c]);
  }

  // Rotates one key row held as operand words; shifted: the row 8 positions past the kept angles.
  __device__ __forceinline__ void rotate(uint32_t (&kw)[kPairs], const Table& table, int lane_c, bool shifted) const {
    using M = typename Tr::Math;
    constexpr int kHalf = kPairs / 2;
#pragma unroll
    for (int w = 0; w < kHalf; ++w) {
      float2 lo = unpack2<M>(kw[w]), hi = unpack2<M>(kw[w + kHalf]);
      float cs[2] = {c[2 * w], c[2 * w + 1]}, sn[2] = {s[2 * w], s[2 * w + 1]};
      if (shifted) {
        turn(cs[0], sn[0], table.turn8[(2 * w) * 4 + lane_c]);
        turn(cs[1], sn[1], table.turn8[(2 * w + 1) * 4 + lane_c]);
      }
      rope_rotate(cs[0], sn[0], lo.x, hi.x);
      rope_rotate(cs[1], sn[1], lo.y, hi.y);
      kw[w] = pack2<M>(lo.x, lo.y);
      kw[w + kHalf] = pack2<M>(hi.x, hi.y);
    }
  }
};

// Lane (r, c)'s byte offsets in a K or V tile, computed once per CTA: K chunk c of row r (its Q K^T
// reads are chunks c + 4m of rows r + 8t) and V chunk r * kVChunksPerLane of rows 2c and 2c + 1 (its
// P V reads add chunks q and rows 8); every read of a step is one of these moved (decode_traits.cuh).
template <class Tr>
struct LaneOffsets {
  int k;
  int v[2];

  __device__ __forceinline__ explicit LaneOffsets(int lane) {
    const int r = lane / 4, c = lane % 4;
    k = Tr::chunk_at(r, c);
    v[0] = Tr::chunk_at(2 * c, r * Tr::kVChunksPerLane);
    v[1] = Tr::chunk_at(2 * c + 1, r * Tr::kVChunksPerLane);
  }
};

// Lane (r, c)'s B words of chunk c + 4m of key row r + 8t (fp8 widened): words 2i, 2i + 1 feed
// k-step m * kSteps + i.
template <class Tr>
struct KChunk {
  static constexpr int kWords = Tr::kChunkElems / 2;
  static constexpr int kSteps = kWords / 2;
  uint32_t w[kWords];

  __device__ __forceinline__ void load(const char* s_k, const LaneOffsets<Tr>& at, int m, int t) {
    const auto raw = Words<Tr::kChunkBytes>::load(s_k + Tr::moved(at.k, 4 * m, t));
#pragma unroll
    for (int q = 0; q < Tr::kChunkWords; ++q) {
      if constexpr (Tr::kFp8) {
        Fp8Unpack<typename Tr::KvType>::to_half2x2(raw.w[q], w[2 * q], w[2 * q + 1]);
      } else {
        w[q] = raw.w[q];
      }
    }
  }
};

// Lane (r, c)'s B words of key row r + 8t for all k-steps: word 2j and 2j+1 feed k-step j.
template <class Tr>
__device__ __forceinline__ void load_k_words(const char* s_k, const LaneOffsets<Tr>& at, int t,
                                             uint32_t (&kw)[Tr::kKPairs]) {
  constexpr int kWords = KChunk<Tr>::kWords;
#pragma unroll
  for (int m = 0; m < Tr::kKChunksPerLane; ++m) {
    KChunk<Tr> chunk;
    chunk.load(s_k, at, m, t);
#pragma unroll
    for (int q = 0; q < kWords; ++q) kw[m * kWords + q] = chunk.w[q];
  }
}

// S (16 rows x 8 kTiles keys from row 0 of `s_k`, a slice-aligned view of the K tile) = Q K^T,
// raw dot products, into n-tiles s[t]: s[t][0..1] = row r, keys 8t + 2c + {0,1}; s[t][2..3] = row
// r + 8. Without RoPE the n-tiles' mma chains are interleaved, k-step outer: a warp alone on its scheduler (a
// cascade's stacked rows) otherwise waits out each mma's latency in turn, n-tile after n-tile.
template <class Tr, bool kRope, int kTiles>
__device__ __forceinline__ void qk_step(const char* s_k, const LaneOffsets<Tr>& at, int lane, const uint32_t (*qf)[4],
                                        const char* q_row0, const KeyRope<Tr>& rope,
                                        const typename KeyRope<Tr>::Table& rope_table, float (&s)[kTiles][4]) {
  using M = typename Tr::Math;
  const int c = lane % 4;
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[t][e] = 0.0f;
  }
  // The A fragment of k-step j: kept in registers, or re-read from shared memory (head dim 256).
  const auto q_fragment = [&](int j, uint32_t(&a)[4]) {
    if constexpr (Tr::kQInRegisters) {
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = qf[j][i];
    } else {
      load_q_step<Tr>(q_row0, c, j, a);
    }
  };
  if constexpr (kRope) {
    // A row is rotated whole (pairs span its two halves), so RoPE loads rows, not chunks, one
    // n-tile at a time (both rows' words at once spill).
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      uint32_t kw[Tr::kKPairs];
      load_k_words<Tr>(s_k, at, t, kw);
      rope.rotate(kw, rope_table, c, t % 2 == 1);
#pragma unroll
      for (int j = 0; j < Tr::kKSteps; ++j) {
        uint32_t a[4];
        q_fragment(j, a);
        const uint32_t b[2] = {kw[2 * j], kw[2 * j + 1]};
        mma_m16n8k16<M>(s[t], a, b);
      }
    }
  } else {
#pragma unroll
    for (int m = 0; m < Tr::kKChunksPerLane; ++m) {
      KChunk<Tr> kc[kTiles];
#pragma unroll
      for (int t = 0; t < kTiles; ++t) kc[t].load(s_k, at, m, t);
#pragma unroll
      for (int i = 0; i < KChunk<Tr>::kSteps; ++i) {
        uint32_t a[4];
        q_fragment(m * KChunk<Tr>::kSteps + i, a);
#pragma unroll
        for (int t = 0; t < kTiles; ++t) {
          const uint32_t b[2] = {kc[t].w[2 * i], kc[t].w[2 * i + 1]};
          mma_m16n8k16<M>(s[t], a, b);
        }
      }
    }
  }
}

// Online softmax over the kTiles n-tiles of one step (two per slice): s holds logits in the log2
// domain (-inf where masked) and leaves holding the unnormalized probabilities; o and l are
// rescaled to the new running max.
template <class Tr, int kTiles>
__device__ __forceinline__ void softmax_step(WarpState<Tr>& st, float (&s)[kTiles][4]) {
  float corr[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = -INFINITY;
#pragma unroll
    for (int t = 0; t < kTiles; ++t) mx = fmaxf(mx, fmaxf(s[t][2 * h], s[t][2 * h + 1]));
    mx = warp_max<3>(mx);
    // The reference max moves only when a logit passes it by more than kRescaleSlack (log2 units):
    // probabilities up to 2^slack are exact enough in P's 16-bit type and o's fp32, and most steps
    // then skip the rescale of o.
    const float m_new = mx > st.m[h] + Tr::kRescaleSlack ? mx : st.m[h];
    const float m_ref = m_new == -INFINITY ? 0.0f : m_new;  // no key seen yet: keep exp2 finite
    corr[h] = fast_exp2(st.m[h] - m_ref);
    st.m[h] = m_new;
    st.l[h] *= corr[h];
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      s[t][2 * h] = fast_exp2(s[t][2 * h] - m_ref);
      s[t][2 * h + 1] = fast_exp2(s[t][2 * h + 1] - m_ref);
      st.l[h] += s[t][2 * h] + s[t][2 * h + 1];
    }
  }
  // Once the running max settles (after a few slices) it rarely moves: skip the rescale of the
  // kHeadDim / 2 accumulators per lane when no row of the warp changed its max.
  if (__any_sync(kFullWarp, corr[0] != 1.0f || corr[1] != 1.0f)) {
#pragma unroll
    for (int u = 0; u < Tr::kDimTiles; ++u) {
      st.o[u][0] *= corr[0];
      st.o[u][1] *= corr[0];
      st.o[u][2] *= corr[1];
      st.o[u][3] *= corr[1];
    }
  }
}

// O += P V for the slice of 16 value rows from row 0 of `s_v` (a slice-aligned view of the V
// tile); p: its two n-tiles of P.
template <class Tr>
__device__ __forceinline__ void pv_slice(WarpState<Tr>& st, const char* s_v, const LaneOffsets<Tr>& at,
                                         const float (*p)[4]) {
  using M = typename Tr::Math;
  const uint32_t a[4] = {pack2<M>(p[0][0], p[0][1]), pack2<M>(p[0][2], p[0][3]), pack2<M>(p[1][0], p[1][1]),
                         pack2<M>(p[1][2], p[1][3])};
  // Value rows 2c, 2c + 1 (k = 2c, 2c + 1) and 2c + 8, 2c + 9, chunk r * kVChunksPerLane + q.
#pragma unroll
  for (int q = 0; q < Tr::kVChunksPerLane; ++q) {
    const auto w0 = Words<Tr::kChunkBytes>::load(s_v + Tr::moved(at.v[0], q, 0));
    const auto w1 = Words<Tr::kChunkBytes>::load(s_v + Tr::moved(at.v[1], q, 0));
    const auto w2 = Words<Tr::kChunkBytes>::load(s_v + Tr::moved(at.v[0], q, 1));
    const auto w3 = Words<Tr::kChunkBytes>::load(s_v + Tr::moved(at.v[1], q, 1));
#pragma unroll
    for (int x = 0; x < Tr::kChunkWords; ++x) {
      if constexpr (Tr::kFp8) {
        using Unpack = Fp8Unpack<typename Tr::KvType>;
        const int u = q * Tr::kChunkElems + 4 * x;  // dims u .. u + 3
        uint32_t b[4][2];
        Unpack::to_half2x2(prmt(w0.w[x], w1.w[x], 0x5140), b[0][0], b[1][0]);
        Unpack::to_half2x2(prmt(w0.w[x], w1.w[x], 0x7362), b[2][0], b[3][0]);
        Unpack::to_half2x2(prmt(w2.w[x], w3.w[x], 0x5140), b[0][1], b[1][1]);
        Unpack::to_half2x2(prmt(w2.w[x], w3.w[x], 0x7362), b[2][1], b[3][1]);
#pragma unroll
        for (int i = 0; i < 4; ++i) mma_m16n8k16<M>(st.o[u + i], a, b[i]);
      } else {
        const int u = q * Tr::kChunkElems + 2 * x;  // dims u, u + 1
        const uint32_t b0[2] = {prmt(w0.w[x], w1.w[x], 0x5410), prmt(w2.w[x], w3.w[x], 0x5410)};
        const uint32_t b1[2] = {prmt(w0.w[x], w1.w[x], 0x7632), prmt(w2.w[x], w3.w[x], 0x7632)};
        mma_m16n8k16<M>(st.o[u], a, b0);
        mma_m16n8k16<M>(st.o[u + 1], a, b1);
      }
    }
  }
}

// Writes the warp's state for the cross-warp combine: o un-permuted into (16, kOPitch) floats,
// m and the lane-summed l per row.
template <class Tr>
__device__ __forceinline__ void store_state(WarpState<Tr>& st, int lane, float* s_o, float* s_m, float* s_l) {
  const int r = lane / 4, c = lane % 4;
#pragma unroll
  for (int u = 0; u < Tr::kDimTiles; ++u) {
    const int d0 = 2 * c * Tr::kDimTiles + u, d1 = d0 + Tr::kDimTiles;
    s_o[r * Tr::kOPitch + d0] = st.o[u][0];
    s_o[r * Tr::kOPitch + d1] = st.o[u][1];
    s_o[(r + 8) * Tr::kOPitch + d0] = st.o[u][2];
    s_o[(r + 8) * Tr::kOPitch + d1] = st.o[u][3];
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float l = warp_sum<3>(st.l[h]);
    if (c == 0) {
      s_m[r + 8 * h] = st.m[h];
      s_l[r + 8 * h] = l;
    }
  }
}

}  // namespace fib::decode
