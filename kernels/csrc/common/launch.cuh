// Common layer: host-side helpers shared by every family's entry points: dynamic shared memory
// opt-in per device, and fib_kernel_info for the current device.
#pragma once

#include <cuda_runtime.h>

#include "../api.h"

namespace fib {

constexpr int kMaxDevices = 64;

// Raises the kernel's dynamic shared memory limit above the 48 KB default, once per device (the
// attribute belongs to the function in each device's context). Not a stream operation, so it is
// safe while a CUDA graph is being captured.
template <typename Kernel>
cudaError_t allow_dynamic_smem(Kernel kernel, int smem_bytes) {
  static bool done[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < kMaxDevices && done[device]) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err == cudaSuccess && device < kMaxDevices) done[device] = true;
  return err;
}

template <typename Kernel>
cudaError_t fill_kernel_info(fib_kernel_info* info, Kernel kernel, int num_threads, int smem_bytes, int cta_tile_q,
                             int cta_tile_kv) {
  info->abi_version = FIB_ABI_VERSION;
  info->cta_tile_q = cta_tile_q;
  info->cta_tile_kv = cta_tile_kv;
  info->num_threads = num_threads;
  info->smem_bytes = smem_bytes;
  info->ctas_per_sm = 0;
  cudaError_t err = allow_dynamic_smem(kernel, smem_bytes);
  if (err != cudaSuccess) return err;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&info->ctas_per_sm, kernel, num_threads, smem_bytes);
}

}  // namespace fib
