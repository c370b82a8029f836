// Prefill layer (kernel, sm90a): one CTA = one work item x one KV head, two consumer warpgroups of 64
// query rows each; the tile scheduler, softmax, mask and epilogue of the sm80 kernel around the wgmma
// mainloop (docs/HOPPER_MAINLOOP.md).
#pragma once

#include <cute/tensor.hpp>

#include "../api.h"
#include "epilogue_fwd_sm80.cuh"
#include "fragment.cuh"
#include "mainloop_fwd_sm90.cuh"
#include "mask.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"

namespace fib::prefill {

template <class Traits, class VariantT>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinCtasPerSm)
    prefill_fwd_sm90_kernel(const __grid_constant__ fib_attention_params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace cute;
  extern __shared__ __align__(1024) unsigned char smem_bytes[];  // the SW128 atoms repeat every 1 KB
  auto& smem = *reinterpret_cast<typename Traits::SharedStorage*>(smem_bytes);

  WorkTile t;
  if (!load_work_tile<Traits::kBlockM, VariantT>(p, t)) return;
  const int tid = threadIdx.x;

  typename Traits::TiledMmaO tiled_mma;
  Tensor tOrO = partition_fragment_C(tiled_mma, Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>{});
  clear(tOrO);
  Tensor tOcO = rowcol_view(tiled_mma.get_thread_slice(tid).partition_C(
      make_identity_tensor(Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>{})));
  constexpr int kRows = decltype(size<0>(tOcO))::value;

  OnlineSoftmax<kRows> softmax;
  MainloopFwdSm90<Traits, VariantT>::run(p, t, smem, tOrO, softmax, tid);

  float lse[kRows];
  Tensor o = rowcol_view(tOrO);
  if (t.num_kv_tiles(Traits::kBlockN) == 0) {
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) lse[mi] = -INFINITY;  // o stays 0: no visible key
  } else {
    softmax.finalize(o, VariantT::softmax_scale_log2(p), lse);
  }
  EpilogueFwdSm80<Traits>::store(p, t, thread_rows<kRows>(t, tOcO), tOrO, tOcO, lse, smem, tid);
#endif
}

}  // namespace fib::prefill
