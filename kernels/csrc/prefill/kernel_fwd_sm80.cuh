// Prefill layer (kernel, sm80 mainloop): kernel_fwd.cuh's body around the mma.sync mainloop.
#pragma once

#include "kernel_fwd.cuh"
#include "mainloop_fwd_sm80.cuh"

namespace fib::prefill {

template <class Traits, class VariantT>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinCtasPerSm)
    prefill_fwd_sm80_kernel(const __grid_constant__ fib_attention_params p) {
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  prefill_fwd<Traits, VariantT, MainloopFwdSm80<Traits, VariantT>, typename Traits::TiledMma>(
      p, *reinterpret_cast<typename Traits::SharedStorage*>(smem_bytes));
}

}  // namespace fib::prefill
