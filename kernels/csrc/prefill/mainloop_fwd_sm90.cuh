// Prefill layer (collective mainloop, sm90a): per key tile S = Q K^T by shared-memory wgmma, the
// variant's transform and mask and the online softmax on the accumulator, O += P V by wgmma with P in
// registers; K/V tiles gathered by cp.async (paged / ragged rows) two buffers deep.
// PROTOTYPE: compiles for sm_90a, never run on a GPU yet (docs/HOPPER_MAINLOOP.md).
#pragma once

#include <cute/arch/mma_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "../api.h"
#include "../fusion/variant.cuh"
#include "fragment.cuh"
#include "load_gather_sm80.cuh"
#include "mainloop_fwd_sm80.cuh"  // convert_fragment
#include "mask.cuh"
#include "rope_smem.cuh"
#include "tile_scheduler.cuh"

namespace fib::prefill {

// acc (=, or += with kAccumulate) A B over every k-block, issued as one wgmma batch and waited for:
// the accumulator is read by the softmax (S) or rescaled by it (O) right after.
template <bool kAccumulate, class TiledMma, class FragA, class FragB, class Acc>
__device__ __forceinline__ void wgmma_gemm(TiledMma& mma, const FragA& tCrA, const FragB& tCrB, Acc& acc) {
  using namespace cute;
  constexpr bool kARegisters = !is_same_v<typename FragA::iterator, GMMA::DescriptorIterator>;
  if constexpr (kARegisters) warpgroup_fence_operand(const_cast<FragA&>(tCrA));
  warpgroup_fence_operand(acc);
  warpgroup_arrive();
  mma.accumulate_ = kAccumulate ? GMMA::ScaleOut::One : GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tCrA); ++k) {
    gemm(mma, tCrA(_, _, k), tCrB(_, _, k), acc);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_wait<0>();
  warpgroup_fence_operand(acc);
  if constexpr (kARegisters) warpgroup_fence_operand(const_cast<FragA&>(tCrA));
}

template <class Traits, class VariantT>
struct MainloopFwdSm90 {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kStages = Traits::kStages;
  static constexpr bool kRope = VariantT::kPos == PosEncoding::kRope;
  static constexpr bool kMaskHasLeftEdge = VariantT::kMask == MaskMode::kSlidingWindow;
  static_assert(kStages == 2, "the step below issues tile n - 1 into the buffer tile n + 1 left");

  // Every thread's cp.async writes (and RoPE's st.shared) become visible to the wgmma (async proxy)
  // only through a proxy fence by the writing thread before the barrier that orders them. (CUTLASS's
  // cp.async wgmma mainloops signal with cp.async.mbarrier.arrive and fence nothing; whether the
  // fence after cp.async may go is for a GPU run with racecheck to show, RoPE's stores need it.)
  __device__ static void publish_smem_writes() {
    cutlass::arch::fence_view_async_shared();
    __syncthreads();
  }

  // Key tiles are visited last to first (as in MainloopFwdSm80: checked tiles first, then one loop
  // without mask code). Pipeline, tile n in buffer n & 1, row tables written two steps ahead:
  //   wait K[n], V[n] | fence, barrier | issue K[n - 1], V[n - 1] | S = Q K[n]^T (wgmma) | mask,
  //   softmax | row table of n - 2 | O += P V[n] (wgmma)
  // The barrier also says every warpgroup's wgmmas of step n + 1 are done, so buffer (n - 1) & 1
  // may be overwritten: each wgmma batch is waited for (warpgroup_wait<0>) within its step.
  template <class FragO, class Softmax>
  __device__ static void run(const fib_attention_params& p, const WorkTile& t, SharedStorage& smem, FragO& tOrO,
                             Softmax& softmax, int tid) {
    using namespace cute;
    Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQ{});            // (BLK_M, D)
    Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutKVStages{});     // (BLK_N, D, 2)
    Tensor sV = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutKVStages{});     // (BLK_N, D, 2)
    Tensor sVt = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutVtStages{});    // (D, BLK_N, 2)
    const Element* k = static_cast<const Element*>(p.k);
    const Element* v = static_cast<const Element*>(p.v);
    const int num_tiles = t.num_kv_tiles(kBlockN);
    auto tile_start = [&](int n) { return t.kv_lo + n * kBlockN; };
    auto row_table = [&](int n) { return smem.kv_row_offset[n % Traits::kTableSlots]; };
    auto load_kv = [&](int n) {
      Tensor sKn = sK(_, _, n & 1);
      Tensor sVn = sV(_, _, n & 1);
      load_kv_tile<Traits>(k, row_table(n), t.kv_hi - tile_start(n), sKn, tid);
      load_kv_tile<Traits>(v, row_table(n), t.kv_hi - tile_start(n), sVn, tid);
      fib::cp_async_commit();
    };

    load_q_tile<Traits>(p, t, sQ, tid);
    fib::cp_async_commit();
    if (num_tiles == 0) {
      fib::cp_async_wait<0>();
      return;
    }
    if constexpr (kRope) RopeTile<Traits>::fill(p, smem.rope, tid);
    KvRowTable<Traits> table;
    CUTE_UNROLL
    for (int i = 0; i < kStages; ++i) {
      const int n = num_tiles - 1 - i;
      if (n >= 0) {
        table.prefetch(p, t, tile_start(n), tid);
        table.store(p, t, tile_start(n), tid, row_table(n));
      }
    }
    __syncthreads();
    load_kv(num_tiles - 1);
    if constexpr (kRope) {
      fib::cp_async_wait<1>();  // Q has landed; K/V may still be in flight
      __syncthreads();
      RopeTile<Traits>::rotate_rows(sQ, smem.rope, tid, [&](int row) {
        const int32_t packed = t.row_begin + min(row, t.num_rows - 1);
        return VariantT::query_pos(t.ctx, packed / t.group);
      });
    }

    typename Traits::TiledMmaS mma_s;
    typename Traits::TiledMmaO mma_o;
    auto thr_s = mma_s.get_thread_slice(tid);
    auto thr_o = mma_o.get_thread_slice(tid);
    Tensor tSrQ = thr_s.partition_fragment_A(sQ);   // (MMA, MMA_M, MMA_D): shared-memory descriptors
    Tensor tSrK = thr_s.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_D, 2)
    Tensor tOrVt = thr_o.partition_fragment_B(sVt);  // (MMA, MMA_D, MMA_N, 2)
    Tensor tScS = rowcol_view(thr_s.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
    Tensor o = rowcol_view(tOrO);
    const float scale_log2 = VariantT::softmax_scale_log2(p);

    // kCheck: per-element transform of keys past kv_hi and of the variant's mask; kFirst: no running
    // state to rescale yet.
    auto step = [&](int n, auto check, auto first) __attribute__((always_inline)) {
      constexpr bool kCheck = decltype(check)::value;
      constexpr bool kFirst = decltype(first)::value;
      const int ahead = n - kStages;  // the tile whose row table this step writes
      if (ahead >= 0) table.prefetch(p, t, tile_start(ahead), tid);

      fib::cp_async_wait<0>();
      publish_smem_writes();  // K[n], V[n], row_table(n - 1) visible; buffer (n - 1) & 1 free
      if (n > 0) load_kv(n - 1);
      if constexpr (kRope) {
        Tensor sKn = sK(_, _, n & 1);
        RopeTile<Traits>::rotate_consecutive(sKn, smem.rope, tid, tile_start(n));
        publish_smem_writes();
      }

      Tensor acc_s = partition_fragment_C(mma_s, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA, MMA_M, MMA_N)
      wgmma_gemm<false>(mma_s, tSrQ, tSrK(_, _, _, n & 1), acc_s);
      Tensor s = rowcol_view(acc_s);
      apply_logits_and_mask<VariantT, kCheck>(p, t, s, tScS, tile_start(n));
      softmax.template update<kFirst>(s, o, scale_log2);
      if (ahead >= 0) table.store(p, t, tile_start(ahead), tid, row_table(ahead));

      Tensor rP = convert_fragment<Element>(acc_s);
      Tensor tOrP = make_tensor(rP.data(), wgmma_acc_as_a_operand_layout(rP.layout()));  // (MMA, MMA_M, MMA_N / 2)
      wgmma_gemm<true>(mma_o, tOrP, tOrVt(_, _, _, n & 1), tOrO);
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
    if constexpr (kMaskHasLeftEdge) {
      CUTE_NO_UNROLL
      for (; n >= 0; --n) step(n, Yes{}, No{});
    }
  }
};

}  // namespace fib::prefill
