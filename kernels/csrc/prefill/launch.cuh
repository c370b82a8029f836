// Prefill layer (device launch): the host side of one compiled variant: shared-memory opt-in,
// grid shape, occupancy report. Called by the extern "C" entry points in instantiate/prefill.cu.in
// (and prefill_sm90.cu.in, through launch_sm90.cuh).
#pragma once

#include <cuda_runtime.h>

#include "../api.h"
#include "../common/launch.cuh"
#include "kernel_fwd_sm80.cuh"

namespace fib::prefill {

// kKernel: a prefill kernel instantiated for Traits (kernel_fwd_sm80.cuh, kernel_fwd_sm90.cuh).
template <class Traits, auto kKernel>
struct PrefillLaunch {
  static constexpr int kSmemBytes = int(sizeof(typename Traits::SharedStorage));

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

template <class Traits, class VariantT>
using PrefillKernelSm80 = PrefillLaunch<Traits, &prefill_fwd_sm80_kernel<Traits, VariantT>>;

}  // namespace fib::prefill
