// Prefill layer (collective mainloop, sm90a): per key tile S = Q K^T by shared-memory wgmma, the
// variant's transform and mask and the online softmax on the accumulator, O += P V by wgmma with P in
// registers, overlapped with the next tile's softmax; K/V tiles gathered by cp.async (paged / ragged
// rows), K two and V three buffers deep.
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

// Issues acc (=, or += with kAccumulate) A B over every k-block as one wgmma batch and commits it;
// the caller waits (warpgroup_wait) and then fences the accumulator with warpgroup_fence_operand
// before reading it, and must leave acc and a register A untouched until then.
template <bool kAccumulate, class TiledMma, class FragA, class FragB, class Acc>
__device__ __forceinline__ void wgmma_issue(TiledMma& mma, const FragA& tCrA, const FragB& tCrB, Acc& acc) {
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
}

// Keeps the instructions that compute `values` ahead of the next wgmma.wait_group in the SASS.
// ptxas moves a wait_group above arithmetic that does not depend on it (nvcc 13.0: with the softmax
// of tile n between wait_group 1 and 0, the wait for P V of tile n + 1 came out before the exp2s,
// so the softmax ran only after P V had finished), but not above a shared-memory store. This store
// depends on every value and never executes (the values are row sums of exponentials: >= 0, or NaN,
// and no comparison with NaN is true); `anywhere` only has to be a shared-memory address.
template <int N>
__device__ __forceinline__ void keep_before_next_wait(const float (&values)[N], void* anywhere) {
  float x = values[0];
  CUTE_UNROLL
  for (int i = 1; i < N; ++i) x = fminf(x, values[i]);
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(anywhere));
  asm volatile(
      "{\n .reg .pred p;\n setp.lt.f32 p, %1, 0f00000000;\n @p st.shared.f32 [%0], %1;\n}\n" ::"r"(addr),
      "f"(x)
      : "memory");
}

// Named barriers of the ping-pong (ids 1 and 2; __syncthreads is 0): warpgroup w waits on barrier
// 1 + w for its turn to issue wgmma, the other warpgroup arrives on it after issuing its own.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

template <class Traits, class VariantT>
struct MainloopFwdSm90 {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kKStages = Traits::kKStages;
  static constexpr int kVStages = Traits::kVStages;
  static constexpr int kTableSlots = Traits::kTableSlots;
  static constexpr bool kRope = VariantT::kPos == PosEncoding::kRope;
  static constexpr bool kMaskHasLeftEdge = VariantT::kMask == MaskMode::kSlidingWindow;
  static constexpr bool kOverlapPV = Traits::kOverlapPV;
  // The two warpgroups synchronise through mbarriers instead of a __syncthreads a step and take
  // turns issuing their wgmma (ping-pong, see run()). RoPE rotates K in place with all threads
  // between landing and use (a CTA-wide step again): it keeps the barrier-per-step loop.
  static constexpr bool kDecoupled = !kRope;
  static_assert(kKStages == 2 && kVStages == (kOverlapPV ? 3 : 2) && kTableSlots == 4,
                "the step below loads tile n - 1 into the K buffer S of tile n + 1 read and into the V "
                "buffer P V of tile n + 2 (kOverlapPV) or n + 1 read, and writes the row table of tile n - 2");

  // Every thread's cp.async writes (and RoPE's st.shared) become visible to the wgmma (async proxy)
  // only through a proxy fence by the writing thread before the barrier that orders them, as the
  // PTX memory model asks. (CUTLASS's cp.async wgmma mainloops fence nothing after cp.async; a missing
  // proxy fence is invisible to racecheck, so it stays.)
  __device__ static void publish_smem_writes() {
    cutlass::arch::fence_view_async_shared();
    __syncthreads();
  }

  // Key tiles are visited last to first (as in MainloopFwdSm80: checked tiles first, then one loop
  // without mask code). K[n] sits in K buffer n % 2, V[n] in V buffer n % kVStages; row tables are
  // written two steps ahead. The barrier-per-step loop (RoPE variants; kDecoupled below for the
  // others): step n, per warpgroup, with kOverlapPV (P V of tile n + 1 runs on the
  // tensor cores while the softmax of tile n runs on the other units, FlashAttention-3's
  // intra-warpgroup overlap):
  //   wait K[n], V[n] | fence, barrier | issue K[n - 1], V[n - 1] | issue S = Q K[n]^T |
  //   issue O += P[n + 1] V[n + 1] | wait S | mask, softmax of S (factors, P[n]) | wait P V |
  //   O *= factors | P[n] = bf16(S) in registers | row table of n - 2
  // and after the last step O += P[0] V[0]. The barrier of step n also says every warpgroup has
  // waited for S of tile n + 1 (K buffer (n - 1) % 2) and for P V of tile n + 2 (V buffer
  // (n - 1) % 3), so tile n - 1 may overwrite both. Without kOverlapPV (two V buffers), step n
  // issues O += P[n] V[n] at its end and waits for it, so that V buffer (n - 1) % 2 is free at the
  // next barrier.
  template <class FragO, class Softmax>
  __device__ static void run(const fib_attention_params& p, const WorkTile& t, SharedStorage& smem, FragO& tOrO,
                             Softmax& softmax, int tid) {
    using namespace cute;
    Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQ{});            // (BLK_M, D)
    Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutKStages{});      // (BLK_N, D, 2)
    Tensor sV = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutVStages{});      // (BLK_N, D, 3)
    Tensor sVt = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutVtStages{});    // (D, BLK_N, 3)
    const Element* k = static_cast<const Element*>(p.k);
    const Element* v = static_cast<const Element*>(p.v);
    const int num_tiles = t.num_kv_tiles(kBlockN);
    auto tile_start = [&](int n) { return t.kv_lo + n * kBlockN; };
    auto row_table = [&](int n) { return smem.kv_row_offset[n % kTableSlots]; };
    auto load_kv = [&](int n) {
      Tensor sKn = sK(_, _, n % kKStages);
      Tensor sVn = sV(_, _, n % kVStages);
      load_kv_tile<Traits>(k, row_table(n), t.kv_hi - tile_start(n), sKn, tid);
      load_kv_tile<Traits>(v, row_table(n), t.kv_hi - tile_start(n), sVn, tid);
      fib::cp_async_commit();
    };

    using Barrier = cutlass::arch::ClusterBarrier;
    // Decoupled loop: the phase of tile (or step) n's use of mbarrier slot n % 2 (tiles are visited
    // last to first, so slot n % 2 sees tiles n0, n0 - 2, ...).
    auto phase = [&](int n) { return uint32_t((num_tiles - 1 - n) >> 1) & 1u; };
    // Every thread's copies of a K (V) tile arrive on its full barrier when they land: no thread
    // waits for its own copies, and the consumer warpgroups wait only for what they read.
    auto load_k = [&](int n) {
      Tensor sKn = sK(_, _, n % kKStages);
      load_kv_tile<Traits>(k, row_table(n), t.kv_hi - tile_start(n), sKn, tid);
      cutlass::arch::cpasync_barrier_arrive_noinc(&smem.k_full[n % 2]);
    };
    auto load_v = [&](int n) {
      Tensor sVn = sV(_, _, n % kVStages);
      load_kv_tile<Traits>(v, row_table(n), t.kv_hi - tile_start(n), sVn, tid);
      cutlass::arch::cpasync_barrier_arrive_noinc(&smem.v_full[n % 2]);
    };

    load_q_tile<Traits>(p, t, sQ, tid);
    fib::cp_async_commit();
    if (num_tiles == 0) {
      fib::cp_async_wait<0>();
      return;
    }
    if constexpr (kDecoupled) {
      if (tid == 0) {
        for (int i = 0; i < 2; ++i) {
          Barrier::init(&smem.k_full[i], Traits::kThreads);  // one noinc arrive per thread and tile
          Barrier::init(&smem.v_full[i], Traits::kThreads);
          Barrier::init(&smem.k_empty[i], Traits::kThreads);  // one arrive per thread and step
          Barrier::init(&smem.v_empty[i], Traits::kThreads);
        }
        cutlass::arch::fence_barrier_init();
      }
    }
    if constexpr (kRope) RopeTile<Traits>::fill(p, smem.rope, tid);
    KvRowTable<Traits> table;
    CUTE_UNROLL
    for (int i = 0; i < 2; ++i) {  // the row tables of the first two tiles; steps write the others
      const int n = num_tiles - 1 - i;
      if (n >= 0) {
        table.prefetch(p, t, tile_start(n), tid);
        table.store(p, t, tile_start(n), tid, row_table(n));
      }
    }
    __syncthreads();  // row tables (and the decoupled loop's mbarriers) ready
    if constexpr (kDecoupled) {
      load_k(num_tiles - 1);
      load_v(num_tiles - 1);
      fib::cp_async_wait<0>();  // Q (the K/V copies are in no commit group: only their mbarriers track them)
      publish_smem_writes();
    } else {
      load_kv(num_tiles - 1);
    }
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
    Tensor tOrVt = thr_o.partition_fragment_B(sVt);  // (MMA, MMA_D, MMA_N, 3)
    Tensor tScS = rowcol_view(thr_s.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
    Tensor o = rowcol_view(tOrO);
    const float scale_log2 = VariantT::softmax_scale_log2(p);
    // P of the previous step (tile n + 1): P V's register A operand, read by the wgmma of step n.
    auto acc_s_layout = partition_fragment_C(mma_s, Shape<Int<kBlockM>, Int<kBlockN>>{}).layout();
    Tensor tOrP = make_tensor<Element>(wgmma_acc_as_a_operand_layout(acc_s_layout));  // (MMA, MMA_M, MMA_N / 2)

    // kCheck: per-element transform of keys past kv_hi and of the variant's mask; kFirst: no running
    // state to rescale yet and no P V pending.
    auto step = [&](int n, auto check, auto first) __attribute__((always_inline)) {
      constexpr bool kCheck = decltype(check)::value;
      constexpr bool kFirst = decltype(first)::value;
      const int ahead = n - 2;  // the tile whose row table this step writes
      if (ahead >= 0) table.prefetch(p, t, tile_start(ahead), tid);

      fib::cp_async_wait<0>();
      publish_smem_writes();  // K[n], V[n], row_table(n - 1) visible; the buffers of tile n - 1 free
      // The gathers of tile n - 1 go out after the wgmma issue (their address arithmetic then runs
      // while the tensor cores work), except without kOverlapPV (head dim 256), where their registers
      // next to S, O and P in flight made ptxas spill (72-byte stack).
      if constexpr (!kOverlapPV) {
        if (n > 0) load_kv(n - 1);
      }
      if constexpr (kRope) {
        Tensor sKn = sK(_, _, n % kKStages);
        RopeTile<Traits>::rotate_consecutive(sKn, smem.rope, tid, tile_start(n));
        publish_smem_writes();
      }

      Tensor acc_s = partition_fragment_C(mma_s, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA, MMA_M, MMA_N)
      wgmma_issue<false>(mma_s, tSrQ, tSrK(_, _, _, n % kKStages), acc_s);
      constexpr bool kPendingPV = kOverlapPV && !kFirst;
      if constexpr (kPendingPV) wgmma_issue<true>(mma_o, tOrP, tOrVt(_, _, _, (n + 1) % kVStages), tOrO);
      if constexpr (kOverlapPV) {
        if (n > 0) load_kv(n - 1);
      }
      warpgroup_wait<kPendingPV ? 1 : 0>();  // S done; P V of tile n + 1 may still run
      warpgroup_fence_operand(acc_s);
      Tensor s = rowcol_view(acc_s);
      apply_logits_and_mask<VariantT, kCheck>(p, t, s, tScS, tile_start(n));
      float factor[decltype(size<0>(s))::value];
      const bool grew = softmax.template update_scores<kFirst>(s, scale_log2, factor, [](bool) {});
      if constexpr (kPendingPV) {
        keep_before_next_wait(softmax.row_sum, smem.q);
        warpgroup_wait<0>();  // P V of tile n + 1 done: O may be rescaled and P overwritten
        warpgroup_fence_operand(tOrO);
        warpgroup_fence_operand(tOrP);
      }
      if constexpr (!kFirst) softmax.rescale(o, factor, grew);
      Tensor rP = convert_fragment<Element>(acc_s);
      CUTE_UNROLL
      for (int i = 0; i < size(rP); ++i) tOrP(i) = rP(i);
      if (ahead >= 0) table.store(p, t, tile_start(ahead), tid, row_table(ahead));
      if constexpr (!kOverlapPV) {
        wgmma_issue<true>(mma_o, tOrP, tOrVt(_, _, _, n % kVStages), tOrO);
        warpgroup_wait<0>();
        warpgroup_fence_operand(tOrO);
        warpgroup_fence_operand(tOrP);
      }
    };
    // The decoupled step n (kDecoupled), per warpgroup w; i = the step index, tile n. With kOverlapPV:
    //   wait K[n] full, V[n + 1] full | proxy fence | bar.sync turn(w) | issue S = Q K[n]^T and
    //   O += P[n + 1] V[n + 1] | bar.arrive turn(1 - w) | wait S | row table of n - 2 |
    //   arrive K-empty(i) | wait K-empty(i - 1) | gather K[n - 1] | mask, softmax of S | wait P V |
    //   arrive V-empty(i) | O *= factors, P[n] | wait V-empty(i - 1) | gather V[n - 1]
    // K-empty(i): every thread has waited for S of tile n (K buffer n % 2) and stored the row table of
    // n - 2; V-empty(i): every thread has waited for P V of tile n + 1 (V buffer (n + 1) % 3). So K[n - 1]
    // (buffer (n + 1) % 2) and V[n - 1] (buffer (n + 2) % 3) wait for the previous step's empties;
    // row_table(n - 1) was stored before K-empty(i - 1), and the slot that tile n - 2's table takes
    // ((n + 2) % 4) was last read in step i - 3, before K-empty(i - 2), which this thread waited for
    // in step i - 1. The turn barriers make the warpgroups issue their wgmma alternately, so that one
    // runs its softmax while the tensor cores run the other's S and P V (FlashAttention-3's
    // ping-pong); K[n - 1] goes out after S (its buffer's last readers are then done), V[n - 1] at the
    // end (it is read only in step i + 2). Without kOverlapPV (head dim 256, two V buffers) only S
    // takes turns; after P[n]: wait V-empty(i - 1) | gather V[n - 1] | wait V[n] full | O += P[n] V[n],
    // waited for | arrive V-empty(i) (V buffer n % 2 free). Two slots per mbarrier suffice: a thread
    // arrives on a slot for step i (tile n - 1 for the full ones) only after waiting for an empty
    // phase that every thread reached after its last wait on that slot, so no barrier gets two
    // phases ahead of a thread still waiting on it.
    const int wg = tid / cutlass::NumThreadsPerWarpGroup;
    constexpr int kTurnThreads = 2 * cutlass::NumThreadsPerWarpGroup;
    auto step_decoupled = [&](int n, auto check, auto first) __attribute__((always_inline)) {
      constexpr bool kCheck = decltype(check)::value;
      constexpr bool kFirst = decltype(first)::value;
      const int ahead = n - 2;
      if (ahead >= 0) table.prefetch(p, t, tile_start(ahead), tid);

      constexpr bool kPendingPV = kOverlapPV && !kFirst;
      Barrier::wait(&smem.k_full[n % 2], phase(n));
      if constexpr (kPendingPV) Barrier::wait(&smem.v_full[(n + 1) % 2], phase(n + 1));
      // Other threads' cp.async writes, acquired through the mbarrier, made visible to this thread's
      // wgmma (async proxy); the writers cannot fence after copies that land asynchronously.
      cutlass::arch::fence_view_async_shared();
      named_barrier_sync(1 + wg, kTurnThreads);
      Tensor acc_s = partition_fragment_C(mma_s, Shape<Int<kBlockM>, Int<kBlockN>>{});
      wgmma_issue<false>(mma_s, tSrQ, tSrK(_, _, _, n % kKStages), acc_s);
      if constexpr (kPendingPV) wgmma_issue<true>(mma_o, tOrP, tOrVt(_, _, _, (n + 1) % kVStages), tOrO);
      // Without kOverlapPV this is warpgroup 1's last turn at n == 0: its arrive would stay pending.
      if (kOverlapPV || wg == 0 || n > 0) named_barrier_arrive(2 - wg, kTurnThreads);
      warpgroup_wait<kPendingPV ? 1 : 0>();  // S done; P V of tile n + 1 may still run
      warpgroup_fence_operand(acc_s);
      if (ahead >= 0) table.store(p, t, tile_start(ahead), tid, row_table(ahead));
      Barrier::arrive(&smem.k_empty[n % 2]);
      if (n > 0) {
        if constexpr (!kFirst) Barrier::wait(&smem.k_empty[(n + 1) % 2], phase(n + 1));
        load_k(n - 1);
      }
      Tensor s = rowcol_view(acc_s);
      apply_logits_and_mask<VariantT, kCheck>(p, t, s, tScS, tile_start(n));
      float factor[decltype(size<0>(s))::value];
      const bool grew = softmax.template update_scores<kFirst>(s, scale_log2, factor, [](bool) {});
      if constexpr (kPendingPV) {
        keep_before_next_wait(softmax.row_sum, smem.q);
        warpgroup_wait<0>();  // P V of tile n + 1 done: O may be rescaled and P overwritten
        warpgroup_fence_operand(tOrO);
        warpgroup_fence_operand(tOrP);
      }
      if constexpr (kOverlapPV) Barrier::arrive(&smem.v_empty[n % 2]);
      if constexpr (!kFirst) softmax.rescale(o, factor, grew);
      Tensor rP = convert_fragment<Element>(acc_s);
      CUTE_UNROLL
      for (int i = 0; i < size(rP); ++i) tOrP(i) = rP(i);
      if constexpr (!kOverlapPV) {  // O += P[n] V[n], waited for at once; then V buffer n % 2 is free
        // V[n - 1] (buffer (n + 1) % 2, free once both warpgroups finished step i - 1) is read in the
        // middle of the next step: gathered here, a whole step ahead, rather than at the end.
        if (n > 0) {
          if constexpr (!kFirst) Barrier::wait(&smem.v_empty[(n + 1) % 2], phase(n + 1));
          load_v(n - 1);
        }
        Barrier::wait(&smem.v_full[n % 2], phase(n));
        cutlass::arch::fence_view_async_shared();
        wgmma_issue<true>(mma_o, tOrP, tOrVt(_, _, _, n % kVStages), tOrO);
        warpgroup_wait<0>();
        warpgroup_fence_operand(tOrO);
        warpgroup_fence_operand(tOrP);
        Barrier::arrive(&smem.v_empty[n % 2]);
      }
      if (kOverlapPV && n > 0) {
        if constexpr (!kFirst) Barrier::wait(&smem.v_empty[(n + 1) % 2], phase(n + 1));
        load_v(n - 1);
      }
    };
    auto needs_check = [&](int n) {
      return tile_start(n) + kBlockN > t.kv_hi ||
             !VariantT::tile_fully_visible(p, t.ctx, t.first_token, t.last_token, tile_start(n),
                                           tile_start(n) + kBlockN - 1);
    };
    using Yes = cute::true_type;
    using No = cute::false_type;

    auto visit_tiles = [&](auto&& one_step) __attribute__((always_inline)) {
      int n = num_tiles - 1;
      one_step(n, Yes{}, Yes{});
      CUTE_NO_UNROLL
      for (--n; n >= 0 && needs_check(n); --n) one_step(n, Yes{}, No{});
      CUTE_NO_UNROLL
      for (; n >= 0 && !needs_check(n); --n) one_step(n, No{}, No{});
      if constexpr (kMaskHasLeftEdge) {
        CUTE_NO_UNROLL
        for (; n >= 0; --n) one_step(n, Yes{}, No{});
      }
    };
    if constexpr (kDecoupled) {
      if (wg == 1) named_barrier_arrive(1, kTurnThreads);  // warpgroup 0 issues first
      visit_tiles(step_decoupled);
    }
    if constexpr (kDecoupled && kOverlapPV) {
      Barrier::wait(&smem.v_full[0], phase(0));
      cutlass::arch::fence_view_async_shared();
      named_barrier_sync(1 + wg, kTurnThreads);
      wgmma_issue<true>(mma_o, tOrP, tOrVt(_, _, _, 0), tOrO);  // P V of tile 0 (V buffer 0 % 3)
      // Warpgroup 1 issues last: an arrive of its own would be left pending on warpgroup 0's barrier.
      if (wg == 0) named_barrier_arrive(2, kTurnThreads);
      warpgroup_wait<0>();
      warpgroup_fence_operand(tOrO);
    }
    if constexpr (!kDecoupled) {
      visit_tiles(step);
      if constexpr (kOverlapPV) {
        wgmma_issue<true>(mma_o, tOrP, tOrVt(_, _, _, 0), tOrO);  // P V of tile 0 (V buffer 0 % 3)
        warpgroup_wait<0>();
        warpgroup_fence_operand(tOrO);
      }
    }
  }
};

}  // namespace fib::prefill
