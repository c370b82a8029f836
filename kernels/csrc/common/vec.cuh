// Common layer: fixed-size register vectors moved with one wide (up to 16-byte) load or store.
#pragma once

#include <stdint.h>

namespace fib {

// Raw bytes of one wide access, as 32-bit words (what prmt and the conversions work on).
template <int Bytes>
struct alignas(Bytes) Words {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "one access moves 4, 8 or 16 bytes");
  static constexpr int kWords = Bytes / 4;
  uint32_t w[kWords];

  __device__ __forceinline__ static Words load(const void* p) { return *reinterpret_cast<const Words*>(p); }
  __device__ __forceinline__ void store(void* p) const { *reinterpret_cast<Words*>(p) = *this; }
};

// N elements of type T in registers, loaded and stored as whole aligned vectors.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  static_assert((sizeof(T) * N) % 4 == 0 && sizeof(T) * N <= 16, "a Vec is one 4- to 16-byte access");
  T data[N];

  __device__ __forceinline__ T& operator[](int i) { return data[i]; }
  __device__ __forceinline__ const T& operator[](int i) const { return data[i]; }
  __device__ __forceinline__ static Vec load(const T* p) { return *reinterpret_cast<const Vec*>(p); }
  __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<Vec*>(p) = *this; }
};

// Streaming load that skips L1 (data read once, e.g. partial states in the merge kernel).
__device__ __forceinline__ float4 load_streaming(const float4* p) { return __ldcs(p); }

}  // namespace fib
