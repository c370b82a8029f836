// Prefill layer (collective types, sm90a): wgmma tiled MMAs, wgmma-compatible shared-memory layouts
// and the copy layouts the sm80 gathers (load_gather_sm80.cuh) and epilogue reuse.
#pragma once

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "rope_smem.cuh"

namespace fib::prefill {

// One CTA = BlockM packed query rows, one consumer warpgroup per 64 rows (the wgmma M extent); every
// thread also issues the cp.async gathers (no producer warp yet: paged / ragged KV rows need the
// row-table gathers, which TMA cannot do without a tensor map per page layout).
template <class Element_, int HeadDim, int BlockN>
struct Sm90Traits {
  using Element = Element_;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = BlockN;
  static constexpr int kWarpgroupRows = 64;  // rows of one wgmma (m64nNk16)
  static constexpr int kWarpgroups = kBlockM / kWarpgroupRows;
  static constexpr int kWarps = kWarpgroups * 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMinCtasPerSm = 1;
  // K buffers: tile n - 1 lands during step n, while S = Q K[n]^T reads the other. V buffers: one
  // more where shared memory allows, so that P V of tile n + 1 can still run during step n while
  // the softmax of tile n does (kOverlapPV, mainloop_fwd_sm90.cuh); head dim 256 (Q 64 KB, 32 KB a
  // K/V tile) has room for two only, and runs P V of each step to its end instead.
  static constexpr int kKStages = 2;
  static constexpr int kTileBytes = BlockN * HeadDim * int(sizeof(Element));
  static constexpr int kTablesBytes = 6 * 1024;  // row tables, RoPE table, mbarriers, 1 KB alignment: an upper bound
  static constexpr bool kOverlapPV = kBlockM * HeadDim * int(sizeof(Element)) + (kKStages + 3) * kTileBytes +
                                         kTablesBytes <= 227 * 1024;
  static constexpr int kVStages = kOverlapPV ? 3 : 2;
  // Row tables: the one being read, the one written, and two spares, so that the decoupled loop
  // (mainloop_fwd_sm90.cuh) reuses a slot only after an mbarrier phase that every reader arrived on.
  static constexpr int kTableSlots = 4;
  static constexpr int kVecElems = 16 / sizeof(Element);  // one 16-byte cp.async
  static constexpr int kSwizzleRowElems = 64;             // 128-byte rows of the SW128 atom

  static_assert(sizeof(Element) == 2, "the wgmma mainloop reads 16-bit Q/K/V");
  static_assert(kHeadDim % kSwizzleRowElems == 0, "head_dim must be a multiple of 64");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "block_n: a multiple of the wgmma k extent, <= wgmma N");
  static_assert(kHeadDim <= 256, "P V's wgmma N is head_dim (<= 256)");
  static_assert(kBlockN <= kThreads, "one thread computes each key row's address per tile");

  // S = Q K^T: A (Q) and B (K) both K-major (head dim contiguous) in shared memory.
  using TiledMmaS = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kWarpgroupRows>, cute::Int<kBlockN>, cute::Int<kHeadDim>>>(),
      cute::Layout<cute::Shape<cute::Int<kWarpgroups>, cute::_1, cute::_1>>{}));
  // O += P V: A (P) from registers, B (V^T, (D, keys)) MN-major: V rows are stored head dim contiguous.
  using TiledMmaO = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kWarpgroupRows>, cute::Int<kHeadDim>, cute::Int<kBlockN>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      cute::Layout<cute::Shape<cute::Int<kWarpgroups>, cute::_1, cute::_1>>{}));
  using TiledMma = TiledMmaO;  // the O accumulator's layout, which the epilogue reads

  // The K-major SW128 atom (8 rows x 128 bytes, 16-byte chunks XOR-swizzled) is, for 16-bit types,
  // the same address map as the sm80 mainloop's Swizzle<3, 3, 3> atom (checked element by element
  // in tests/build/test_sm90_layouts.py), so the cp.async gathers write it unchanged.
  using SmemLayoutAtom = cute::GMMA::Layout_K_SW128_Atom<Element>;
  using SmemLayoutQ = decltype(cute::tile_to_shape(SmemLayoutAtom{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(cute::tile_to_shape(SmemLayoutAtom{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>{}));
  using SmemLayoutKStages = decltype(cute::tile_to_shape(
      SmemLayoutAtom{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::Int<kKStages>>{}));
  using SmemLayoutVStages = decltype(cute::tile_to_shape(
      SmemLayoutAtom{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::Int<kVStages>>{}));
  // V read as the B operand of P V: (head_dim, keys, stage), head dim contiguous (MN-major).
  using SmemLayoutVtStages = decltype(cute::composition(
      SmemLayoutVStages{},
      cute::make_ordered_layout(cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>, cute::Int<kVStages>>{},
                                cute::Step<cute::_2, cute::_1, cute::_3>{})));

  using SmemCopyAtomO = cute::Copy_Atom<cute::AutoVectorizingCopyWithAssumedAlignment<32>, Element>;

  // Global <-> shared in 16-byte chunks, as in Sm80Traits (load_gather_sm80.cuh's contract).
  static constexpr int kGmemThreadsPerRow = kSwizzleRowElems / kVecElems;
  static constexpr int kGmemRowsPerPass = kThreads / kGmemThreadsPerRow;
  static constexpr int kKvRowsPerThread = kBlockN / kGmemRowsPerPass;
  static_assert(kBlockN % kGmemRowsPerPass == 0 && kKvRowsPerThread % 2 == 0,
                "a thread's key rows must fill whole 16-byte reads of the row table");
  using GmemTiledCopy = decltype(cute::make_tiled_copy(
      cute::Copy_Atom<cute::UniversalCopy<cute::uint128_t>, Element>{},
      cute::Layout<cute::Shape<cute::Int<kGmemRowsPerPass>, cute::Int<kGmemThreadsPerRow>>,
                   cute::Stride<cute::Int<kGmemThreadsPerRow>, cute::_1>>{},
      cute::Layout<cute::Shape<cute::_1, cute::Int<kVecElems>>>{}));

  struct SharedStorage {
    alignas(1024) Element q[cute::cosize_v<SmemLayoutQ>];  // also stages O in the epilogue
    alignas(1024) Element k[cute::cosize_v<SmemLayoutKStages>];
    alignas(1024) Element v[cute::cosize_v<SmemLayoutVStages>];
    alignas(16) int64_t kv_row_offset[kTableSlots][kBlockN];  // row tables of pending tiles (KvRowTable)
    RopePair rope[kHeadDim / 2];
    // mbarriers of the decoupled loop (MainloopFwdSm90::kDecoupled): K/V tile landed ("full") and
    // K/V buffer released by every thread ("empty"), two phases in flight each.
    alignas(8) uint64_t k_full[2], v_full[2], k_empty[2], v_empty[2];
  };
  static_assert(sizeof(SharedStorage) <= 227 * 1024, "more shared memory than an sm90 CTA may have (227 KB)");
};

// Head dim 64 and 128: 128 keys a step (S is 64 fp32 registers a thread, O 32 or 64); head dim 256:
// 64 keys (O alone is 128 registers a thread). Measured on an H200 (docs/HOPPER_MAINLOOP.md): 64 keys at
// head dim 128 ran 11-14% slower than 128; more than 128 keys leaves S + P + O no room in 255 registers,
// and the softmax's row reductions need a power-of-two number of columns (so no 192 at head dim 64).
template <class Element, int HeadDim>
using Sm90DefaultTraits = Sm90Traits<Element, HeadDim, HeadDim <= 128 ? 128 : 64>;

}  // namespace fib::prefill
