// Common layer: host-side helpers shared by every family's entry points: dynamic shared memory
// opt-in per device, and fib_kernel_info for the current device.
#pragma once

#include <cuda_runtime.h>

#include "../api.h"

namespace fib {

constexpr int kMaxDevices = 64;

// Per-kernel launch set-up, once per device (attributes belong to the function in each device's
// context): raises the dynamic shared memory limit above the 48 KB default. Not a stream operation,
// so it is safe while a CUDA graph is being captured. The kernel is a template argument so that
// each kernel has its own record (kernels of one signature share a pointer type). Asking for the
// largest shared-memory carveout as well made no difference to decode + merge on an H100.
template <auto kernel>
cudaError_t configure_kernel(int smem_bytes) {
  static bool done[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < kMaxDevices && done[device]) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err == cudaSuccess && device < kMaxDevices) done[device] = true;
  return err;
}

template <auto kernel>
cudaError_t fill_kernel_info(fib_kernel_info* info, int num_threads, int smem_bytes, int cta_tile_q, int cta_tile_kv) {
  info->abi_version = FIB_ABI_VERSION;
  info->cta_tile_q = cta_tile_q;
  info->cta_tile_kv = cta_tile_kv;
  info->num_threads = num_threads;
  info->smem_bytes = smem_bytes;
  info->ctas_per_sm = 0;
  cudaError_t err = configure_kernel<kernel>(smem_bytes);
  if (err != cudaSuccess) return err;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&info->ctas_per_sm, kernel, num_threads, smem_bytes);
}

}  // namespace fib
