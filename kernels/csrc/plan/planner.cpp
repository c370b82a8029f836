// Scheduling layer, host only: kernels/scheduler.py's `plan` in C++, validation and staging included, in
// one call: paged decode batches (one query token per request, its query heads in one tile) first, then
// prefill batches (query tiles of any shape, causal and sliding-window ranges, per-token merge index).
//
// The Python planner is the specification: every step below names the function it follows, and the
// arithmetic is done in the same order and precision (float64, glibc's exp, round half to even), so
// that both write the same work list, merge index and estimates (tests/unit/test_plan_native.py).
// Plans run for every generated token; in Python they cost ~25 numpy calls of 1-2 us each.
#include "plan_api.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

constexpr int kFields = 6;  // int32 columns of a work item (api.h fib_work_item)

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// std::floor and std::ceil of x >= 0 (below 2^63): the same values through one truncating conversion,
// where baseline x86-64 (no SSE4.1 round) makes std::ceil a library call.
double floor_nonneg(double x) { return static_cast<double>(static_cast<int64_t>(x)); }
double ceil_nonneg(double x) {
  double t = floor_nonneg(x);
  return t < x ? t + 1.0 : t;
}

// scheduler._Model
struct Model {
  const fib_plan_config& c;
  double partial_write;  // extra key steps of an item that writes a float32 partial state
  int64_t num_kv_heads, slots;

  double spread(int64_t keys, int64_t items, int64_t split_items) const {
    double work = static_cast<double>(keys) + c.item_overhead * items + partial_write * split_items;
    return num_kv_heads * work / slots;
  }

  double attention_time(int64_t keys, int64_t items, int64_t split_items, double longest_item) const {
    if (!items) return 0.0;
    double average = (static_cast<double>(keys) + c.item_overhead * items + partial_write * split_items) / items;
    int64_t ctas = items * num_kv_heads, full = ctas / slots, rest = ctas % slots;
    double time = full * average;
    if (rest) {
      double fill = c.wave_fill * slots;
      double share = (1.0 - std::exp(-rest / fill)) / (1.0 - std::exp(-slots / fill));
      time += average / std::min(c.solo_speedup, share * slots / rest);
    }
    return std::max(time, longest_item / c.solo_speedup);
  }
};

struct Lengths {
  std::vector<int64_t> lo, hi;  // keys [lo, hi) each request's query sees (scheduler._visible)
  bool windowed = false;        // any lo > 0
};

// wrapper_engine.paged_lengths + scheduler._visible: validates the index arrays on the way.
int visible_keys(const fib_plan_config& c, const int32_t* indptr, const int32_t* last, int64_t batch,
                 int64_t num_indices, Lengths& len, fib_plan_result* r) {
  if (indptr[0] != 0) return FIB_PLAN_INDPTR_START;
  len.lo.assign(batch, 0);
  len.hi.resize(batch);
  bool bad_last = false;
  for (int64_t i = 0; i < batch; ++i) {
    int64_t pages = static_cast<int64_t>(indptr[i + 1]) - indptr[i];
    if (pages < 0) return FIB_PLAN_INDPTR_DECREASES;
    int64_t kv = 0;
    if (pages > 0) {
      bad_last |= last[i] < 1 || last[i] > c.page_size;
      kv = (pages - 1) * c.page_size + last[i];
    }
    len.hi[i] = kv;
    if (c.window_left >= 0) {
      int64_t lo = std::min(std::max<int64_t>(kv - 1 - c.window_left, 0), kv);
      len.lo[i] = lo;
      len.windowed |= lo > 0;
    }
  }
  if (indptr[batch] > num_indices) {
    r->values[0] = indptr[batch];
    r->values[1] = num_indices;
    return FIB_PLAN_INDPTR_EXCEEDS;
  }
  if (bad_last) {
    r->values[0] = c.page_size;
    return FIB_PLAN_LAST_PAGE_LEN;
  }
  return FIB_PLAN_OK;
}

// scheduler._chunk_candidates
std::vector<int64_t> chunk_candidates(int64_t keys, int64_t longest, int64_t tiles, const Model& m) {
  const fib_plan_config& c = m.c;
  int64_t granule = std::lcm<int64_t>(c.page_size, c.cta_tile_kv);
  double pieces = longest / std::max(m.spread(keys, tiles, 0), 1.0);
  std::vector<int64_t> sizes;
  for (int i = 0; i < c.num_split_factors; ++i) {
    int64_t k = std::max<int64_t>(2, static_cast<int64_t>(std::nearbyint(pieces * c.split_factors[i])));
    int64_t size = ceil_div(ceil_div(longest, k), granule) * granule;
    if (size < longest) sizes.push_back(size);
  }
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  return sizes;
}

// Items, split items and partial rows of the plan with chunks of `size` keys (scheduler._split_counts).
void split_counts(const Lengths& len, int64_t size, int64_t smallest, int64_t* items, int64_t* split) {
  int64_t n = len.hi.size(), total = 0, ones = 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t chunks;
    if (len.windowed) {
      chunks = std::max<int64_t>(ceil_div(len.hi[i], size) - len.lo[i] / size, 1);
    } else if (len.hi[i] > smallest) {  // only requests longer than the smallest chunk may split
      chunks = ceil_div(len.hi[i], size);
    } else {
      chunks = 1;
    }
    total += chunks;
    ones += chunks == 1;
  }
  *items = total;
  *split = total - ones;
}

struct Choice {
  int64_t chunk = 0;
  double chosen = 0.0;
};

// scheduler._choose_chunk over the candidate sizes (ascending), recording each feasible one in `r`.
// counts(size, &items, &split_items, &partial_rows): the plan's shape for chunks of `size` keys.
template <typename Counts>
Choice choose_chunk(const std::vector<int64_t>& sizes, Counts counts, int64_t keys, int64_t longest, const Model& m,
                    double unsplit, fib_plan_result* r) {
  const fib_plan_config& c = m.c;
  double per_slot = static_cast<double>(m.num_kv_heads) / m.slots;
  int best = -1;
  for (int64_t size : sizes) {
    int64_t items, split, rows;
    counts(size, &items, &split, &rows);
    if (rows > c.cap_partial_rows || items > c.cap_work_items) continue;
    double longest_item = std::min(size, longest) + c.item_overhead + m.partial_write;
    double attention = m.attention_time(keys, items, split, longest_item);
    double merge = c.merge_launch + m.partial_write * per_slot * static_cast<double>(rows);
    int i = r->num_candidates++;
    r->candidate_sizes[i] = size;
    r->candidate_times[i] = attention + merge;
    if (best < 0 || r->candidate_times[i] < r->candidate_times[best]) best = i;
  }
  if (best < 0 || r->candidate_times[best] >= unsplit * (1.0 - c.min_gain)) return {0, unsplit};
  return {r->candidate_sizes[best], r->candidate_times[best]};
}

void write_item(int32_t* row, int64_t request, int64_t group, int64_t kv_begin, int64_t kv_end, int64_t partial) {
  row[0] = static_cast<int32_t>(request);
  row[1] = 0;
  row[2] = static_cast<int32_t>(group);
  row[3] = static_cast<int32_t>(kv_begin);
  row[4] = static_cast<int32_t>(kv_end);
  row[5] = static_cast<int32_t>(partial);
}

void write_padding(int32_t* work, int64_t from, int64_t grid) {
  for (int64_t i = from; i < grid; ++i) write_item(work + i * kFields, -1, 0, 0, 0, -1);
}

// scheduler._unsplit_work: one item per request, by decreasing KV range (stable) when `sort`.
void unsplit_work(const Lengths& len, int64_t group, bool sort, int32_t* work) {
  int64_t n = len.hi.size();
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (sort && n > 1) {
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return len.lo[a] - len.hi[a] < len.lo[b] - len.hi[b];
    });
  }
  for (int64_t i = 0; i < n; ++i) {
    int64_t q = order[i];
    write_item(work + i * kFields, q, group, len.lo[q], len.hi[q], -1);
  }
}

// scheduler._split_single_tokens: the split requests' chunks first (partial rows in order), then one
// item per unsplit request; merge_indptr[r + 1] - merge_indptr[r] = chunks of request r if split, else 0.
int64_t split_work(const Lengths& len, int64_t group, int64_t chunk, int32_t* work, int32_t* merge_indptr) {
  int64_t n = len.hi.size(), row = 0;
  merge_indptr[0] = 0;
  for (int64_t q = 0; q < n; ++q) {
    int64_t first = len.windowed ? len.lo[q] / chunk : 0;
    int64_t chunks = std::max<int64_t>(ceil_div(len.hi[q], chunk) - first, 1);
    bool split = len.windowed ? chunks != 1 : len.hi[q] > chunk;
    if (split) {
      for (int64_t c = 0; c < chunks; ++c, ++row) {
        int64_t begin = (c + first) * chunk;
        int64_t kv_begin = len.windowed ? std::max(len.lo[q], begin) : begin;
        write_item(work + row * kFields, q, group, kv_begin, std::min(len.hi[q], begin + chunk), row);
      }
    }
    merge_indptr[q + 1] = static_cast<int32_t>(row);
  }
  int64_t at = row;
  for (int64_t q = 0; q < n; ++q) {
    if (merge_indptr[q + 1] == merge_indptr[q]) write_item(work + at++ * kFields, q, group, len.lo[q], len.hi[q], -1);
  }
  return row;
}

// scheduler.pack_metadata's slot check and upload extent
struct Stager {
  int32_t* staging;
  int64_t end = 0;
  fib_plan_result* r;

  int32_t* slot(int which, int32_t at, int64_t entries, int64_t limit) {
    if (entries > limit) {
      r->values[0] = which;
      r->values[1] = entries;
      r->values[2] = limit;
      return nullptr;
    }
    end = std::max(end, static_cast<int64_t>(at) + entries);
    return staging + at;
  }
};

// A config no planner call can serve (the Python side builds it, so this guards the ABI, not users).
bool bad_config(const fib_plan_config& c, int64_t batch) {
  return batch < 0 || c.num_split_factors < 0 || c.num_split_factors > FIB_PLAN_MAX_FACTORS || c.num_kv_heads < 1 ||
         c.num_qo_heads % c.num_kv_heads || c.page_size < 1 || c.cta_tile_kv < 1;
}

// out[0, n) = in[0, n), then out[n, total) repeats the last value (graph-mode padding: empty requests).
void copy_padded(int32_t* out, const int32_t* in, int64_t n, int64_t total) {
  std::memcpy(out, in, n * sizeof(int32_t));
  std::fill(out + n, out + total, n ? in[n - 1] : 0);
}

void set_result(fib_plan_result* r, int64_t tokens, int64_t merge_entries, int64_t items, int64_t grid,
                int64_t merge_indptr_len, int64_t partial_rows, int64_t staged_words) {
  r->num_tokens = static_cast<int32_t>(tokens);
  r->num_merge_entries = static_cast<int32_t>(merge_entries);
  r->num_items = static_cast<int32_t>(items);
  r->grid = static_cast<int32_t>(grid);
  r->merge_indptr_len = static_cast<int32_t>(merge_indptr_len);
  r->num_partial_rows = static_cast<int32_t>(partial_rows);
  r->upload_bytes = staged_words * 4;
}

}  // namespace

extern "C" int fib_plan_decode(const fib_plan_config* config, const int32_t* kv_indptr,
                               const int32_t* kv_last_page_len, const int32_t* kv_indices, int64_t batch,
                               int64_t num_indices, int32_t* staging, fib_plan_result* result) {
  const fib_plan_config& c = *config;
  fib_plan_result* r = result;
  std::memset(r, 0, sizeof(*r));
  if (bad_config(c, batch)) return r->error = FIB_PLAN_BAD_CONFIG;
  thread_local Lengths len;
  len.windowed = false;
  if ((r->error = visible_keys(c, kv_indptr, kv_last_page_len, batch, num_indices, len, r))) return r->error;
  r->kv_used = kv_indptr[batch];
  // scheduler.plan from here on
  if (batch > c.cap_batch || batch > c.cap_tokens) {  // decode: one token per request
    bool over_batch = batch > c.cap_batch;
    r->values[0] = batch;
    r->values[1] = over_batch ? c.cap_batch : c.cap_tokens;
    return r->error = over_batch ? FIB_PLAN_BATCH_OVER : FIB_PLAN_TOKENS_OVER;
  }
  const int64_t group = c.num_qo_heads / c.num_kv_heads;
  const Model m{c, c.partial_bytes_per_key_byte * group / (2 * c.kv_bytes), c.num_kv_heads,
                static_cast<int64_t>(c.num_sms) * c.ctas_per_sm};
  int64_t keys = 0, longest = 0;
  for (int64_t i = 0; i < batch; ++i) {
    int64_t span = len.hi[i] - len.lo[i];
    keys += span;
    longest = std::max(longest, span);
  }
  const double unsplit = m.attention_time(keys, batch, 0, longest + c.item_overhead);
  Choice choice{0, unsplit};
  if (c.split_kv && longest &&
      m.spread(keys, batch, 0) + c.merge_launch < unsplit * (1.0 - c.min_gain)) {  // _Model.may_pay
    std::vector<int64_t> sizes = chunk_candidates(keys, longest, batch, m);
    auto counts = [&](int64_t size, int64_t* items, int64_t* split, int64_t* rows) {
      split_counts(len, size, sizes[0], items, split);
      *rows = *split;  // one query token per request: a partial row per split item
    };
    if (!sizes.empty()) choice = choose_chunk(sizes, counts, keys, longest, m, unsplit, r);
  }
  r->unsplit = unsplit;
  r->chosen = choice.chosen;
  r->chunk_size = static_cast<int32_t>(choice.chunk);

  // the items, counted first: the grid must fit before anything is written
  int64_t num_items = batch, num_rows = 0;
  if (choice.chunk) {
    int64_t split;
    split_counts(len, choice.chunk, choice.chunk, &num_items, &split);
    num_rows = split;
  }
  if (num_items > c.cap_work_items) {
    r->values[0] = num_items;
    r->values[1] = c.cap_work_items;
    return r->error = FIB_PLAN_ITEMS_OVER;
  }
  const int64_t grid = c.fixed_grid ? c.cap_work_items : num_items;
  const int64_t merge_len = (c.fixed_grid ? c.cap_tokens : batch) + 1;
  const int64_t rows = (c.fixed_grid ? c.cap_batch : batch) + 1;  // kv_indptr entries (padded in graph mode)
  Stager s{staging, 0, r};
  int32_t* work = s.slot(FIB_SLOT_WORK, c.at_work, grid * kFields, static_cast<int64_t>(c.cap_work_items) * kFields);
  int32_t* merge_indptr = work ? s.slot(FIB_SLOT_MERGE_INDPTR, c.at_merge_indptr, merge_len, c.cap_tokens + 1) : nullptr;
  int32_t* merge_indices = merge_indptr ? s.slot(FIB_SLOT_MERGE_INDICES, c.at_merge_indices, num_rows, c.cap_partial_rows) : nullptr;
  int32_t* indptr_out = merge_indices ? s.slot(FIB_SLOT_KV_INDPTR, c.at_kv_indptr, rows, c.cap_batch + 1) : nullptr;
  int32_t* last_out = indptr_out ? s.slot(FIB_SLOT_KV_LAST_PAGE_LEN, c.at_kv_last_page_len, rows - 1, c.cap_batch) : nullptr;
  int32_t* indices_out = nullptr;
  if (last_out && kv_indices) indices_out = s.slot(FIB_SLOT_KV_INDICES, c.at_kv_indices, num_indices, c.cap_pages);
  if (!last_out || (kv_indices && !indices_out)) return r->error = FIB_PLAN_SLOT_OVER;

  if (choice.chunk) {
    split_work(len, group, choice.chunk, work, merge_indptr);
    for (int64_t i = 0; i < num_rows; ++i) merge_indices[i] = static_cast<int32_t>(i);
  } else {
    bool sort = longest + c.item_overhead > m.spread(keys, batch, 0);
    unsplit_work(len, group, sort, work);
    std::fill(merge_indptr, merge_indptr + batch + 1, 0);
  }
  write_padding(work, num_items, grid);
  std::fill(merge_indptr + batch + 1, merge_indptr + merge_len, merge_indptr[batch]);
  copy_padded(indptr_out, kv_indptr, batch + 1, rows);
  copy_padded(last_out, kv_last_page_len, batch, rows - 1);
  if (indices_out) std::memcpy(indices_out, kv_indices, num_indices * sizeof(int32_t));
  set_result(r, batch, num_rows, num_items, grid, merge_len, num_rows, s.end);
  return FIB_PLAN_OK;
}

// ---- prefill: several query tokens per request (scheduler.plan with qo_lens) ----------------------------

namespace {

enum Mask { kNoMask = 0, kCausal = 1, kSlidingWindow = 2 };  // fib_plan_config.mask (custom masks: kNoMask)

// scheduler._Tiles with _visible's KV ranges: tile t covers packed rows [qo_begin, qo_end) of request req,
// its tokens [first, last] see keys [lo, hi).
struct Batch {
  std::vector<int64_t> qo, kv, tile_start, tile_count;  // per request
  std::vector<int64_t> req, qo_begin, qo_end, first, last, lo, hi;  // per tile
  bool one_per_request = false, one_token = false, windowed = false;
};

// _visible for tokens [first, last] of a request with q_len queries over kv keys
void visible(const fib_plan_config& c, int64_t q_len, int64_t kv, int64_t first, int64_t last, int64_t* lo,
             int64_t* hi) {
  if (c.mask == kNoMask) {
    *lo = 0;
    *hi = kv;
    return;
  }
  int64_t offset = kv - q_len;  // query token t sits at key position offset + t
  auto clip = [kv](int64_t x) { return std::min(std::max<int64_t>(x, 0), kv); };
  *lo = c.mask == kCausal ? 0 : clip(offset + first - c.window_left);
  *hi = std::max(*lo, clip(offset + last + 1));
}

// Engine.plan's checks (kv_indptr, kv_last_page_len, then qo_indptr) and the lengths; then the tiles.
int prefill_batch(const fib_plan_config& c, const int32_t* qo_indptr, const int32_t* kv_indptr, const int32_t* last,
                  int64_t batch, int64_t num_indices, Batch& b) {
  if (kv_indptr[0] != 0) return FIB_PLAN_INDPTR_START;
  b.qo.resize(batch);
  b.kv.resize(batch);
  bool bad_last = false;
  for (int64_t i = 0; i < batch; ++i) {
    int64_t n = static_cast<int64_t>(kv_indptr[i + 1]) - kv_indptr[i];
    if (n < 0) return FIB_PLAN_INDPTR_DECREASES;
    if (last && n > 0) {
      bad_last |= last[i] < 1 || last[i] > c.page_size;
      n = (n - 1) * c.page_size + last[i];
    }
    b.kv[i] = n;
  }
  if (last && batch && kv_indptr[batch] > num_indices) return FIB_PLAN_INDPTR_EXCEEDS;
  if (bad_last) return FIB_PLAN_LAST_PAGE_LEN;
  if (qo_indptr[0] != 0) return FIB_PLAN_QO_INDPTR;
  int64_t group = c.num_qo_heads / c.num_kv_heads, max_qo = 0;
  b.one_per_request = batch > 0;
  b.tile_start.resize(batch);
  b.tile_count.resize(batch);
  int64_t tiles = 0;
  for (int64_t i = 0; i < batch; ++i) {
    b.qo[i] = static_cast<int64_t>(qo_indptr[i + 1]) - qo_indptr[i];
    if (b.qo[i] < 0) return FIB_PLAN_QO_INDPTR;
    max_qo = std::max(max_qo, b.qo[i]);
    b.tile_start[i] = tiles;
    b.tile_count[i] = ceil_div(b.qo[i] * group, c.cta_tile_q);
    b.one_per_request &= b.tile_count[i] == 1;
    tiles += b.tile_count[i];
  }
  b.one_token = b.one_per_request && max_qo == 1;
  for (auto* v : {&b.req, &b.qo_begin, &b.qo_end, &b.first, &b.last, &b.lo, &b.hi}) v->resize(tiles);
  b.windowed = false;
  for (int64_t i = 0, t = 0; i < batch; ++i) {
    int64_t rows = b.qo[i] * group;
    for (int64_t j = 0; j < b.tile_count[i]; ++j, ++t) {
      b.req[t] = i;
      b.qo_begin[t] = j * c.cta_tile_q;
      b.qo_end[t] = std::min(b.qo_begin[t] + c.cta_tile_q, rows);
      b.first[t] = b.qo_begin[t] / group;
      b.last[t] = (b.qo_end[t] - 1) / group;
      visible(c, b.qo[i], b.kv[i], b.first[t], b.last[t], &b.lo[t], &b.hi[t]);
      b.windowed |= b.lo[t] > 0;
    }
  }
  return FIB_PLAN_OK;
}

// Chunks of tile t for chunks of `size` keys: from the first its keys touch (0 unless windowed), at least 1.
int64_t tile_chunks(const Batch& b, int64_t t, int64_t size, int64_t* first) {
  *first = b.windowed ? b.lo[t] / size : 0;
  return std::max<int64_t>(ceil_div(b.hi[t], size) - *first, 1);
}

// Per request: whether it splits, its first chunk and its chunk span (scheduler._split_counts, _split).
struct RequestChunks {
  bool split;
  int64_t first, span;
};

RequestChunks request_chunks(const Batch& b, int64_t r, int64_t size) {
  RequestChunks q{false, 0, 0};
  int64_t end = 0;
  for (int64_t t = b.tile_start[r]; t < b.tile_start[r] + b.tile_count[r]; ++t) {
    int64_t first, n = tile_chunks(b, t, size, &first);
    q.split |= n > 1;
    q.first = t == b.tile_start[r] ? first : std::min(q.first, first);
    end = std::max(end, first + n);
  }
  q.span = end - q.first;
  return q;
}

// scheduler._split_counts for tiles of any shape. In float64 like the Python planner (exact for these
// integers), which also spares the 64-bit integer divisions that dominated this loop.
void batch_counts(const Batch& b, int64_t size, int64_t* items, int64_t* split_items, int64_t* rows) {
  const double chunk = static_cast<double>(size);
  double all = 0.0, split = 0.0, split_rows = 0.0;
  for (int64_t r = 0; r < static_cast<int64_t>(b.qo.size()); ++r) {
    double n_r = 0.0, first_r = 0.0, end_r = 0.0;
    bool split_r = false;
    for (int64_t t = b.tile_start[r]; t < b.tile_start[r] + b.tile_count[r]; ++t) {
      double first = b.windowed ? floor_nonneg(b.lo[t] / chunk) : 0.0;
      double n = std::max(ceil_nonneg(b.hi[t] / chunk) - first, 1.0);
      n_r += n;
      split_r |= n > 1.0;
      first_r = t == b.tile_start[r] ? first : std::min(first_r, first);
      end_r = std::max(end_r, first + n);
    }
    all += n_r;
    if (split_r) {
      split += n_r;
      split_rows += (end_r - first_r) * b.qo[r];
    }
  }
  *items = static_cast<int64_t>(all);
  *split_items = static_cast<int64_t>(split);
  *rows = static_cast<int64_t>(split_rows);
}

// Items into `work` by decreasing KV range, stable (scheduler._in_dispatch_order / _unsplit_work).
void write_sorted(std::vector<int64_t>& items, bool sort, int32_t* work) {
  int64_t n = items.size() / kFields;
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (sort && n > 1) {
    auto key = [&](int64_t i) { return items[i * kFields + 3] - items[i * kFields + 4]; };
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key(a) < key(b); });
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int f = 0; f < kFields; ++f) work[i * kFields + f] = static_cast<int32_t>(items[order[i] * kFields + f]);
  }
}

// scheduler._split for tiles of any shape: the items (unsorted), merge_indptr over all tokens and the
// merge entries; returns the partial rows used.
int64_t batch_split(const fib_plan_config& c, const Batch& b, int64_t chunk, std::vector<int64_t>& items,
                    int32_t* merge_indptr, std::vector<int64_t>& entries) {
  int64_t batch = b.qo.size(), rows = 0;
  std::vector<RequestChunks> q(batch);
  std::vector<int64_t> base(batch);
  for (int64_t r = 0; r < batch; ++r) {
    q[r] = b.tile_count[r] ? request_chunks(b, r, chunk) : RequestChunks{false, 0, 0};
    base[r] = rows;
    if (q[r].split) rows += q[r].span * b.qo[r];
  }
  items.clear();
  for (int64_t t = 0; t < static_cast<int64_t>(b.req.size()); ++t) {
    int64_t r = b.req[t], first, n = tile_chunks(b, t, chunk, &first);
    for (int64_t k = 0; k < n; ++k) {
      int64_t ch = first + k;
      int64_t kv_begin = std::max(b.lo[t], ch * chunk);
      int64_t kv_end = std::max(kv_begin, std::min(b.hi[t], (ch + 1) * chunk));
      int64_t partial = q[r].split ? base[r] + (ch - q[r].first) * b.qo[r] + b.first[t] : -1;
      items.insert(items.end(), {r, b.qo_begin[t], b.qo_end[t], kv_begin, kv_end, partial});
    }
  }
  // every token of a split request lists the chunks its own visible keys fall into
  entries.clear();
  merge_indptr[0] = 0;
  int32_t* out = merge_indptr + 1;  // merge_indptr[token + 1]
  for (int64_t r = 0; r < batch; ++r) {
    const int64_t q_len = b.qo[r];
    if (!q[r].split) {  // its tokens list no partial rows
      out = std::fill_n(out, q_len, static_cast<int32_t>(entries.size()));
      continue;
    }
    for (int64_t tok = 0; tok < q_len; ++tok) {
      int64_t lo, hi;
      visible(c, q_len, b.kv[r], tok, tok, &lo, &hi);
      int64_t t_first = lo / chunk, count = std::max<int64_t>(ceil_div(hi, chunk) - t_first, 1);
      for (int64_t e = 0; e < count; ++e) entries.push_back(base[r] + (e + t_first - q[r].first) * q_len + tok);
      *out++ = static_cast<int32_t>(entries.size());
    }
  }
  return rows;
}

}  // namespace

extern "C" int fib_plan_prefill(const fib_plan_config* config, const int32_t* qo_indptr, const int32_t* kv_indptr,
                                const int32_t* kv_last_page_len, const int32_t* kv_indices, int64_t batch,
                                int64_t num_indices, int32_t* staging, fib_plan_result* result) {
  const fib_plan_config& c = *config;
  fib_plan_result* r = result;
  std::memset(r, 0, sizeof(*r));
  if (bad_config(c, batch) || c.cta_tile_q < 1) return r->error = FIB_PLAN_BAD_CONFIG;
  thread_local Batch b;
  if ((r->error = prefill_batch(c, qo_indptr, kv_indptr, kv_last_page_len, batch, num_indices, b))) return r->error;
  const int64_t num_tokens = qo_indptr[batch];
  r->kv_used = kv_indptr[batch];
  if (batch > c.cap_batch || num_tokens > c.cap_tokens) {
    bool over_batch = batch > c.cap_batch;
    r->values[0] = over_batch ? batch : num_tokens;
    r->values[1] = over_batch ? c.cap_batch : c.cap_tokens;
    return r->error = over_batch ? FIB_PLAN_BATCH_OVER : FIB_PLAN_TOKENS_OVER;
  }
  const int64_t group = c.num_qo_heads / c.num_kv_heads, tiles = b.req.size();
  const Model m{c, c.partial_bytes_per_key_byte * group / (2 * c.kv_bytes), c.num_kv_heads,
                static_cast<int64_t>(c.num_sms) * c.ctas_per_sm};
  int64_t keys = 0, longest = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    keys += b.hi[t] - b.lo[t];
    longest = std::max(longest, b.hi[t] - b.lo[t]);
  }
  const double unsplit = m.attention_time(keys, tiles, 0, longest + c.item_overhead);
  Choice choice{0, unsplit};
  if (c.split_kv && longest && m.spread(keys, tiles, 0) + c.merge_launch < unsplit * (1.0 - c.min_gain)) {
    std::vector<int64_t> sizes = chunk_candidates(keys, longest, tiles, m);
    auto counts = [&](int64_t size, int64_t* items, int64_t* split, int64_t* rows) {
      batch_counts(b, size, items, split, rows);
    };
    if (!sizes.empty()) choice = choose_chunk(sizes, counts, keys, longest, m, unsplit, r);
  }
  r->unsplit = unsplit;
  r->chosen = choice.chosen;
  r->chunk_size = static_cast<int32_t>(choice.chunk);

  // The one-token case is decode's (scheduler._split_single_tokens, the decode work template).
  thread_local Lengths len;
  if (b.one_token) {
    len.lo = b.lo;
    len.hi = b.hi;
    len.windowed = b.windowed;
  }
  thread_local std::vector<int64_t> items, entries;
  thread_local std::vector<int32_t> merge;
  merge.resize(num_tokens + 1);
  int64_t num_items = tiles, num_rows = 0;
  if (choice.chunk && b.one_token) {
    int64_t split;
    split_counts(len, choice.chunk, choice.chunk, &num_items, &split);
    num_rows = split;
  } else if (choice.chunk) {
    num_rows = batch_split(c, b, choice.chunk, items, merge.data(), entries);
    num_items = items.size() / kFields;
  }
  if (num_items > c.cap_work_items) {
    r->values[0] = num_items;
    r->values[1] = c.cap_work_items;
    return r->error = FIB_PLAN_ITEMS_OVER;
  }
  const int64_t num_entries = choice.chunk && !b.one_token ? static_cast<int64_t>(entries.size()) : num_rows;
  const int64_t grid = c.fixed_grid ? c.cap_work_items : num_items;
  const int64_t merge_len = (c.fixed_grid ? c.cap_tokens : num_tokens) + 1;
  const int64_t rows = (c.fixed_grid ? c.cap_batch : batch) + 1;
  Stager s{staging, 0, r};
  int32_t* work = s.slot(FIB_SLOT_WORK, c.at_work, grid * kFields, static_cast<int64_t>(c.cap_work_items) * kFields);
  int32_t* merge_indptr = work ? s.slot(FIB_SLOT_MERGE_INDPTR, c.at_merge_indptr, merge_len, c.cap_tokens + 1) : nullptr;
  int32_t* merge_indices =
      merge_indptr ? s.slot(FIB_SLOT_MERGE_INDICES, c.at_merge_indices, num_entries, c.cap_partial_rows) : nullptr;
  int32_t* indptr_out = merge_indices ? s.slot(FIB_SLOT_KV_INDPTR, c.at_kv_indptr, rows, c.cap_batch + 1) : nullptr;
  int32_t* last_out = indptr_out;
  if (indptr_out && kv_last_page_len) {
    last_out = s.slot(FIB_SLOT_KV_LAST_PAGE_LEN, c.at_kv_last_page_len, rows - 1, c.cap_batch);
  }
  int32_t* indices_out = last_out;
  if (last_out && kv_indices) indices_out = s.slot(FIB_SLOT_KV_INDICES, c.at_kv_indices, num_indices, c.cap_pages);
  int32_t* qo_out = indices_out ? s.slot(FIB_SLOT_QO_INDPTR, c.at_qo_indptr, rows, c.cap_batch + 1) : nullptr;
  if (!qo_out) return r->error = FIB_PLAN_SLOT_OVER;

  if (choice.chunk && b.one_token) {
    split_work(len, group, choice.chunk, work, merge_indptr);
    for (int64_t i = 0; i < num_rows; ++i) merge_indices[i] = static_cast<int32_t>(i);
  } else if (choice.chunk) {
    write_sorted(items, true, work);
    std::copy(merge.begin(), merge.begin() + num_tokens + 1, merge_indptr);
    for (int64_t i = 0; i < num_entries; ++i) merge_indices[i] = static_cast<int32_t>(entries[i]);
  } else {
    bool sort = longest + c.item_overhead > m.spread(keys, tiles, 0);
    if (b.one_token) {
      unsplit_work(len, group, sort, work);
    } else {
      items.clear();
      for (int64_t t = 0; t < tiles; ++t) items.insert(items.end(), {b.req[t], b.qo_begin[t], b.qo_end[t], b.lo[t], b.hi[t], -1});
      write_sorted(items, sort, work);
    }
    std::fill(merge_indptr, merge_indptr + num_tokens + 1, 0);
  }
  write_padding(work, num_items, grid);
  std::fill(merge_indptr + num_tokens + 1, merge_indptr + merge_len, merge_indptr[num_tokens]);
  copy_padded(indptr_out, kv_indptr, batch + 1, rows);
  if (kv_last_page_len) copy_padded(last_out, kv_last_page_len, batch, rows - 1);
  if (kv_indices) std::memcpy(indices_out, kv_indices, num_indices * sizeof(int32_t));
  copy_padded(qo_out, qo_indptr, batch + 1, rows);

  set_result(r, num_tokens, num_entries, num_items, grid, merge_len, num_rows, s.end);
  return FIB_PLAN_OK;
}

#ifdef FIB_PLAN_UPLOAD
#include <cuda_runtime_api.h>

namespace {

// Waits for the last upload from the staging buffer, plans (`plan` writes the staging buffer and the
// result), then copies the plan to the workspace on `stream` and records the event there: the plan and
// its one upload in one foreign call (torch's copy_ and event calls cost more than the plan itself on a
// serving host). Stream and event are the caller's (torch's): driver handles, valid in this statically
// linked runtime too, as the kernels' launches on torch's stream are.
template <typename Plan>
int plan_and_upload(Plan plan, const int32_t* staging, fib_plan_result* result, void* workspace, void* stream,
                    void* uploaded) {
  auto event = static_cast<cudaEvent_t>(uploaded);
  cudaError_t err = cudaEventSynchronize(event);  // the last upload may still read the staging buffer
  if (err == cudaSuccess) {
    if (plan()) return result->error;
    auto s = static_cast<cudaStream_t>(stream);
    err = cudaMemcpyAsync(workspace, staging, result->upload_bytes, cudaMemcpyHostToDevice, s);
    if (err == cudaSuccess) err = cudaEventRecord(event, s);
  }
  if (err != cudaSuccess) {
    std::memset(result, 0, sizeof(*result));
    result->values[0] = err;
    return result->error = FIB_PLAN_CUDA;
  }
  return FIB_PLAN_OK;
}

}  // namespace

extern "C" int fib_plan_decode_upload(const fib_plan_config* config, const int32_t* kv_indptr,
                                      const int32_t* kv_last_page_len, const int32_t* kv_indices, int64_t batch,
                                      int64_t num_indices, int32_t* staging, fib_plan_result* result, void* workspace,
                                      void* stream, void* uploaded) {
  auto plan = [&] {
    return fib_plan_decode(config, kv_indptr, kv_last_page_len, kv_indices, batch, num_indices, staging, result);
  };
  return plan_and_upload(plan, staging, result, workspace, stream, uploaded);
}

extern "C" int fib_plan_prefill_upload(const fib_plan_config* config, const int32_t* qo_indptr,
                                       const int32_t* kv_indptr, const int32_t* kv_last_page_len,
                                       const int32_t* kv_indices, int64_t batch, int64_t num_indices, int32_t* staging,
                                       fib_plan_result* result, void* workspace, void* stream, void* uploaded) {
  auto plan = [&] {
    return fib_plan_prefill(config, qo_indptr, kv_indptr, kv_last_page_len, kv_indices, batch, num_indices, staging,
                            result);
  };
  return plan_and_upload(plan, staging, result, workspace, stream, uploaded);
}
#endif  // FIB_PLAN_UPLOAD
