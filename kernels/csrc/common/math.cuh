// Common layer: fast transcendental functions and warp reductions used by the softmax of every family.
#pragma once

#include <math.h>
#include <stdint.h>

namespace fib {

constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFullWarp = 0xffffffffu;

// 2^x with the MUFU unit (ex2.approx: ~2 ulp, -inf -> +0, subnormal results flushed to zero).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// e^x through fast_exp2.
__device__ __forceinline__ float fast_exp(float x) {
  constexpr float kLog2eF = 1.4426950408889634f;
  return fast_exp2(x * kLog2eF);
}

// log2(x) with the MUFU unit (lg2.approx: 0 -> -inf).
__device__ __forceinline__ float fast_log2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// tanh(x) with the MUFU unit (tanh.approx.f32: relative error about 2^-11, saturates to +-1).
__device__ __forceinline__ float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float fast_rcp(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Reductions over the lanes that differ only in the bits of Mask (Mask = 3: groups of 4 lanes).
template <int Mask>
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int m = 1; m <= Mask; m <<= 1) {
    if (Mask & m) x = fmaxf(x, __shfl_xor_sync(kFullWarp, x, m));
  }
  return x;
}

template <int Mask>
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int m = 1; m <= Mask; m <<= 1) {
    if (Mask & m) x += __shfl_xor_sync(kFullWarp, x, m);
  }
  return x;
}

// Byte permute: byte i of the result is byte (selector >> 4i) & 7 of the pair {hi:lo}.
__device__ __forceinline__ uint32_t prmt(uint32_t lo, uint32_t hi, uint32_t selector) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(lo), "r"(hi), "r"(selector));
  return r;
}

constexpr int ilog2(int x) { return x <= 1 ? 0 : 1 + ilog2(x / 2); }
constexpr bool is_pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }
constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace fib
