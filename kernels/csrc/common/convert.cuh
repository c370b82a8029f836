// Common layer: element conversions in registers: fp16/bf16 <-> fp32, and fp8 (e4m3, e5m2) packs
// -> fp16 pairs, fp32 or bf16 pairs, with the tensor's per-tensor scale.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "math.cuh"
#include "types.cuh"

namespace fib {

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float2 to_float2(__half2 x) { return __half22float2(x); }
__device__ __forceinline__ float2 to_float2(__nv_bfloat162 x) { return __bfloat1622float2(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Two floats -> one 32-bit word holding the pair {lo, hi} in T (fp16 or bf16), round to nearest.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// A 32-bit word holding a pair of T -> two floats.
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t w);
template <>
__device__ __forceinline__ float2 unpack2<__half>(uint32_t w) {
  return __half22float2(*reinterpret_cast<__half2*>(&w));
}
template <>
__device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t w) {
  return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&w));
}

// fp8 -> fp16, exact: both fp8 formats fit in fp16. e5m2 is the top byte of an fp16 (two byte
// permutes per 4 values). e4m3 moved into fp16's exponent field by bit moves reads 2^-8 times too
// small (bias 7 vs 15), subnormals included; sm89+ has a conversion instruction instead. So the
// fp16 produced times kRealPerHalf is the stored fp8 value; callers fold kRealPerHalf into the
// tensor's scale instead of multiplying every element. The bit-move path does not keep e4m3's NaN
// encoding (fp8 KV caches hold finite values).
template <typename Fp8>
struct Fp8Unpack;

template <>
struct Fp8Unpack<cutlass::float_e5m2_t> {
  static constexpr float kRealPerHalf = 1.0f;
  // Word of 4 fp8 (byte i = element i) -> fp16 pairs {e0, e1} and {e2, e3}.
  __device__ __forceinline__ static void to_half2x2(uint32_t w, uint32_t& lo, uint32_t& hi) {
    lo = prmt(w, 0u, 0x1404);
    hi = prmt(w, 0u, 0x3424);
  }
};

// e4m3 on sm89+ goes through the hardware conversion (one instruction per pair, real values);
// before, through bit moves that leave values 2^-8 too small.
template <>
struct Fp8Unpack<cutlass::float_e4m3_t> {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  static constexpr float kRealPerHalf = 1.0f;
  __device__ __forceinline__ static void to_half2x2(uint32_t w, uint32_t& lo, uint32_t& hi) {
    asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e4m3x2 %0, l;\n cvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
        : "=r"(lo), "=r"(hi)
        : "r"(w));
  }
#else
  static constexpr float kRealPerHalf = 256.0f;  // 2^(15 - 7)
  __device__ __forceinline__ static void to_half2x2(uint32_t w, uint32_t& lo, uint32_t& hi) {
    constexpr uint32_t kSign = 0x80008000u, kExpMant = 0x3f803f80u;
    const uint32_t l = prmt(w, 0u, 0x1404), h = prmt(w, 0u, 0x3424);  // each byte at the top of its half
    lo = ((l >> 1) & kExpMant) | (l & kSign);
    hi = ((h >> 1) & kExpMant) | (h & kSign);
  }
#endif
};

// 4 fp8 -> 4 floats holding real values: stored value * scale.
template <typename Fp8>
__device__ __forceinline__ float4 fp8x4_to_float4(uint32_t w, float scale) {
  uint32_t lo, hi;
  Fp8Unpack<Fp8>::to_half2x2(w, lo, hi);
  const float s = scale * Fp8Unpack<Fp8>::kRealPerHalf;
  const float2 a = unpack2<__half>(lo), b = unpack2<__half>(hi);
  return make_float4(a.x * s, a.y * s, b.x * s, b.y * s);
}

// 4 fp8 -> two pairs of T (fp16 or bf16) holding stored value * scale, rounded once.
template <typename Fp8, typename T>
__device__ __forceinline__ void fp8x4_to_pairs(uint32_t w, float scale, uint32_t& lo, uint32_t& hi) {
  const float4 f = fp8x4_to_float4<Fp8>(w, scale);
  lo = pack2<T>(f.x, f.y);
  hi = pack2<T>(f.z, f.w);
}

}  // namespace fib
