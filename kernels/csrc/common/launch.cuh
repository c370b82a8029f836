// Common layer: launch helpers shared by every family's entry points: programmatic dependent
// launch, dynamic shared memory opt-in per device, and fib_kernel_info for the current device.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "../api.h"

namespace fib {

constexpr int kMaxDevices = 64;

// Programmatic dependent launch (sm_90): a kernel launched with it may start while the kernel before
// it in the stream is still running, once every CTA of that one has called launch_dependents() or
// exited, and must call wait_for_previous_grid() before it touches memory the previous kernel may
// write or read (that call returns once the previous grid has finished and its writes are visible).
// Our kernels call launch_dependents() first thing, so the next launch (the merge after a split
// decode) is resident when they end, and wait before anything but what the launch flags of api.h
// declare ready. Measured on an H100, batch 1 x 32k split, graph replays: the merge's 0.3 us launch
// gap becomes an overlap; with the merge kernel's rewrite, decode + merge went 60.2-60.5 -> 56.9-57.0
// us (the share of each was not separated), and with the flags to 54.4 us. The instructions exist
// from sm_90 on: packs with older machine code (sm80, whose PTX also runs on newer GPUs) launch
// plainly and compile both calls to nothing.
constexpr bool programmatic_launch_supported() {
#ifdef __CUDA_ARCH_LIST__
  constexpr int archs[] = {__CUDA_ARCH_LIST__};
  for (int arch : archs) {
    if (arch < 900) return false;
  }
  return true;
#else
  return false;
#endif
}
constexpr bool kProgrammaticLaunch = programmatic_launch_supported();

__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, threads, smem_bytes, stream>>>(args...), as a programmatic dependent launch where
// the pack's code supports it. Graph capture records it as a programmatic edge.
template <class... Params, class... Args>
cudaError_t launch(void (*kernel)(Params...), unsigned grid, unsigned threads, int smem_bytes, cudaStream_t stream,
                   Args&&... args) {
  cudaLaunchAttribute attribute[1] = {};
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = size_t(smem_bytes);
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = kProgrammaticLaunch ? 1 : 0;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  return err != cudaSuccess ? err : cudaGetLastError();
}

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
