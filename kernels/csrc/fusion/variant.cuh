// Fusion layer: an attention variant as a small hook struct, applied by every mainloop (decode,
// prefill; sm80 and, later, sm90a) at the same fixed points with the same signatures.
//
//   query transform   RoPE on q (and k) is applied where the mainloop loads them: see rope.cuh
//   logits transform  soft-cap, ALiBi: logits_transform(), with MUFU tanh for the soft-cap
//   logits mask       mask policy: keep() per element, plus kv_range() for the loop bounds, so a
//                     mainloop runs fully visible tiles without per-element tests
//   softmax scale     softmax_scale_log2(): what multiplies the transformed logit before exp2
//
// The Python reference semantics of each hook lives in variants/hooks.py; keep the two in step.
#pragma once

#include <math.h>
#include <stdint.h>

#include "../api.h"
#include "../common/math.cuh"

namespace fib {

enum class MaskMode { kNone, kCausal, kCustom, kSlidingWindow };
enum class PosEncoding { kNone, kRope, kAlibi };

constexpr float kLog2e = 1.4426950408889634f;

// Positions of one query row and its request: query token q (0-based within the request) sits at
// position kv_len - q_len + q, so the last query sees every key ("causal aligned to the end").
struct RowContext {
  int32_t request;
  int32_t q_len;
  int32_t kv_len;
  int32_t qo_head;
};

template <MaskMode Mask, PosEncoding Pos, bool SoftCap>
struct Variant {
  static constexpr MaskMode kMask = Mask;
  static constexpr PosEncoding kPos = Pos;
  static constexpr bool kSoftCap = SoftCap;
  static constexpr bool kNeedsPerElementTransform = SoftCap || Pos == PosEncoding::kAlibi;

  __device__ __forceinline__ static int32_t query_pos(const RowContext& r, int32_t q) {
    return r.kv_len - r.q_len + q;
  }

  // Multiplier applied to logits_transform's result before exp2: logits_transform(s) *
  // softmax_scale_log2() is the transformed logit times log2(e). Constant factors of the logit
  // move here, out of the per-element work: sm_scale when nothing else is done per element, the
  // cap when soft-capping (logits_transform then returns tanh(x / cap), the logit over the cap).
  __device__ __forceinline__ static float softmax_scale_log2(const fib_attention_params& p) {
    if constexpr (SoftCap) return p.logits_soft_cap * kLog2e;
    return kNeedsPerElementTransform ? kLog2e : p.sm_scale * kLog2e;
  }

  // s is the raw dot product q.k (after RoPE when kPos == kRope). Order: scale, ALiBi, soft-cap;
  // the result is in the units softmax_scale_log2 expects.
  __device__ __forceinline__ static float logits_transform(const fib_attention_params& p, const RowContext& r,
                                                           int32_t q, int32_t kv, float s) {
    if constexpr (Pos == PosEncoding::kAlibi) {
      s = s * p.sm_scale + p.alibi_slopes[r.qo_head] * float(kv - query_pos(r, q));
      if constexpr (SoftCap) s = fast_tanh(s * fast_rcp(p.logits_soft_cap));
    } else if constexpr (SoftCap) {
      // sm_scale / cap is the same for every element: one multiply before the tanh.
      s = fast_tanh(s * (p.sm_scale * fast_rcp(p.logits_soft_cap)));
    }
    return s;
  }

  // Per-element mask test; only called where kv_range() says a tile is partially visible.
  __device__ __forceinline__ static bool keep(const fib_attention_params& p, const RowContext& r, int32_t q,
                                              int32_t kv) {
    if constexpr (Mask == MaskMode::kCausal) {
      return kv <= query_pos(r, q);
    } else if constexpr (Mask == MaskMode::kSlidingWindow) {
      const int32_t qp = query_pos(r, q);
      return kv <= qp && kv >= qp - p.window_left;
    } else if constexpr (Mask == MaskMode::kCustom) {
      const int64_t bit = p.mask_indptr[r.request] + int64_t(q) * r.kv_len + kv;
      return (p.custom_mask[bit >> 3] >> (bit & 7)) & 1;
    } else {
      return true;
    }
  }

  // Keys [*begin, *end) that queries [q_first, q_last] may see: the loop bounds. Keys outside are
  // never loaded. Within the range, tiles that straddle a boundary still need keep().
  __device__ __forceinline__ static void kv_range(const fib_attention_params& p, const RowContext& r,
                                                  int32_t q_first, int32_t q_last, int32_t* begin, int32_t* end) {
    int32_t lo = 0, hi = r.kv_len;
    if constexpr (Mask == MaskMode::kCausal || Mask == MaskMode::kSlidingWindow) {
      hi = min(hi, query_pos(r, q_last) + 1);
    }
    if constexpr (Mask == MaskMode::kSlidingWindow) {
      lo = max(0, query_pos(r, q_first) - p.window_left);
    }
    *begin = lo;
    *end = max(lo, hi);
  }

  // True when every query in [q_first, q_last] sees every key in [kv_first, kv_last]: the
  // mainloop may skip keep() for that tile.
  __device__ __forceinline__ static bool tile_fully_visible(const fib_attention_params& p, const RowContext& r,
                                                            int32_t q_first, int32_t q_last, int32_t kv_first,
                                                            int32_t kv_last) {
    if constexpr (Mask == MaskMode::kNone) {
      return true;
    } else if constexpr (Mask == MaskMode::kCausal) {
      return kv_last <= query_pos(r, q_first);
    } else if constexpr (Mask == MaskMode::kSlidingWindow) {
      return kv_last <= query_pos(r, q_first) && kv_first >= query_pos(r, q_last) - p.window_left;
    } else {
      return false;
    }
  }
};

}  // namespace fib
