// Common layer: the sm80 tensor-core instruction mma.sync m16n8k16 (fp16 or bf16 in, fp32 accumulate)
// with the fragment layout spelled out once.
//
// Lane l holds, with r = l / 4 and c = l % 4 (PTX ISA, "mma.m16n8k16"):
//   A (16x16, row-major) a[0] = A[r][2c..2c+1], a[1] = A[r+8][2c..], a[2] = A[r][2c+8..], a[3] = A[r+8][2c+8..]
//   B (16x8, "col")      b[0] = B[2c..2c+1][r],  b[1] = B[2c+8..2c+9][r]
//   C (16x8, fp32)       c[0..1] = C[r][2c..2c+1], c[2..3] = C[r+8][2c..2c+1]
// where each a/b entry is one 32-bit word holding two consecutive-k elements.
#pragma once

#include <stdint.h>

#include "types.cuh"

namespace fib {

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (kIsHalf<T>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

}  // namespace fib
