/* ABI layer: the plain C interface between the kernel packs and Python (ctypes, kernels/abi.py).
 *
 * Every compiled variant exports, with <id> its canonical variant id (variants/variant.py):
 *   int fib_<id>_run(const <family params>* params, void* stream);   // returns a cudaError_t
 *   int fib_<id>_info(fib_kernel_info* info);                         // for the current device
 * Pointers are device pointers; strides are in elements. Any change to a struct below bumps
 * FIB_ABI_VERSION, and kernels/abi.py mirrors it field by field.
 */
#ifndef FIB_API_H_
#define FIB_API_H_

#include <stdint.h>

#define FIB_ABI_VERSION 2

/* Launch flags (the `flags` field of the params structs). On sm_90 the kernels are programmatic
 * dependent launches (csrc/common/launch.cuh): they may start while the previous kernel in the stream
 * still runs, and by default read nothing before it has finished. A flag promises that some inputs
 * were in place before that kernel started (written by the host, a copy, or an earlier kernel), so
 * they are read early, overlapping its end:
 *   FIB_INDEX_READY: work, qo_indptr, kv_indptr and kv_last_page_len (attention); merge_indptr and
 *                    merge_indices (merge);
 *   FIB_PAGES_READY: kv_indices (attention). */
#define FIB_INDEX_READY 1
#define FIB_PAGES_READY 2

#ifdef __cplusplus
extern "C" {
#endif

/* One unit of work from the scheduler (kernels/scheduler.py). The attention grid is
 * (max work items, num_kv_heads); the CTA (i, h) runs work[i] for KV head h.
 * Query rows are packed per KV head: row = token * group_size + head_in_group, with
 * group_size = num_qo_heads / num_kv_heads and token counted from the request's first query. */
typedef struct fib_work_item {
  int32_t request;     /* < 0: padding; the CTA exits at once */
  int32_t qo_begin;    /* packed query rows [qo_begin, qo_end) of the request */
  int32_t qo_end;
  int32_t kv_begin;    /* keys [kv_begin, kv_end) of the request */
  int32_t kv_end;
  int32_t partial_row; /* < 0: write o (and lse) directly; else the partial-state row of token
                          qo_begin / group_size; token t goes to partial_row + t - qo_begin / group_size */
} fib_work_item;

/* Decode and prefill, paged or ragged KV. */
typedef struct fib_attention_params {
  /* q: [total_q, num_qo_heads, head_dim]; request r owns tokens [qo_indptr[r], qo_indptr[r+1]).
   * Decode: NULL (one query per request, token r), or, for variants without mask or positions,
   * each request's first token qo_indptr[r] (only that entry is read): several tokens that see every
   * key, packed as row = token * group_size + head_in_group (a cascade's shared level). */
  const void* q;
  int64_t q_stride_n, q_stride_h;
  const int32_t* qo_indptr;        /* [batch_size + 1] */

  /* Paged KV (kv_indices != NULL): k/v [num_pages, ...] with token j of request r in page
   * kv_indices[kv_indptr[r] + j / page_size] at slot j % page_size; the last page holds
   * kv_last_page_len[r] tokens. NHD and HND layouts differ only in the strides.
   * Ragged KV (kv_indices == NULL): k/v [total_kv, num_kv_heads, head_dim], request r owns
   * rows [kv_indptr[r], kv_indptr[r+1]); kv_stride_page and page_size are unused. */
  const void* k;
  const void* v;
  int64_t kv_stride_page, kv_stride_n, kv_stride_h;
  const int32_t* kv_indptr;        /* [batch_size + 1]: pages (paged) or tokens (ragged) */
  const int32_t* kv_indices;
  const int32_t* kv_last_page_len; /* [batch_size], paged only */
  int32_t page_size;

  /* o: [total_q, num_qo_heads, head_dim] in the query dtype; lse: [total_q, num_qo_heads] float32,
   * natural log, or NULL. A row with no visible key gets o = 0 and lse = -inf. */
  void* o;
  int64_t o_stride_n, o_stride_h;
  float* lse;

  /* Work list and split-KV partial states (float32, [rows, num_qo_heads, head_dim] and
   * [rows, num_qo_heads], natural-log lse), combined afterwards by the merge kernel. */
  const fib_work_item* work;
  int32_t num_work;                /* grid.x; items past the last real one have request < 0 */
  float* partial_o;
  float* partial_lse;

  int32_t batch_size, num_qo_heads, num_kv_heads;

  /* Variant knobs, read only by variants whose hooks use them. */
  float sm_scale;
  float logits_soft_cap;           /* soft_cap variants: cap * tanh(s / cap), s already scaled */
  float rope_scale, rope_theta;    /* rope variants: angle = pos / rope_scale * theta^(-2i/d) */
  float k_scale, v_scale;          /* fp8 KV: real value = stored value * scale */
  int32_t window_left;             /* sliding_window variants: keys pos >= q_pos - window_left */
  const float* alibi_slopes;       /* alibi variants: [num_qo_heads]; s += slope * (kv_pos - q_pos) */
  const uint8_t* custom_mask;      /* custom variants: bits, little-endian within each byte; request r's */
  const int64_t* mask_indptr;      /* [q_len, kv_len] row-major mask starts at bit mask_indptr[r]; 1 = keep */

  int32_t flags;                   /* FIB_INDEX_READY | FIB_PAGES_READY, or 0 */
} fib_attention_params;

/* Merge states: out row n = softmax-weighted combination of partial rows
 * merge_indices[merge_indptr[n] .. merge_indptr[n+1]); rows with an empty range are left untouched. */
typedef struct fib_merge_params {
  const float* partial_o;          /* [rows, num_heads, head_dim] */
  const float* partial_lse;        /* [rows, num_heads], natural log */
  const int32_t* merge_indptr;     /* [num_rows + 1] */
  const int32_t* merge_indices;
  void* o;                         /* [num_rows, num_heads, head_dim] in the variant's dtype */
  int64_t o_stride_n, o_stride_h;
  float* lse;                      /* [num_rows, num_heads] or NULL */
  int32_t num_rows, num_heads, head_dim;
  int32_t flags;                   /* FIB_INDEX_READY, or 0 */
} fib_merge_params;

/* What the scheduler and the loader need to know about one compiled variant on this device. */
typedef struct fib_kernel_info {
  int32_t abi_version;             /* FIB_ABI_VERSION the unit was built with */
  int32_t cta_tile_q;              /* packed query rows per CTA (a work item's qo range is at most this) */
  int32_t cta_tile_kv;             /* keys per mainloop step */
  int32_t num_threads;
  int32_t smem_bytes;              /* dynamic shared memory per CTA */
  int32_t ctas_per_sm;             /* occupancy on the current device, 0 if it cannot run there */
} fib_kernel_info;

#ifdef __cplusplus
}
#endif

#endif /* FIB_API_H_ */
