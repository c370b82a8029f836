// Prefill layer (kernel, sm90a): kernel_fwd.cuh's body around the wgmma mainloop, two consumer
// warpgroups of 64 query rows each (docs/HOPPER_MAINLOOP.md).
#pragma once

#include "kernel_fwd.cuh"
#include "mainloop_fwd_sm90.cuh"

namespace fib::prefill {

template <class Traits, class VariantT>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinCtasPerSm)
    prefill_fwd_sm90_kernel(const __grid_constant__ fib_attention_params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem_bytes[];  // the SW128 atoms repeat every 1 KB
  prefill_fwd<Traits, VariantT, MainloopFwdSm90<Traits, VariantT>, typename Traits::TiledMmaO>(
      p, *reinterpret_cast<typename Traits::SharedStorage*>(smem_bytes));
#endif
}

}  // namespace fib::prefill
