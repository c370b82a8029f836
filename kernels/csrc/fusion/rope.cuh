// Fusion layer: fused rotary position embedding (Llama's "rotate half" form), applied by the
// mainloops to q and k as they are loaded, so the KV cache is stored without RoPE and no
// separate pass runs over it. Python reference: variants/hooks.py, apply_rope.
//
// Angles reach 1e5 radians at 128k positions. There, float32's rounding of the frequency alone
// (1e-7 relative) turns a vector by 0.01 rad, and per-element sincosf (a long range reduction
// with a slow path) cost more than the attention around it. So the frequency is kept in turns
// per position as two floats (hi + lo, ~48 bits, computed in double once per CTA or lane), the
// angle is reduced to [-1/2, 1/2] turns exactly, and the MUFU unit takes sin and cos of that.
#pragma once

#include <math.h>

#include "../api.h"

namespace fib {

// Rotation of pair i per position, in turns: theta^(-2i / head_dim) / (rope_scale * 2 pi) = hi + lo.
struct RopeFreq {
  float hi;
  float lo;
};

// The frequencies of one launch. Double precision, but only per pair and CTA (or lane), never
// per element: log2(theta) once, one exp2 per pair.
struct RopeFrequencies {
  double log2_theta;
  double turns_per_radian;  // 1 / (rope_scale * 2 pi)

  __device__ __forceinline__ explicit RopeFrequencies(const fib_attention_params& p)
      : log2_theta(log2(double(p.rope_theta))), turns_per_radian(1.0 / (double(p.rope_scale) * 6.283185307179586)) {}

  __device__ __forceinline__ RopeFreq operator()(int i, int head_dim) const {
    const double f = exp2(-2.0 * double(i) / double(head_dim) * log2_theta) * turns_per_radian;
    const float hi = float(f);
    return {hi, float(f - double(hi))};
  }
};

// The angle of frequency f at integer position pos (exact in float below 2^24), reduced to
// [-1/2, 1/2] turns. t = pos * hi is split into its rounded value and its exact error (fma);
// dropping t's integer part is exact (Sterbenz), so the result errs by ~2^-25 turns. __fmul_rn
// keeps the compiler from fusing pos * hi into the subtraction, which would count the product's
// error twice.
__device__ __forceinline__ float rope_turns(float pos, RopeFreq f) {
  const float t = __fmul_rn(pos, f.hi);
  const float t_err = fmaf(pos, f.hi, -t);
  return (t - rintf(t)) + fmaf(pos, f.lo, t_err);
}

// cos and sin of that angle with the MUFU unit, which adds an absolute error near 1e-6 (PTX:
// 2^-20.5 on [-pi, pi]).
__device__ __forceinline__ void rope_cos_sin(float pos, RopeFreq f, float& c, float& s) {
  __sincosf(rope_turns(pos, f) * 6.28318530717958648f, &s, &c);
}

// Rotates the pair (x_lo, x_hi) = (x[i], x[i + head_dim / 2]) by the angle (c, s).
__device__ __forceinline__ void rope_rotate(float c, float s, float& x_lo, float& x_hi) {
  const float lo = x_lo * c - x_hi * s;
  const float hi = x_hi * c + x_lo * s;
  x_lo = lo;
  x_hi = hi;
}

// Rotates the pair of frequency f at position pos.
__device__ __forceinline__ void rope_rotate(float pos, RopeFreq f, float& x_lo, float& x_hi) {
  float c, s;
  rope_cos_sin(pos, f, c, s);
  rope_rotate(c, s, x_lo, x_hi);
}

}  // namespace fib
