// Prefill layer (collective types): CuTe MMA, shared-memory layouts and copy atoms of the sm80 mainloop.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "rope_smem.cuh"
#include "tile_size.h"

namespace fib::prefill {

template <class Element>
struct Sm80MmaAtom;
template <>
struct Sm80MmaAtom<cutlass::bfloat16_t> {
  using type = cute::SM80_16x8x16_F32BF16BF16F32_TN;
};
template <>
struct Sm80MmaAtom<cutlass::half_t> {
  using type = cute::SM80_16x8x16_F32F16F16F32_TN;
};

template <class Element_, int HeadDim, int BlockM, int BlockN, int Warps, int MinCtasPerSm, int KStages>
struct Sm80Traits {
  using Element = Element_;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kBlockM = BlockM;
  static constexpr int kBlockN = BlockN;
  static constexpr int kWarps = Warps;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMinCtasPerSm = MinCtasPerSm;
  static constexpr int kKStages = KStages;
  static constexpr int kTableSlots = KStages + 1;  // row tables of the tiles whose loads are pending

  static constexpr int kMmaRows = 16;                     // rows of one m16n8k16 instruction
  static constexpr int kVecElems = 16 / sizeof(Element);  // one 16-byte cp.async / ldmatrix row
  static constexpr int kSwizzleRowElems = 64;             // 128-byte rows of the swizzle atom

  static_assert(kBlockM % (kMmaRows * kWarps) == 0, "every warp must own whole 16-row MMA tiles");
  static_assert(kHeadDim % kSwizzleRowElems == 0, "head_dim must be a multiple of 64");
  static_assert(kBlockN % 16 == 0, "block_n must be a multiple of the MMA k extent (16)");
  static_assert(kBlockN <= kThreads, "one thread computes each key row's address per tile");
  static_assert(kKStages == 1 || kKStages == 2, "one or two K buffers");

  // Warps tile the M mode; each repeats the 16x8x16 atom over its rows, all keys and head dims.
  using TiledMma = cute::TiledMMA<cute::MMA_Atom<typename Sm80MmaAtom<Element>::type>,
                                  cute::Layout<cute::Shape<cute::Int<kWarps>, cute::_1, cute::_1>>,
                                  cute::Tile<cute::Int<kMmaRows * kWarps>, cute::_16, cute::_16>>;

  // 8 rows x 128 bytes, XOR-swizzled on 16-byte chunks: ldmatrix and the 16-byte cp.async
  // stores of a warp both touch every bank once.
  using SmemLayoutAtom = decltype(cute::composition(
      cute::Swizzle<3, 3, 3>{},
      cute::Layout<cute::Shape<cute::_8, cute::Int<kSwizzleRowElems>>, cute::Stride<cute::Int<kSwizzleRowElems>, cute::_1>>{}));
  using SmemLayoutQ = decltype(cute::tile_to_shape(SmemLayoutAtom{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(cute::tile_to_shape(SmemLayoutAtom{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>{}));
  // V read as the B operand of P @ V: (head_dim, keys), keys strided.
  using SmemLayoutVt = decltype(cute::composition(
      SmemLayoutKV{}, cute::make_layout(cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>>{}, cute::GenRowMajor{})));
  using SmemLayoutVtNoSwizzle = decltype(cute::get_nonswizzle_portion(SmemLayoutVt{}));

  using SmemCopyAtom = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomTransposed = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;
  using SmemCopyAtomO = cute::Copy_Atom<cute::AutoVectorizingCopyWithAssumedAlignment<32>, Element>;

  // Global <-> shared in 16-byte chunks; the threads of one swizzle row cover its 128 bytes.
  static constexpr int kGmemThreadsPerRow = kSwizzleRowElems / kVecElems;
  static_assert(kThreads % kGmemThreadsPerRow == 0, "threads must tile whole swizzle rows");
  // One pass of GmemTiledCopy covers kGmemRowsPerPass rows; a thread copies kKvRowsPerThread rows of a
  // K/V tile: kGmemRowsPerPass apart, starting at its tid / kGmemThreadsPerRow.
  static constexpr int kGmemRowsPerPass = kThreads / kGmemThreadsPerRow;
  static constexpr int kKvRowsPerThread = kBlockN / kGmemRowsPerPass;
  static_assert(kBlockN % kGmemRowsPerPass == 0 && kKvRowsPerThread % 2 == 0,
                "a thread's key rows must fill whole 16-byte reads of the row table");
  using GmemTiledCopy = decltype(cute::make_tiled_copy(
      cute::Copy_Atom<cute::UniversalCopy<cute::uint128_t>, Element>{},
      cute::Layout<cute::Shape<cute::Int<kThreads / kGmemThreadsPerRow>, cute::Int<kGmemThreadsPerRow>>,
                   cute::Stride<cute::Int<kGmemThreadsPerRow>, cute::_1>>{},
      cute::Layout<cute::Shape<cute::_1, cute::Int<kVecElems>>>{}));

  struct SharedStorage {
    alignas(128) Element q[cute::cosize_v<SmemLayoutQ>];  // also stages O in the epilogue
    alignas(128) Element k[kKStages][cute::cosize_v<SmemLayoutKV>];
    alignas(128) Element v[cute::cosize_v<SmemLayoutKV>];
    alignas(16) int64_t kv_row_offset[kTableSlots][kBlockN];  // row tables of pending tiles (KvRowTable)
    RopePair rope[kHeadDim / 2];
  };
};

// The tile shape that tile_size.h picks for this head dim and arch.
template <class Element, int HeadDim, int Sm>
using Sm80DefaultTraits =
    Sm80Traits<Element, HeadDim, tile_shape(HeadDim, Sm).block_m, tile_shape(HeadDim, Sm).block_n,
               tile_shape(HeadDim, Sm).warps, tile_shape(HeadDim, Sm).min_ctas_per_sm,
               tile_shape(HeadDim, Sm).k_stages>;

}  // namespace fib::prefill
