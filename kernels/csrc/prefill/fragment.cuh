// Prefill layer (register utilities): views of m16n8k16 (mma.sync) and wgmma accumulator fragments.
#pragma once

#include <cute/tensor.hpp>

namespace fib::prefill {

// m16n8 (mma.sync) accumulator ((2, 2), MMA_M, MMA_N) -> (rows, cols) = ((2, MMA_M), (2, MMA_N)): a
// thread's values c0 c1 share a row (adjacent columns), c2 c3 sit 8 rows lower.
// wgmma accumulator ((2, 2, N / 8), MMA_M, MMA_N) -> ((2, MMA_M), (2, N / 8, MMA_N)): the same quad
// pattern repeated over the n8 column blocks of one m64nN instruction.
template <class Layout>
CUTE_HOST_DEVICE auto rowcol_layout(Layout acc) {  // host too: tests/build checks it
  static_assert(decltype(cute::rank(acc))::value == 3, "expects an MMA accumulator layout (MMA, MMA_M, MMA_N)");
  if constexpr (decltype(cute::rank<0>(acc))::value == 3) {
    static_assert(decltype(cute::size<0, 0>(acc))::value == 2 && decltype(cute::size<0, 1>(acc))::value == 2,
                  "expects the wgmma accumulator ((2, 2, N / 8), MMA_M, MMA_N)");
    return cute::make_layout(cute::make_layout(cute::get<0, 1>(acc), cute::get<1>(acc)),
                             cute::make_layout(cute::get<0, 0>(acc), cute::get<0, 2>(acc), cute::get<2>(acc)));
  } else {
    static_assert(decltype(cute::size<0>(acc))::value == 4, "expects the m16n8 accumulator (4 values a thread)");
    auto l = cute::logical_divide(acc, cute::Shape<cute::_2>{});  // ((2, 2), MMA_M, MMA_N)
    return cute::make_layout(cute::make_layout(cute::get<0, 1>(l), cute::get<1>(l)),
                             cute::make_layout(cute::get<0, 0>(l), cute::get<2>(l)));
  }
}

template <class Tensor>
__device__ __forceinline__ auto rowcol_view(Tensor&& t) {
  return cute::make_tensor(t.data(), rowcol_layout(t.layout()));
}

// Accumulator of S = Q K^T ((2, 2), MMA_M, MMA_N) -> A operand of P V ((2, 2, 2), MMA_M, MMA_N / 2):
// two n8 accumulator tiles make one k16 operand tile.
template <class Layout>
__device__ __forceinline__ auto acc_as_a_operand_layout(Layout acc) {
  static_assert(decltype(cute::size<2>(acc))::value % 2 == 0, "MMA_N must be even to form k16 operand tiles");
  auto l = cute::logical_divide(acc, cute::Shape<cute::Underscore, cute::Underscore, cute::_2>{});
  return cute::make_layout(cute::make_layout(cute::get<0>(l), cute::get<2, 0>(l)), cute::get<1>(l),
                           cute::get<2, 1>(l));
}

// wgmma accumulator of S = Q K^T ((2, 2, N / 8), MMA_M, MMA_N) -> register A operand of the P V
// wgmma ((2, 2, 2), MMA_M, N / 16 * MMA_N): the k16 operand holds two adjacent n8 accumulator blocks.
template <class Layout>
CUTE_HOST_DEVICE auto wgmma_acc_as_a_operand_layout(Layout acc) {
  static_assert(decltype(cute::rank<0>(acc))::value == 3, "expects the wgmma accumulator ((2, 2, N / 8), M, N)");
  static_assert(decltype(cute::size<0, 2>(acc))::value % 2 == 0, "N / 8 must be even to form k16 operand tiles");
  auto blocks = cute::logical_divide(cute::get<0, 2>(acc), cute::Shape<cute::_2>{});  // ((2, N / 16))
  return cute::make_layout(cute::make_layout(cute::get<0, 0>(acc), cute::get<0, 1>(acc), cute::get<0, 0>(blocks)),
                           cute::get<1>(acc),
                           cute::coalesce(cute::make_layout(cute::get<0, 1>(blocks), cute::get<2>(acc))));
}

}  // namespace fib::prefill
