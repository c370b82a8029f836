// Fusion layer: fused rotary position embedding (Llama's "rotate half" form), applied by the
// mainloops to q and k as they are loaded, so the KV cache is stored without RoPE and no
// separate pass runs over it. Python reference: variants/hooks.py, apply_rope.
#pragma once

#include <math.h>

#include "../api.h"

namespace fib {

// Frequency of rotation pair i (elements i and i + head_dim / 2), already divided by rope_scale.
__device__ __forceinline__ float rope_inv_freq(const fib_attention_params& p, int i, int head_dim) {
  return powf(p.rope_theta, -2.0f * float(i) / float(head_dim)) / p.rope_scale;
}

// Rotates the pair (x_lo, x_hi) = (x[i], x[i + head_dim / 2]) of a vector at position pos.
// sincosf, not __sincosf: angles reach pos (tens of thousands of radians) at i = 0.
__device__ __forceinline__ void rope_rotate(float pos, float inv_freq, float& x_lo, float& x_hi) {
  float s, c;
  sincosf(pos * inv_freq, &s, &c);
  const float lo = x_lo * c - x_hi * s;
  const float hi = x_hi * c + x_lo * s;
  x_lo = lo;
  x_hi = hi;
}

}  // namespace fib
