// Prefill layer (device launch, sm90a): the host side of one variant compiled with the wgmma
// mainloop (instantiate/prefill_sm90.cu.in); same entry points and grid as PrefillKernelSm80.
#pragma once

#include <cuda_runtime.h>

#include "../api.h"
#include "../common/launch.cuh"
#include "kernel_fwd_sm90.cuh"

namespace fib::prefill {

template <class Traits, class VariantT>
struct PrefillKernelSm90 {
  static constexpr int kSmemBytes = int(sizeof(typename Traits::SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "more shared memory than an sm90 CTA may have (227 KB)");
  static constexpr auto kKernel = &prefill_fwd_sm90_kernel<Traits, VariantT>;

  // Grid (num_work, num_kv_heads): see tile_scheduler.cuh.
  static int run(const fib_attention_params* params, void* stream) {
    if (params == nullptr) return cudaErrorInvalidValue;
    if (params->num_work <= 0 || params->num_kv_heads <= 0) return cudaSuccess;
    cudaError_t err = fib::configure_kernel<kKernel>(kSmemBytes);
    if (err != cudaSuccess) return err;
    const dim3 grid(params->num_work, params->num_kv_heads);
    kKernel<<<grid, Traits::kThreads, kSmemBytes, static_cast<cudaStream_t>(stream)>>>(*params);
    return cudaGetLastError();
  }

  static int info(fib_kernel_info* info) {
    if (info == nullptr) return cudaErrorInvalidValue;
    return fib::fill_kernel_info<kKernel>(info, Traits::kThreads, kSmemBytes, Traits::kBlockM, Traits::kBlockN);
  }
};

}  // namespace fib::prefill
