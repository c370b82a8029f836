// Prefill layer (collective mainloop, sm80): Q tile resident in shared memory; per key tile
// S = Q K^T, variant transform and mask, online softmax, O += P V, with tensor-core mma.sync fed
// by ldmatrix and cp.async loads of the next operand overlapping each GEMM.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_conversion.h>

#include "../api.h"
#include "../fusion/variant.cuh"
#include "fragment.cuh"
#include "load_gather_sm80.cuh"
#include "mask.cuh"
#include "rope_smem.cuh"
#include "tile_scheduler.cuh"

namespace fib::prefill {

// acc += A B with both operands in shared memory; k-slice i + 1 is read while slice i multiplies.
template <class Acc, class FragA, class FragB, class SmemA, class SmemB, class TiledMma, class CopyA, class CopyB,
          class ThrCopyA, class ThrCopyB>
__device__ __forceinline__ void gemm_ss(Acc& acc, FragA& tCrA, FragB& tCrB, const SmemA& tCsA, const SmemB& tCsB,
                                        TiledMma& mma, const CopyA& copy_a, const CopyB& copy_b,
                                        const ThrCopyA& thr_copy_a, const ThrCopyB& thr_copy_b) {
  using namespace cute;
  Tensor tCrA_view = thr_copy_a.retile_D(tCrA);
  Tensor tCrB_view = thr_copy_b.retile_D(tCrB);
  copy(copy_a, tCsA(_, _, 0), tCrA_view(_, _, 0));
  copy(copy_b, tCsB(_, _, 0), tCrB_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tCrA); ++k) {
    if (k + 1 < size<2>(tCrA)) {
      copy(copy_a, tCsA(_, _, k + 1), tCrA_view(_, _, k + 1));
      copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1));
    }
    gemm(mma, tCrA(_, _, k), tCrB(_, _, k), acc);
  }
}

// acc += A B with A already in registers (P) and B in shared memory.
template <class Acc, class FragA, class FragB, class SmemB, class TiledMma, class CopyB, class ThrCopyB>
__device__ __forceinline__ void gemm_rs(Acc& acc, const FragA& tCrA, FragB& tCrB, const SmemB& tCsB, TiledMma& mma,
                                        const CopyB& copy_b, const ThrCopyB& thr_copy_b) {
  using namespace cute;
  Tensor tCrB_view = thr_copy_b.retile_D(tCrB);
  copy(copy_b, tCsB(_, _, 0), tCrB_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tCrA); ++k) {
    if (k + 1 < size<2>(tCrA)) copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1));
    gemm(mma, tCrA(_, _, k), tCrB(_, _, k), acc);
  }
}

// float accumulator -> 16-bit operand fragment with the same layout (packed cvt instructions).
template <class Element, class Acc>
__device__ __forceinline__ auto convert_fragment(const Acc& acc) {
  using namespace cute;
  constexpr int kSize = decltype(size(acc))::value;
  cutlass::NumericArrayConverter<Element, float, kSize> convert;
  auto packed = convert(*reinterpret_cast<const cutlass::Array<float, kSize>*>(acc.data()));
  Tensor out = make_fragment_like<Element>(acc.layout());
  *reinterpret_cast<cutlass::Array<Element, kSize>*>(out.data()) = packed;
  return out;
}

template <class Traits, class VariantT>
struct MainloopFwdSm80 {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kThreads = Traits::kThreads;
  static constexpr bool kRope = VariantT::kPos == PosEncoding::kRope;
  static constexpr bool kMaskHasLeftEdge = VariantT::kMask == MaskMode::kSlidingWindow;

  static constexpr int kKStages = Traits::kKStages;

  // Key tiles start at t.kv_lo and are visited last to first, so the tiles that need per-element
  // checks (the partial tail, the causal diagonal) come first and the mainloop splits into runs of
  // checked and unchecked tiles, each a loop of its own with no mask code in the unchecked one.
  // Pipeline per tile n (K[n] was issued one step earlier), with one V buffer and one K buffer:
  //   wait K[n] | issue V[n] | S = Q K[n]^T, mask, softmax | wait V[n] | issue K[n - 1] | O += P V[n]
  // or two K buffers, so that K[n - 1] has a whole step to land instead of the P V GEMM alone:
  //   wait K[n] | issue V[n], K[n - 1] | S = Q K[n]^T, mask, softmax | wait V[n] | O += P V[n]
  // The key rows' offsets (KvRowTable) of tile n - kKStages are written during step n.
  template <class FragO, class Softmax>
  __device__ static void run(const fib_attention_params& p, const WorkTile& t, SharedStorage& smem, FragO& tOrO,
                             Softmax& softmax, int tid) {
    using namespace cute;
    Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQ{});    // (BLK_M, D)
    Tensor sV = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutKV{});   // (BLK_N, D)
    Tensor sVt = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutVt{});  // (D, BLK_N)
    Tensor sVtNoSwizzle = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutVtNoSwizzle{});
    auto k_buffer = [&](int n) {  // (BLK_N, D): where K[n] lands
      return make_tensor(make_smem_ptr(smem.k[kKStages == 1 ? 0 : n & 1]), typename Traits::SmemLayoutKV{});
    };
    const Element* k = static_cast<const Element*>(p.k);
    const Element* v = static_cast<const Element*>(p.v);
    const int num_tiles = t.num_kv_tiles(kBlockN);
    auto tile_start = [&](int n) { return t.kv_lo + n * kBlockN; };
    auto row_table = [&](int n) { return smem.kv_row_offset[n % Traits::kTableSlots]; };
    auto load_k = [&](int n) {
      Tensor sK = k_buffer(n);
      load_kv_tile<Traits>(k, row_table(n), t.kv_hi - tile_start(n), sK, tid);
      fib::cp_async_commit();
    };

    load_q_tile<Traits>(p, t, sQ, tid);
    fib::cp_async_commit();
    if (num_tiles == 0) {
      fib::cp_async_wait<0>();
      return;
    }
    if constexpr (kRope) RopeTile<Traits>::fill(p, smem.rope, tid);
    // Row tables of the first kKStages tiles visited; each step then writes the one kKStages ahead.
    KvRowTable<Traits> table;
    CUTE_UNROLL
    for (int i = 0; i < kKStages; ++i) {
      const int n = num_tiles - 1 - i;
      if (n >= 0) {
        table.prefetch(p, t, tile_start(n), tid);
        table.store(p, t, tile_start(n), tid, row_table(n));
      }
    }
    __syncthreads();
    load_k(num_tiles - 1);
    if constexpr (kRope) {
      fib::cp_async_wait<1>();  // Q has landed; K may still be in flight
      __syncthreads();
      RopeTile<Traits>::rotate_rows(sQ, smem.rope, tid, [&](int row) {
        const int32_t packed = t.row_begin + min(row, t.num_rows - 1);
        return VariantT::query_pos(t.ctx, packed / t.group);
      });
    }

    typename Traits::TiledMma tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(tid);
    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);            // (MMA, MMA_M, MMA_D)
    Tensor tSrK = thr_mma.partition_fragment_B(k_buffer(0));   // (MMA, MMA_N, MMA_D)
    Tensor tOrVt = thr_mma.partition_fragment_B(sVtNoSwizzle);  // (MMA, MMA_D, MMA_N)
    auto s2r_q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto s2r_thr_q = s2r_q.get_thread_slice(tid);
    Tensor tSsQ = s2r_thr_q.partition_S(sQ);
    auto s2r_k = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto s2r_thr_k = s2r_k.get_thread_slice(tid);
    auto s2r_v = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
    auto s2r_thr_v = s2r_v.get_thread_slice(tid);
    Tensor tOsVt = s2r_thr_v.partition_S(sVt);
    Tensor tScS = rowcol_view(thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
    Tensor o = rowcol_view(tOrO);
    const float scale_log2 = VariantT::softmax_scale_log2(p);

    // kCheck: per-element transform of keys past kv_hi and of the variant's mask; kFirst: no running
    // state to rescale yet. Forced inline: called from three loops, an outlined step would take the
    // fragments it captures by reference into local memory (2.3 KB of stack when measured).
    auto step = [&](int n, auto check, auto first) __attribute__((always_inline)) {
      constexpr bool kCheck = decltype(check)::value;
      constexpr bool kFirst = decltype(first)::value;
      const int ahead = n - kKStages;  // the tile whose row table this step writes
      if (ahead >= 0) table.prefetch(p, t, tile_start(ahead), tid);
      Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA, MMA_M, MMA_N)
      clear(acc_s);

      fib::cp_async_wait<0>();
      __syncthreads();  // K[n], row_table(n) (two stages: n - 1 too) visible; every warp is done with V[n + 1]
      load_kv_tile<Traits>(v, row_table(n), t.kv_hi - tile_start(n), sV, tid);
      fib::cp_async_commit();
      if (kKStages == 2 && n > 0) load_k(n - 1);  // into the buffer K[n + 1] left
      Tensor sK = k_buffer(n);
      if constexpr (kRope) {
        RopeTile<Traits>::rotate_consecutive(sK, smem.rope, tid, tile_start(n));
        __syncthreads();
      }

      gemm_ss(acc_s, tSrQ, tSrK, tSsQ, s2r_thr_k.partition_S(sK), tiled_mma, s2r_q, s2r_k, s2r_thr_q, s2r_thr_k);
      Tensor s = rowcol_view(acc_s);
      apply_logits_and_mask<VariantT, kCheck>(p, t, s, tScS, tile_start(n));
      softmax.template update<kFirst>(s, o, scale_log2);
      if (ahead >= 0) table.store(p, t, tile_start(ahead), tid, row_table(ahead));

      if (kKStages == 2 && n > 0) {
        fib::cp_async_wait<1>();  // V[n]; K[n - 1] stays in flight
      } else {
        fib::cp_async_wait<0>();
      }
      __syncthreads();  // V[n] visible to all; every warp is done with K[n]; row_table(ahead) written
      if (kKStages == 1 && n > 0) load_k(n - 1);
      Tensor rP = convert_fragment<Element>(acc_s);
      Tensor tOrP = make_tensor(rP.data(), acc_as_a_operand_layout(rP.layout()));  // (MMA, MMA_M, MMA_N / 2)
      gemm_rs(tOrO, tOrP, tOrVt, tOsVt, tiled_mma, s2r_v, s2r_thr_v);
    };
    auto needs_check = [&](int n) {
      return tile_start(n) + kBlockN > t.kv_hi ||
             !VariantT::tile_fully_visible(p, t.ctx, t.first_token, t.last_token, tile_start(n),
                                           tile_start(n) + kBlockN - 1);
    };
    using Yes = cute::true_type;
    using No = cute::false_type;

    int n = num_tiles - 1;
    step(n, Yes{}, Yes{});
    CUTE_NO_UNROLL
    for (--n; n >= 0 && needs_check(n); --n) step(n, Yes{}, No{});
    CUTE_NO_UNROLL
    for (; n >= 0 && !needs_check(n); --n) step(n, No{}, No{});
    // Visibility only shrinks leftwards again where the mask has a left edge; elsewhere the third
    // run is empty, and leaving it out keeps its registers out of the allocation.
    if constexpr (kMaskHasLeftEdge) {
      CUTE_NO_UNROLL
      for (; n >= 0; --n) step(n, Yes{}, No{});
    }
  }
};

}  // namespace fib::prefill
