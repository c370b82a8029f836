// Prefill layer (device launch, sm90a): the host side of one variant compiled with the wgmma
// mainloop (instantiate/prefill_sm90.cu.in); the same entry points and grid as PrefillKernelSm80.
#pragma once

#include "kernel_fwd_sm90.cuh"
#include "launch.cuh"

namespace fib::prefill {

template <class Traits, class VariantT>
using PrefillKernelSm90 = PrefillLaunch<Traits, &prefill_fwd_sm90_kernel<Traits, VariantT>>;

}  // namespace fib::prefill
