// Prefill layer (collective epilogue): normalised O and LSE to their packed rows: 16-bit o through
// shared memory in 16-byte stores, or float32 partial states for the split-KV merge.
#pragma once

#include <cute/tensor.hpp>

#include "../api.h"
#include "load_gather_sm80.cuh"
#include "mainloop_fwd_sm80.cuh"
#include "mask.cuh"
#include "tile_scheduler.cuh"

namespace fib::prefill {

template <class Traits>
struct EpilogueFwdSm80 {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  static constexpr int kHeadDim = Traits::kHeadDim;

  // o: rowcol view of the normalised accumulator; coord: its identity rowcol view.
  template <int kRows, class FragO, class Coord>
  __device__ static void store(const fib_attention_params& p, const WorkTile& t, const ThreadRows<kRows>& rows,
                               FragO& tOrO, const Coord& coord, const float (&lse)[kRows], SharedStorage& smem,
                               int tid) {
    const bool writes_lse_of_row = tid % 4 == 0;  // the quad's four lanes hold the same row LSE
    if (t.partial_row >= 0) {
      store_partial(p, t, rows, tOrO, coord, lse, writes_lse_of_row);
      return;
    }
    if (p.lse && writes_lse_of_row) {
      CUTE_UNROLL
      for (int mi = 0; mi < kRows; ++mi) {
        if (rows.row[mi] < t.num_rows)
          p.lse[int64_t(t.q_token0 + rows.token[mi]) * p.num_qo_heads + rows.qo_head[mi]] = lse[mi];
      }
    }
    store_o(p, t, tOrO, smem, tid);
  }

 private:
  template <int kRows, class FragO, class Coord>
  __device__ static void store_partial(const fib_attention_params& p, const WorkTile& t,
                                       const ThreadRows<kRows>& rows, FragO& tOrO, const Coord& coord,
                                       const float (&lse)[kRows], bool writes_lse_of_row) {
    using namespace cute;
    Tensor o = rowcol_view(tOrO);
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      if (rows.row[mi] >= t.num_rows) continue;
      const int64_t state = int64_t(t.partial_row + rows.token[mi] - t.first_token) * p.num_qo_heads +
                            rows.qo_head[mi];
      float* dst = p.partial_o + state * kHeadDim;
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(o); ni += 2) {  // columns ni, ni + 1 are adjacent
        *reinterpret_cast<float2*>(dst + get<1>(coord(mi, ni))) = make_float2(o(mi, ni), o(mi, ni + 1));
      }
      if (writes_lse_of_row) p.partial_lse[state] = lse[mi];
    }
  }

  template <class FragO>
  __device__ static void store_o(const fib_attention_params& p, const WorkTile& t, FragO& tOrO,
                                 SharedStorage& smem, int tid) {
    using namespace cute;
    Tensor sO = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQ{});  // (BLK_M, D), reuses Q
    Tensor rO = convert_fragment<Element>(tOrO);
    auto r2s = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, typename Traits::TiledMma{});
    auto r2s_thr = r2s.get_thread_slice(tid);
    __syncthreads();  // every warp is done reading Q
    copy(r2s, r2s_thr.retile_S(rO), r2s_thr.partition_D(sO));
    __syncthreads();

    auto thr_copy = typename Traits::GmemTiledCopy{}.get_thread_slice(tid);
    Tensor tOsO = thr_copy.partition_S(sO);  // (CPY, CPY_M, CPY_D)
    Tensor tOcO = thr_copy.partition_S(make_identity_tensor(make_shape(size<0>(sO), size<1>(sO))));
    Element* o = static_cast<Element*>(p.o);
    CUTE_UNROLL
    for (int m = 0; m < size<1>(tOsO); ++m) {
      const int row = get<0>(tOcO(0, m, 0));
      if (row >= t.num_rows) continue;
      Element* dst = o + packed_row_offset(t, row, p.o_stride_n, p.o_stride_h);
      CUTE_UNROLL
      for (int d = 0; d < size<2>(tOsO); ++d) {
        *reinterpret_cast<uint128_t*>(dst + get<1>(tOcO(0, m, d))) = *reinterpret_cast<const uint128_t*>(&tOsO(0, m, d));
      }
    }
  }
};

}  // namespace fib::prefill
