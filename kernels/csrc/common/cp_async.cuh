// Common layer: cp.async (sm80+) global -> shared copies with zero fill, and their group waits.
#pragma once

#include <stdint.h>

namespace fib {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies Bytes (4, 8 or 16) from global to shared memory, asynchronously. When !valid nothing is
// read and the destination is zero-filled, so a tile's tail past the sequence end holds zeros
// (finite values: 0 * p stays 0), never stale data. 16-byte copies bypass L1 (.cg): the KV stream
// is read once.
template <int Bytes>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem, bool valid = true) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async moves 4, 8 or 16 bytes");
  const int src_bytes = valid ? Bytes : 0;
  if constexpr (Bytes == 16) {
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
                 "r"(src_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_addr(smem)), "l"(gmem), "n"(Bytes),
                 "r"(src_bytes));
  }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace fib
