/* ABI layer of the host planner: the C interface of planner.cpp (ctypes mirror: kernels/abi.py).
 *
 * A kernel pack that links the planner exports fib_plan_decode and fib_plan_prefill (and their _upload
 * forms; its manifest names them under "planner"), each returning result->error. They are
 * kernels/scheduler.py's `plan` for a paged decode batch and for a prefill batch (paged or ragged KV),
 * validation included, written straight into the pinned staging buffer (int32 entries, laid out like the
 * workspace's metadata): the Python planner is their specification and tests/unit/test_plan_native.py
 * checks that both write the same bytes. Host memory only, except the _upload forms' one copy.
 * Kept apart from api.h so that the kernels' cache keys do not depend on it.
 */
#ifndef FIB_PLAN_API_H_
#define FIB_PLAN_API_H_

#include <stdint.h>

#define FIB_PLAN_MAX_FACTORS 8

#ifdef __cplusplus
extern "C" {
#endif

/* What stays the same for every batch of a wrapper's problem and workspace layout. */
typedef struct fib_plan_config {
  int32_t num_qo_heads, num_kv_heads, page_size;
  int32_t window_left;  /* >= 0: sliding window (keys [kv_len - 1 - window_left, kv_len)); -1: all keys */
  int32_t split_kv, fixed_grid, kv_bytes;
  int32_t num_sms, ctas_per_sm, cta_tile_q, cta_tile_kv;  /* scheduler.KernelShape */
  int32_t cap_batch, cap_tokens, cap_work_items, cap_partial_rows, cap_pages;  /* scheduler.Capacity */
  /* first int32 entry of each metadata buffer in the staging buffer (scheduler.WorkspaceLayout / 4) */
  int32_t at_work, at_merge_indptr, at_merge_indices, at_kv_indptr, at_kv_last_page_len, at_kv_indices,
      at_qo_indptr;
  /* scheduler.CostModel, passed in so that its constants live in Python only */
  double item_overhead, solo_speedup, wave_fill, merge_launch, partial_bytes_per_key_byte, min_gain;
  int32_t num_split_factors;
  int32_t mask;  /* prefill: 0 none or custom, 1 causal, 2 sliding window (decode reads window_left only) */
  double split_factors[FIB_PLAN_MAX_FACTORS];
} fib_plan_config;

/* error codes; values[] carries the numbers the Python message needs */
enum {
  FIB_PLAN_OK = 0,
  FIB_PLAN_INDPTR_START = 1,     /* kv_indptr[0] != 0 */
  FIB_PLAN_INDPTR_DECREASES = 2, /* kv_indptr decreases */
  FIB_PLAN_INDPTR_EXCEEDS = 3,   /* kv_indptr[batch] > num_indices: values = {kv_indptr[batch], num_indices} */
  FIB_PLAN_LAST_PAGE_LEN = 4,    /* a request with pages has kv_last_page_len outside [1, page_size] */
  FIB_PLAN_BATCH_OVER = 5,       /* batch > cap_batch: values = {batch, cap_batch} */
  FIB_PLAN_TOKENS_OVER = 6,      /* query tokens (= batch) > cap_tokens: values = {batch, cap_tokens} */
  FIB_PLAN_ITEMS_OVER = 7,       /* work items > cap_work_items: values = {items, cap_work_items} */
  FIB_PLAN_SLOT_OVER = 8,        /* a buffer overflows its slot: values = {slot, entries, limit} */
  FIB_PLAN_BAD_CONFIG = 9,       /* a config the planner does not take (e.g. too many split factors) */
  FIB_PLAN_CUDA = 10,            /* the upload failed: values = {cudaError_t} */
  FIB_PLAN_QO_INDPTR = 11,       /* prefill: qo_indptr does not start at 0 or decreases */
};

/* slots for FIB_PLAN_SLOT_OVER, in layout order */
enum { FIB_SLOT_WORK, FIB_SLOT_MERGE_INDPTR, FIB_SLOT_MERGE_INDICES, FIB_SLOT_KV_INDPTR,
       FIB_SLOT_KV_LAST_PAGE_LEN, FIB_SLOT_KV_INDICES, FIB_SLOT_QO_INDPTR };

/* scheduler.Plan without its arrays (they are in the staging buffer) */
typedef struct fib_plan_result {
  int32_t error;
  int32_t num_items;        /* real work items */
  int32_t grid;             /* work items written, padding included */
  int32_t merge_indptr_len; /* entries of merge_indptr written */
  int32_t num_partial_rows; /* partial-state rows the plan uses */
  int32_t chunk_size;       /* 0: nothing split */
  int32_t num_candidates;
  int32_t num_tokens;       /* query tokens */
  int32_t num_merge_entries; /* entries of merge_indices written */
  int32_t reserved;
  int64_t values[3];
  int64_t kv_used;          /* kv_indptr[batch]: page ids the batch reads */
  int64_t upload_bytes;     /* bytes of staging up to the end of the last buffer written */
  double unsplit, chosen;   /* scheduler.Estimate */
  int64_t candidate_sizes[FIB_PLAN_MAX_FACTORS];
  double candidate_times[FIB_PLAN_MAX_FACTORS];
} fib_plan_result;

int fib_plan_decode(const fib_plan_config* config, const int32_t* kv_indptr, const int32_t* kv_last_page_len,
                    const int32_t* kv_indices, int64_t batch, int64_t num_indices, int32_t* staging,
                    fib_plan_result* result);

/* The same for a prefill batch (scheduler.plan with query lengths): qo_indptr [batch + 1]; kv_indptr in
 * pages with kv_last_page_len, or in tokens (ragged KV) when kv_last_page_len is NULL. The staging
 * buffer gets qo_indptr after the KV arrays, as Engine.plan writes it. */
int fib_plan_prefill(const fib_plan_config* config, const int32_t* qo_indptr, const int32_t* kv_indptr,
                     const int32_t* kv_last_page_len, const int32_t* kv_indices, int64_t batch, int64_t num_indices,
                     int32_t* staging, fib_plan_result* result);

/* Packs only (built with FIB_PLAN_UPLOAD and the CUDA runtime): waits for the event `uploaded` (the last
 * upload from this pinned staging buffer), plans as fib_plan_decode, then copies the upload_bytes to
 * `workspace` (device) asynchronously on `stream` and records `uploaded` there. cudaEvent_t and
 * cudaStream_t are passed as void* so that this header needs no CUDA headers. */
int fib_plan_decode_upload(const fib_plan_config* config, const int32_t* kv_indptr, const int32_t* kv_last_page_len,
                           const int32_t* kv_indices, int64_t batch, int64_t num_indices, int32_t* staging,
                           fib_plan_result* result, void* workspace, void* stream, void* uploaded);
int fib_plan_prefill_upload(const fib_plan_config* config, const int32_t* qo_indptr, const int32_t* kv_indptr,
                            const int32_t* kv_last_page_len, const int32_t* kv_indices, int64_t batch,
                            int64_t num_indices, int32_t* staging, fib_plan_result* result, void* workspace,
                            void* stream, void* uploaded);

#ifdef __cplusplus
}
#endif

#endif  // FIB_PLAN_API_H_
