// Common layer: the element types the instantiation templates name (CUTLASS types) mapped to the
// CUDA native types the kernels compute with, and what each storage type needs to know about itself.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <cutlass/bfloat16.h>
#include <cutlass/float8.h>
#include <cutlass/half.h>

namespace fib {

// Native<T>::type: what a CUTLASS element type is stored as in registers. fp8 stays a raw byte:
// it is only ever converted in packs (convert.cuh), never computed with.
template <typename T>
struct Native;
template <>
struct Native<cutlass::half_t> {
  using type = __half;
  using pair = __half2;
};
template <>
struct Native<cutlass::bfloat16_t> {
  using type = __nv_bfloat16;
  using pair = __nv_bfloat162;
};
template <>
struct Native<cutlass::float_e4m3_t> {
  using type = uint8_t;
};
template <>
struct Native<cutlass::float_e5m2_t> {
  using type = uint8_t;
};
template <typename T>
using native_t = typename Native<T>::type;

template <typename T>
constexpr bool kIsFp8 = false;
template <>
constexpr bool kIsFp8<cutlass::float_e4m3_t> = true;
template <>
constexpr bool kIsFp8<cutlass::float_e5m2_t> = true;

template <typename T>
constexpr bool kIsHalf = false;
template <>
constexpr bool kIsHalf<cutlass::half_t> = true;
template <>
constexpr bool kIsHalf<__half> = true;

}  // namespace fib
