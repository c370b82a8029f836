// Prefill layer (kernel body): one CTA = one work item x one KV head; the tile scheduler, a
// mainloop, the softmax's finish and the epilogue composed. The sm80 kernel (kernel_fwd_sm80.cuh)
// and the sm90a one (kernel_fwd_sm90.cuh) are this body around their own mainloop and MMA.
#pragma once

#include <cute/tensor.hpp>

#include "../api.h"
#include "epilogue_fwd_sm80.cuh"
#include "fragment.cuh"
#include "mask.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"

namespace fib::prefill {

// TiledMma: the MMA whose accumulator layout O takes (the one P V runs on).
template <class Traits, class VariantT, class Mainloop, class TiledMma>
__device__ __forceinline__ void prefill_fwd(const fib_attention_params& p, typename Traits::SharedStorage& smem) {
  using namespace cute;
  WorkTile t;
  if (!load_work_tile<Traits::kBlockM, VariantT>(p, t)) return;
  const int tid = threadIdx.x;

  TiledMma tiled_mma;
  Tensor tOrO = partition_fragment_C(tiled_mma, Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>{});
  clear(tOrO);
  Tensor tOcO = rowcol_view(tiled_mma.get_thread_slice(tid).partition_C(
      make_identity_tensor(Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>{})));
  constexpr int kRows = decltype(size<0>(tOcO))::value;

  OnlineSoftmax<kRows> softmax;
  Mainloop::run(p, t, smem, tOrO, softmax, tid);

  float lse[kRows];
  Tensor o = rowcol_view(tOrO);
  if (t.num_kv_tiles(Traits::kBlockN) == 0) {
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) lse[mi] = -INFINITY;  // o stays 0: no visible key
  } else {
    softmax.finalize(o, VariantT::softmax_scale_log2(p), lse);
  }
  EpilogueFwdSm80<Traits>::store(p, t, thread_rows<kRows>(t, tOcO), tOrO, tOcO, lse, smem, tid);
}

}  // namespace fib::prefill
