"""The split-KV scheduler: `plan` turns per-request query and KV lengths into a work list and a merge index.

Runs on the host once per batch (all layers share the result). Pure functions of plain ints and numpy
arrays: no torch, no device, so CI tests it on the CPU (tests/unit/test_scheduler*.py, and
kernels/emulate.py executes plans there).

Work items follow kernels/csrc/api.h: the attention grid is (work items, num_kv_heads); item i covers
packed query rows [qo_begin, qo_end) of one request (row = token * group + head_in_group, at most
cta_tile_q rows) against keys [kv_begin, kv_end). An item of a request that is not split writes the
output directly (partial_row = -1). A split request has one partial-state block per KV chunk, each
q_len rows long (token t of chunk c at row base + c * q_len + t), and the merge kernel combines, for
every token, the chunks its visible keys fall into.

Cost model (the unit is a "key step": the time one CTA takes to stream one key of its KV head, or one
key against one query tile in prefill, while every CTA slot of the GPU is busy):
  item cost   = keys + item_overhead (+ partial_write when it writes a float32 partial state)
  attention   = the CTAs (items x num_kv_heads) run in waves of `slots` = num_sms * ctas_per_sm: each
                full wave takes the average CTA cost; a last, partial wave of r CTAs reaches a fraction
                f(r) = (1 - exp(-r / k)) / (1 - exp(-slots / k)), k = wave_fill * slots, of the full
                bandwidth, so it takes average * (r / slots) / f(r), each CTA at most solo_speedup times
                faster than at full occupancy; and never less than the longest CTA at that speed
  merge       = merge_launch + partial_write * num_kv_heads * merged rows / slots (when anything splits)
Items go out longest first (or, for split decode, the split requests' chunks first), so the in-order
block dispatch schedules the long ones early. Chunk candidates cut the longest tile into about as many
pieces as it takes to match the average work per CTA slot (times a few factors), in whole pages and KV
tiles; a split is taken only when it beats the unsplit estimate by more than `min_gain`. The constants
were fitted to a sweep of forced chunk sizes on an H100 (docs/PERFORMANCE.md, benchmarks/scheduler.py):
the wave quantization and the per-CTA overhead, not the continuous average, decide the best chunk.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .abi import WORK_ITEM_FIELDS

MASKS = ("none", "causal", "custom", "sliding_window")
PADDING_ITEM = (-1, 0, 0, 0, 0, -1)
ALIGN_BYTES = 256


@dataclass(frozen=True)
class CostModel:
    """Constants of the cost model in key steps (see the module docstring)."""

    item_overhead: float = 192.0  # a CTA's prologue (query tile, pipeline fill), combine and output store
    solo_speedup: float = 1.8  # a CTA that shares the GPU with few others streams keys at most this faster
    wave_fill: float = 0.4  # how fast a partial wave's CTAs fill the bandwidth, as a fraction of slots
    merge_launch: float = 96.0  # one more kernel launch and its ramp, ~4 us at ~45 ns per key step
    partial_bytes_per_key_byte: float = 4.0  # float32 partial rows vs the KV element they are measured in
    min_gain: float = 0.1  # split only when the estimate improves by more than this fraction
    split_factors: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)  # x pieces for the average


DEFAULT_COST = CostModel()
# Prefill CTAs compute a whole query tile against each key, so their fixed cost (query tile load,
# epilogue) is small next to their per-key work: an estimate, not fitted like the decode constants.
PREFILL_COST = CostModel(item_overhead=48.0)


@dataclass(frozen=True)
class KernelShape:
    """What the planner needs to know about the device and the compiled kernel (ops.kernel_info)."""

    num_sms: int
    ctas_per_sm: int
    cta_tile_q: int
    cta_tile_kv: int = 16

    def __post_init__(self) -> None:
        for name in ("num_sms", "ctas_per_sm", "cta_tile_q", "cta_tile_kv"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def slots(self) -> int:
        return self.num_sms * self.ctas_per_sm


@dataclass(frozen=True)
class Capacity:
    """Sizes of the workspace buffers: what any plan written into the workspace must fit.

    In CUDA-graph mode they also fix the grid (work_items) and the merge rows (tokens)."""

    batch: int
    tokens: int
    work_items: int
    partial_rows: int
    pages: int = 0  # room for a copy of kv_indices (graph mode, or indices given on the host)


def partial_rows_budget(num_sms: int, decode: bool) -> int:
    """Partial-state rows the planner may use. Decode splits need one row per split item and a few waves
    of items are all that balancing needs; prefill splits pay only for few, short query tiles."""
    return (4 if decode else 16) * num_sms


def capacity(
    *,
    max_batch: int,
    max_tokens: int,
    group: int,
    cta_tile_q: int,
    num_sms: int,
    decode: bool,
    max_pages: int = 0,
) -> Capacity:
    """The capacity a configuration needs: every plan for a batch within these bounds fits it."""
    if max_batch < 1 or max_tokens < 1:
        raise ValueError(f"max batch ({max_batch}) and max tokens ({max_tokens}) must be >= 1")
    rows = _ceil_div(max_tokens * group, cta_tile_q) + max_batch  # each request wastes at most one tile
    partial_rows = partial_rows_budget(num_sms, decode)
    return Capacity(max_batch, max_tokens, rows + partial_rows, partial_rows, max_pages)


@dataclass(frozen=True)
class Estimate:
    unsplit: float
    chosen: float
    candidates: tuple[tuple[int, float], ...]  # (chunk size, estimated time) of each feasible candidate


@dataclass(frozen=True)
class Plan:
    """A batch's work list (int32 [grid, 6], api.h fib_work_item rows) and merge index.

    work holds the real items first (longest first), then padding items (request -1) up to the grid."""

    work: np.ndarray
    num_items: int
    merge_indptr: np.ndarray  # int32 [merge rows + 1], over output tokens
    merge_indices: np.ndarray  # int32 [entries], partial-state rows
    num_partial_rows: int
    chunk_size: int  # keys per KV chunk; 0 when nothing is split
    num_tokens: int
    estimate: Estimate

    @property
    def split(self) -> bool:
        return self.chunk_size > 0


def kv_lengths(kv_indptr: np.ndarray, kv_last_page_len: np.ndarray, page_size: int) -> np.ndarray:
    """Tokens per request of a paged cache: full pages plus the last page's fill (0 for no pages)."""
    pages = np.diff(kv_indptr.astype(np.int64))
    return np.where(pages > 0, (pages - 1) * page_size + kv_last_page_len.astype(np.int64), 0)


def plan(
    qo_lens,
    kv_lens,
    *,
    num_qo_heads: int,
    num_kv_heads: int,
    page_size: int,
    kernel: KernelShape,
    mask: str = "none",
    window_left: int = -1,
    split_kv: bool = True,
    kv_bytes: int = 2,
    capacity: Capacity | None = None,
    fixed_grid: bool = False,
    all_partial: bool = False,
    cost: CostModel = DEFAULT_COST,
    force_chunk: int = 0,
) -> Plan:
    """Plan one batch. qo_lens (None for decode: one query per request) and kv_lens: int sequences.

    capacity bounds the plan: a split that would not fit is not taken, a batch that does not fit even
    unsplit raises ValueError. fixed_grid pads the work list to capacity.work_items and the merge index
    to capacity.tokens rows, as a captured CUDA graph needs. kv_bytes (bytes per KV element) weighs
    float32 partial states against KV reads in the cost model. all_partial sends every request's
    output to partial states and the merge index, split or not (cascade levels merge them later).
    force_chunk > 0 takes that chunk size instead of the cost model's choice (benchmarks calibrate the
    model with it)."""
    kv = np.asarray(kv_lens, dtype=np.int64).reshape(-1)
    qo = _constant(kv.shape[0], 1) if qo_lens is None else np.asarray(qo_lens, dtype=np.int64).reshape(-1)
    _check_problem(qo, kv, num_qo_heads, num_kv_heads, page_size, mask, window_left)
    num_tokens = kv.shape[0] if qo_lens is None else int(qo.sum())
    if capacity is not None:
        _check_within(capacity, kv.shape[0], num_tokens)
    elif fixed_grid:
        raise ValueError("a fixed grid needs the capacity that fixes it")
    group = num_qo_heads // num_kv_heads
    tiles = _tiles(qo, group, kernel.cta_tile_q, decode=qo_lens is None)
    lo, hi = _visible(tiles, tiles.first_token, tiles.last_token, qo, kv, mask, window_left)
    model = _Model(cost, num_kv_heads, kernel.slots, cost.partial_bytes_per_key_byte * group / (2 * kv_bytes))

    span = hi if lo is _constant(lo.shape[0], 0) else hi - lo
    keys, longest = (int(span.sum()), int(span.max())) if span.shape[0] else (0, 0)
    unsplit = model.unsplit_time(keys, longest, span.shape[0])
    chunk, chosen, candidates = 0, unsplit, ()
    if split_kv and longest and model.may_pay(unsplit, keys, span.shape[0]):
        if capacity is None:
            limits = (partial_rows_budget(kernel.num_sms, qo_lens is None), None)
        else:
            limits = (capacity.partial_rows, capacity.work_items)
        granule = math.lcm(page_size, kernel.cta_tile_kv)
        sizes = _chunk_candidates(keys, longest, span.shape[0], model, granule)
        if sizes:
            chunk, chosen, candidates = _choose_chunk(
                np.array(sizes), tiles, lo, hi, qo, keys, longest, model, unsplit, *limits
            )

    if force_chunk > 0 and longest > force_chunk:
        chunk = force_chunk
    if all_partial and not chunk:
        chunk = max(longest, 1)  # one chunk per tile
    if chunk:
        items, merge_indptr, merge_indices, num_rows = _split(
            tiles, lo, hi, qo, kv, chunk, mask, window_left, all_partial
        )
        # Single-token plans come out in dispatch order already (see _split_single_tokens).
        sort = not tiles.one_token_per_request
    else:
        items = None  # one item per tile, written straight into the work list (_unsplit_work)
        merge_indptr, merge_indices, num_rows = _constant(num_tokens + 1, 0, np.int32), _EMPTY, 0
        # Longest first matters only where the longest item, not the spread work, sets the time.
        sort = longest + cost.item_overhead > model.spread(keys, span.shape[0], 0)
    num_items = span.shape[0] if items is None else items.shape[0]
    grid = num_items
    if capacity is not None and grid > capacity.work_items:
        raise items_over_capacity(grid, capacity.work_items)
    if fixed_grid:
        grid = capacity.work_items
        merge_indptr = np.concatenate([merge_indptr, np.full(capacity.tokens - num_tokens, merge_indptr[-1])])
    if items is None:
        work = _unsplit_work(tiles, lo, hi, grid, sort)
    else:
        work = _in_dispatch_order(items, grid, sort)
    return Plan(
        work=work,
        num_items=num_items,
        merge_indptr=merge_indptr.astype(np.int32, copy=False),
        merge_indices=merge_indices.astype(np.int32, copy=False),
        num_partial_rows=num_rows,
        chunk_size=chunk,
        num_tokens=num_tokens,
        estimate=Estimate(unsplit, chosen, candidates),
    )


@dataclass(frozen=True)
class _Tiles:
    """Query tiles of a batch: tile i covers packed rows [qo_begin, qo_end) of request req[i]."""

    req: np.ndarray
    qo_begin: np.ndarray
    qo_end: np.ndarray
    first_token: np.ndarray  # tokens [first_token, last_token] of the request own the tile's rows
    last_token: np.ndarray
    one_per_request: bool  # every request has exactly one tile: tile i is request i
    one_token_per_request: bool  # and one query token (decode)
    nonempty: np.ndarray  # requests with at least one tile
    nonempty_starts: np.ndarray  # index of their first tile
    owner: np.ndarray  # index into nonempty of each tile's request


def _tiles(qo: np.ndarray, group: int, tq: int, decode: bool) -> _Tiles:
    batch = qo.shape[0]
    if decode and group <= tq:
        return _decode_tiles(batch, group)
    rows = qo * group
    counts = -(-rows // tq)
    if batch and counts.min() == 1 and counts.max() == 1:
        req = np.arange(batch, dtype=np.int64)
        zeros = np.zeros(batch, np.int64)
        return _Tiles(req, zeros, rows, zeros, qo - 1, True, bool(qo.max() == 1), req, req, req)
    starts = np.cumsum(counts) - counts
    req = np.repeat(np.arange(batch, dtype=np.int64), counts)
    qo_begin = (np.arange(req.shape[0], dtype=np.int64) - starts[req]) * tq
    qo_end = np.minimum(qo_begin + tq, rows[req])
    nonempty = np.nonzero(counts)[0]
    owner = np.repeat(np.arange(nonempty.shape[0]), counts[nonempty])
    first, last = qo_begin // group, (qo_end - 1) // group
    return _Tiles(req, qo_begin, qo_end, first, last, False, False, nonempty, starts[nonempty], owner)


@functools.lru_cache(maxsize=64)
def _decode_tiles(batch: int, group: int) -> _Tiles:
    """One tile per request of one token: the same for every decode batch of this size (cached)."""
    req = _readonly(np.arange(batch, dtype=np.int64))
    zeros = _constant(batch, 0)
    return _Tiles(req, zeros, _constant(batch, group), zeros, zeros, True, True, req, req, req)


@functools.lru_cache(maxsize=64)
def _decode_work_template(batch: int, group: int, grid: int) -> np.ndarray:
    """The work list of an unsplit decode batch with every KV range empty: request i, rows [0, group),
    partial row -1, then padding items. Plans copy it and fill in the KV ranges."""
    work = _in_dispatch_order(np.zeros((batch, WORK_ITEM_FIELDS), np.int64), grid, False)
    work[:batch, 0], work[:batch, 2], work[:batch, 5] = np.arange(batch), group, -1
    return _readonly(work)


def _unsplit_work(tiles: _Tiles, lo: np.ndarray, hi: np.ndarray, grid: int, sort: bool) -> np.ndarray:
    """The int32 [grid, 6] work list of one item per tile (by decreasing KV range when `sort`), then
    padding items; decode batches start from a cached template and write only the changing columns."""
    n = lo.shape[0]
    order = np.argsort(lo - hi, kind="stable") if sort and n > 1 else None
    windowed = lo is not _constant(n, 0)
    if tiles.one_token_per_request:
        work = _decode_work_template(n, int(tiles.qo_end[0]) if n else 0, grid).copy()
        if order is not None:
            work[:n, 0] = order
        work[:n, 4] = hi if order is None else hi[order]
        if windowed:
            work[:n, 3] = lo if order is None else lo[order]
        return work
    work = np.empty((grid, WORK_ITEM_FIELDS), np.int32)
    for column, values in enumerate((tiles.req, tiles.qo_begin, tiles.qo_end, lo, hi)):
        work[:n, column] = values if order is None else values[order]
    work[:n, 5] = -1
    work[n:] = PADDING_ITEM
    return work


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=256)
def _constant(n: int, value: int, dtype=np.int64) -> np.ndarray:
    """A cached read-only array of n equal values (lengths, offsets and empty merge indexes that every
    decode batch of a size shares)."""
    return _readonly(np.full(n, value, dtype))


_EMPTY = _readonly(np.zeros(0, np.int32))


def _visible(tiles_or_req, first_token, last_token, qo, kv, mask, window_left):
    """Keys [lo, hi) that query tokens [first_token, last_token] of their requests may see (api.h's
    kv_range): the loop bounds of a tile, or, with first == last, those of one token."""
    if isinstance(tiles_or_req, _Tiles):
        kv_r = kv if tiles_or_req.one_per_request else kv[tiles_or_req.req]
        qo_r = qo if tiles_or_req.one_per_request else qo[tiles_or_req.req]
    else:
        kv_r, qo_r = kv[tiles_or_req], qo[tiles_or_req]
    if mask in ("none", "custom"):
        return _constant(kv_r.shape[0], 0), kv_r
    offset = kv_r - qo_r  # query token t sits at key position offset + t
    hi = np.clip(offset + last_token + 1, 0, kv_r)
    lo = np.zeros_like(kv_r) if mask == "causal" else np.clip(offset + first_token - window_left, 0, kv_r)
    return lo, np.maximum(lo, hi)


@dataclass  # not frozen: a frozen dataclass's __init__ costs ~2 us, and one is made per plan
class _Model:
    """The cost model of the module docstring, for one problem shape."""

    cost: CostModel
    num_kv_heads: int
    slots: int
    partial_write: float  # extra key steps of an item that writes a float32 partial state (and its merge)

    def spread(self, keys, items, split_items):
        """Time of the work spread evenly over all CTA slots (no wave quantization)."""
        work = keys + self.cost.item_overhead * items + self.partial_write * split_items
        return self.num_kv_heads * work / self.slots

    def attention_time(self, keys: int, items: int, split_items: int, longest_item: float) -> float:
        """Waves of CTAs: full waves at the average CTA cost, then the partial wave (module docstring)."""
        if not items:
            return 0.0
        c = self.cost
        average = (keys + c.item_overhead * items + self.partial_write * split_items) / items
        full, rest = divmod(items * self.num_kv_heads, self.slots)
        time = full * average
        if rest:
            fill = c.wave_fill * self.slots
            share = (1.0 - math.exp(-rest / fill)) / (1.0 - math.exp(-self.slots / fill))
            time += average / min(c.solo_speedup, share * self.slots / rest)
        return max(time, longest_item / c.solo_speedup)

    def unsplit_time(self, keys: int, longest: int, tiles: int) -> float:
        return self.attention_time(keys, tiles, 0, longest + self.cost.item_overhead)

    def may_pay(self, unsplit: float, keys: int, tiles: int) -> bool:
        """Whether any split could beat `unsplit` by min_gain: no plan beats the keys spread evenly
        over all slots plus a merge launch."""
        return self.spread(keys, tiles, 0) + self.cost.merge_launch < unsplit * (1.0 - self.cost.min_gain)


def _chunk_candidates(keys: int, longest: int, tiles: int, model: _Model, granule: int) -> list[int]:
    """Chunk sizes worth evaluating: the longest tile cut into about as many equal pieces as it takes
    to match the average work per CTA slot (times split_factors), in whole granules, shorter than the
    longest tile (else nothing would split). Equal pieces keep every wave full."""
    pieces = longest / max(model.spread(keys, tiles, 0), 1.0)
    sizes = set()
    for f in model.cost.split_factors:
        k = max(2, round(pieces * f))
        piece = -(-longest // k)
        sizes.add(-(-piece // granule) * granule)
    return sorted(s for s in sizes if s < longest)


def _choose_chunk(sizes, tiles, lo, hi, qo, keys, longest, model, unsplit, max_rows, max_items):
    """Evaluate the cost model for all candidate sizes (ascending): the best one that fits the capacity
    and beats the unsplit plan by min_gain, else 0 (no split)."""
    items, split_items, rows = _split_counts(sizes, tiles, lo, hi, qo)
    c = model.cost
    per_slot = model.num_kv_heads / model.slots
    candidates = []
    for size, n, n_split, n_rows in zip(
        sizes.tolist(), items.tolist(), split_items.tolist(), rows.tolist(), strict=True
    ):
        if n_rows > max_rows or (max_items is not None and n > max_items):
            continue
        longest_item = min(size, longest) + c.item_overhead + model.partial_write
        attention = model.attention_time(keys, int(n), int(n_split), longest_item)
        merge = c.merge_launch + model.partial_write * per_slot * n_rows
        candidates.append((size, attention + merge))
    if not candidates:
        return 0, unsplit, ()
    best_size, best_time = min(candidates, key=lambda sc: sc[1])
    if best_time >= unsplit * (1.0 - c.min_gain):
        return 0, unsplit, tuple(candidates)
    return best_size, best_time, tuple(candidates)


def _split_counts(sizes, tiles, lo, hi, qo):
    """Work items, split items and partial rows of the plan for each chunk size (rows of 2-D arrays).
    Float64 arithmetic: exact for these integers and several times faster than numpy's integer division."""
    L = sizes[:, None].astype(np.float64)
    windowed = lo is not _constant(lo.shape[0], 0) and bool(lo.any())
    if tiles.one_token_per_request and not windowed:
        # Decode: only requests longer than the smallest chunk can split; the others are one item each.
        long = hi[hi > sizes[0]]
        chunks = np.ceil(long / L)  # (candidates, long requests), each >= 1
        long_chunks = chunks.sum(axis=1)
        split_items = long_chunks - (chunks == 1.0).sum(axis=1)
        return long_chunks + (hi.shape[0] - long.shape[0]), split_items, split_items
    chunks = np.ceil(hi.astype(np.float64) / L)  # (candidates, tiles)
    first = np.floor(lo / L) if windowed else 0.0
    if windowed:
        chunks -= first
    np.maximum(chunks, 1.0, out=chunks)
    items = chunks.sum(axis=1)
    # A request is split when any of its tiles is; its partial block spans its tiles' chunks x q_len rows.
    if tiles.one_token_per_request:
        split_items = items - (chunks == 1.0).sum(axis=1)
        return items, split_items, split_items
    if tiles.one_per_request:
        split_chunks = chunks * (chunks > 1)
        return items, split_chunks.sum(axis=1), (split_chunks * qo[None, :]).sum(axis=1)
    starts = tiles.nonempty_starts
    first = first + np.zeros_like(chunks)
    req_split = np.maximum.reduceat(chunks, starts, axis=1) > 1
    req_first = np.minimum.reduceat(first, starts, axis=1)
    req_chunks = np.maximum.reduceat(first + chunks, starts, axis=1) - req_first
    rows = (req_split * req_chunks * qo[tiles.nonempty][None, :]).sum(axis=1)
    return items, (req_split[:, tiles.owner] * chunks).sum(axis=1), rows


def _split(tiles, lo, hi, qo, kv, chunk, mask, window_left, all_partial):
    """Work items and merge index for KV chunks of `chunk` keys (layout: the module docstring).
    all_partial: every request writes partial states, split or not."""
    if tiles.one_token_per_request:
        return _split_single_tokens(lo, hi, tiles.qo_end, chunk, all_partial)
    first = lo // chunk
    chunks = np.maximum(-(-hi // chunk) - first, 1)
    if tiles.one_per_request:
        req_split, req_first, req_chunks = (chunks > 1) | all_partial, first, chunks
    else:
        batch, starts, nonempty = qo.shape[0], tiles.nonempty_starts, tiles.nonempty
        req_split, req_first, req_chunks = np.zeros(batch, bool), np.zeros(batch, np.int64), np.zeros_like(qo)
        req_split[nonempty] = (np.maximum.reduceat(chunks, starts) > 1) | all_partial
        req_first[nonempty] = np.minimum.reduceat(first, starts)
        req_chunks[nonempty] = np.maximum.reduceat(first + chunks, starts) - req_first[nonempty]
    block_rows = req_split * req_chunks * qo
    base = np.cumsum(block_rows) - block_rows

    tile = np.repeat(np.arange(chunks.shape[0]), chunks)
    c = np.arange(tile.shape[0]) - np.repeat(np.cumsum(chunks) - chunks, chunks) + first[tile]
    req = tiles.req[tile]
    kv_begin = np.maximum(lo[tile], c * chunk)
    kv_end = np.maximum(kv_begin, np.minimum(hi[tile], (c + 1) * chunk))
    partial = base[req] + (c - req_first[req]) * qo[req] + tiles.first_token[tile]
    partial = np.where(req_split[req], partial, -1)
    items = np.stack([req, tiles.qo_begin[tile], tiles.qo_end[tile], kv_begin, kv_end, partial], axis=1)

    # Merge index: every token of a split request lists the chunks its own visible keys fall into.
    split_req = np.nonzero(req_split)[0]
    q_split = qo[split_req]
    tok_req = np.repeat(split_req, q_split)
    token = np.arange(tok_req.shape[0]) - np.repeat(np.cumsum(q_split) - q_split, q_split)
    t_lo, t_hi = _visible(tok_req, token, token, qo, kv, mask, window_left)
    t_first = t_lo // chunk
    t_count = np.maximum(-(-t_hi // chunk) - t_first, 1)
    entry_tok = np.repeat(np.arange(token.shape[0]), t_count)
    entry_chunk = np.arange(entry_tok.shape[0]) - np.repeat(np.cumsum(t_count) - t_count, t_count)
    r = tok_req[entry_tok]
    merge_indices = base[r] + (entry_chunk + t_first[entry_tok] - req_first[r]) * qo[r] + token[entry_tok]
    per_token = np.zeros(int(qo.sum()), np.int64)
    per_token[(np.cumsum(qo) - qo)[tok_req] + token] = t_count
    merge_indptr = np.concatenate([[0], np.cumsum(per_token)])
    return items, merge_indptr, merge_indices, int(block_rows.sum())


def _split_single_tokens(lo, hi, rows, chunk, all_partial):
    """_split for one query token per request (decode), where request = tile = token, in few numpy calls
    (decode plans run for every generated token). Returns the items already in dispatch order: the
    split requests' chunks first (their full chunks are the longest items of the plan), then one item
    per unsplit request (none longer than a chunk), each request's partial rows consecutive."""
    batch = hi.shape[0]
    windowed = lo is not _constant(batch, 0) and bool(lo.any())
    if windowed or all_partial:
        chunks = np.maximum((hi + (chunk - 1)) // chunk - lo // chunk, 1)
        unsplit = chunks == 1
        split = np.arange(batch) if all_partial else (~unsplit).nonzero()[0]
        counts = chunks[split]
    else:
        # Without a window a request splits exactly when it is longer than a chunk: count only those.
        unsplit = hi <= chunk
        split = (~unsplit).nonzero()[0]
        counts = (hi[split] + (chunk - 1)) // chunk
    # Array methods, not the np.* functions: those add a Python dispatch layer per call.
    ends = counts.cumsum()
    num_rows = int(ends[-1]) if ends.shape[0] else 0
    whole = _whole_request_items(lo, hi, int(rows[0]) if batch else 0)
    items = np.empty((num_rows + batch - split.shape[0], WORK_ITEM_FIELDS), np.int32)
    if not all_partial:
        whole.compress(unsplit, axis=0, out=items[num_rows:])  # compress: 2x faster than a mask
    # Each split request's chunks start as copies of its whole item, then get their own KV range.
    head = items[:num_rows]
    head[:] = whole[split].repeat(counts, axis=0)
    partial = np.arange(num_rows)
    c = partial - (ends - counts).repeat(counts)  # chunk of the request, from its first visible one
    begin = (c + head[:, 3] // chunk) * chunk if windowed else c * chunk
    head[:, 3] = np.maximum(head[:, 3], begin) if windowed else begin
    head[:, 4] = np.minimum(head[:, 4], begin + chunk)
    head[:, 5] = partial
    merge_indptr = np.zeros(batch + 1, np.int64)
    merge_indptr[split + 1] = counts
    return items, merge_indptr.cumsum(out=merge_indptr), partial, num_rows


def _whole_request_items(lo, hi, group):
    """int32 [batch, 6]: one item per single-token request over its whole KV range, partial row -1."""
    items = _decode_work_template(lo.shape[0], group, lo.shape[0]).copy()
    if lo is not _constant(lo.shape[0], 0):  # the template's KV ranges start at 0
        items[:, 3] = lo
    items[:, 4] = hi
    return items


def _in_dispatch_order(items: np.ndarray, grid: int, sort: bool) -> np.ndarray:
    """int32 [grid, 6]: the items (by decreasing KV range when `sort`: the in-order block dispatch
    then schedules longest first), then padding items."""
    n = items.shape[0]
    if not sort and n == grid and items.dtype == np.int32:
        return items  # already the whole work list (single-token splits): no copy
    work = np.empty((grid, WORK_ITEM_FIELDS), np.int32)
    work[:n] = items[np.argsort(items[:, 3] - items[:, 4], kind="stable")] if sort and n > 1 else items
    work[n:] = PADDING_ITEM
    return work


def _check_problem(qo, kv, num_qo_heads, num_kv_heads, page_size, mask, window_left):
    if qo.shape != kv.shape:
        raise ValueError(f"qo_lens has {qo.shape[0]} requests but kv_lens has {kv.shape[0]}")
    if kv.shape[0] and (kv.min() < 0 or (qo is not _constant(qo.shape[0], 1) and qo.min() < 0)):
        raise ValueError("query and KV lengths must be >= 0 (indptr arrays must be non-decreasing)")
    if num_kv_heads < 1 or num_qo_heads < 1 or num_qo_heads % num_kv_heads:
        raise ValueError(
            f"num_qo_heads {num_qo_heads} must be a positive multiple of num_kv_heads {num_kv_heads}"
        )
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
    if mask == "sliding_window" and window_left < 0:
        raise ValueError(f"mask 'sliding_window' needs window_left >= 0, got {window_left}")


def _check_within(cap: Capacity, batch: int, num_tokens: int) -> None:
    if batch > cap.batch:
        raise batch_over_capacity(batch, cap.batch)
    if num_tokens > cap.tokens:
        raise tokens_over_capacity(num_tokens, cap.tokens)


# The errors of a plan that does not fit its capacity (kernels/native_plan.py raises them too).
def batch_over_capacity(batch: int, limit: int) -> ValueError:
    return ValueError(f"batch size {batch} exceeds the wrapper's max batch size {limit}")


def tokens_over_capacity(num_tokens: int, limit: int) -> ValueError:
    return ValueError(f"{num_tokens} query tokens exceed the wrapper's max number of tokens {limit}")


def items_over_capacity(items: int, limit: int) -> ValueError:
    return ValueError(
        f"the batch needs {items} work items but the workspace holds {limit}: "
        "raise the bounds the workspace was sized for (workspace_size)"
    )


def slot_overflow(name: str, entries: int, limit: int) -> ValueError:
    return ValueError(
        f"{name} needs {entries} entries but the workspace holds {limit}: "
        "size the workspace with workspace_size() for these bounds"
    )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _ceil_div(a, b) * b


# ---- workspace layout ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceLayout:
    """Byte offsets of the buffers in a workspace. The int32 metadata (work list, merge index, copies
    of the index arrays) comes first and is uploaded with one copy; the float32 partial states follow."""

    capacity: Capacity
    num_qo_heads: int
    head_dim: int
    work: int
    merge_indptr: int
    merge_indices: int
    qo_indptr: int
    kv_indptr: int
    kv_last_page_len: int
    kv_indices: int
    metadata_bytes: int
    partial_o: int
    partial_lse: int
    total_bytes: int


def layout(cap: Capacity, num_qo_heads: int, head_dim: int) -> WorkspaceLayout:
    sizes = {
        "work": cap.work_items * WORK_ITEM_FIELDS * 4,
        "merge_indptr": (cap.tokens + 1) * 4,
        "merge_indices": cap.partial_rows * 4,
        "qo_indptr": (cap.batch + 1) * 4,
        "kv_indptr": (cap.batch + 1) * 4,
        "kv_last_page_len": cap.batch * 4,
        "kv_indices": cap.pages * 4,
    }
    offsets, at = {}, 0
    for name, size in sizes.items():
        offsets[name] = at
        at += _round_up(size, ALIGN_BYTES)
    metadata_bytes = at
    offsets["partial_o"] = at
    at += _round_up(cap.partial_rows * num_qo_heads * head_dim * 4, ALIGN_BYTES)
    offsets["partial_lse"] = at
    at += _round_up(cap.partial_rows * num_qo_heads * 4, ALIGN_BYTES)
    return WorkspaceLayout(
        cap, num_qo_heads, head_dim, metadata_bytes=metadata_bytes, total_bytes=at, **offsets
    )


def workspace_size(
    num_qo_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    max_batch_size: int,
    max_num_tokens: int | None = None,
    max_num_pages: int = 0,
    num_sms: int = 132,
    cta_tile_q: int = 1,
    decode: bool = True,
) -> int:
    """Bytes of workspace a configuration needs. max_num_tokens defaults to max_batch_size (decode);
    max_num_pages is room for a copy of kv_indices (CUDA-graph wrappers, or kv_indices given on the
    host). cta_tile_q = 1 is the safe bound for any kernel; the wrappers pass the kernel's own."""
    tokens = max_batch_size if max_num_tokens is None else max_num_tokens
    cap = capacity(
        max_batch=max_batch_size,
        max_tokens=tokens,
        group=num_qo_heads // num_kv_heads,
        cta_tile_q=cta_tile_q,
        num_sms=num_sms,
        decode=decode,
        max_pages=max_num_pages,
    )
    return layout(cap, num_qo_heads, head_dim).total_bytes


def pack_metadata(plan_: Plan, lay: WorkspaceLayout, host: np.ndarray, indptrs: dict[str, np.ndarray]) -> int:
    """Write a plan (and the index arrays named in indptrs, e.g. {"kv_indptr": ...}) into `host`, an
    int32 view of the pinned staging buffer laid out like the workspace. Returns the bytes to upload
    (everything up to the end of the last buffer written)."""
    slots = _metadata_slots(lay)
    plan_arrays = (
        ("work", plan_.work.reshape(-1)),
        ("merge_indptr", plan_.merge_indptr),
        ("merge_indices", plan_.merge_indices),
    )
    end = 0
    for name, values in (*plan_arrays, *indptrs.items()):
        start, limit = slots[name]
        if values.shape[0] > limit:
            raise slot_overflow(name, values.shape[0], limit)
        host[start : start + values.shape[0]] = values
        end = max(end, start + values.shape[0])
    return end * 4


@functools.lru_cache(maxsize=64)
def _metadata_slots(lay: WorkspaceLayout) -> dict[str, tuple[int, int]]:
    """(first int32 entry, capacity in entries) of each metadata buffer: the same for every plan of a
    layout, so cached."""
    cap = lay.capacity
    limits = {
        "work": cap.work_items * WORK_ITEM_FIELDS,
        "merge_indptr": cap.tokens + 1,
        "merge_indices": cap.partial_rows,
        "qo_indptr": cap.batch + 1,
        "kv_indptr": cap.batch + 1,
        "kv_last_page_len": cap.batch,
        "kv_indices": cap.pages,
    }
    return {name: (getattr(lay, name) // 4, limit) for name, limit in limits.items()}
