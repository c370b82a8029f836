"""The split-KV planner (kernels/scheduler.py): cost model, chunk choice, coverage, workspace, graph mode."""

import math

import numpy as np
import pytest
from flashinfer_build.kernels import emulate, scheduler
from flashinfer_build.kernels.scheduler import Capacity, CostModel, KernelShape
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

H100 = KernelShape(num_sms=132, ctas_per_sm=2, cta_tile_q=16, cta_tile_kv=16)
# Splits pay even for short requests under this model, so property tests exercise split plans often.
CHEAP_SPLITS = CostModel(item_overhead=1.0, merge_launch=0.0, min_gain=0.0)
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode(kv, **kwargs):
    kwargs = {"num_qo_heads": 32, "num_kv_heads": 8, "page_size": 16, "kernel": H100, **kwargs}
    return scheduler.plan(None, kv, **kwargs)


def _check(p, qo, kv, num_qo_heads=32, num_kv_heads=8, kernel=H100, **kwargs):
    emulate.check_plan(
        p,
        qo,
        kv,
        num_qo_heads=num_qo_heads,
        num_kv_heads=num_kv_heads,
        cta_tile_q=kernel.cta_tile_q,
        **kwargs,
    )


kernels = st.builds(
    KernelShape,
    num_sms=st.integers(1, 160),
    ctas_per_sm=st.integers(1, 4),
    cta_tile_q=st.sampled_from([1, 4, 16, 64, 128]),
    cta_tile_kv=st.sampled_from([16, 32, 64]),
)
heads = st.sampled_from([(32, 8), (32, 32), (32, 1), (8, 2), (6, 3), (1, 1)])


@SLOW
@given(
    kv=st.lists(st.integers(0, 100_000), min_size=1, max_size=512),
    kernel=kernels,
    heads=heads,
    page_size=st.sampled_from([1, 16, 48, 64]),
    cheap=st.booleans(),
    window=st.one_of(st.none(), st.integers(0, 5000)),
)
def test_decode_plan_covers_every_key_once(kv, kernel, heads, page_size, cheap, window):
    mask, window_left = ("none", -1) if window is None else ("sliding_window", window)
    hq, hkv = heads
    p = scheduler.plan(
        None,
        kv,
        num_qo_heads=hq,
        num_kv_heads=hkv,
        page_size=page_size,
        kernel=kernel,
        mask=mask,
        window_left=window_left,
        cost=CHEAP_SPLITS if cheap else scheduler.DEFAULT_COST,
    )
    _check(p, None, kv, hq, hkv, kernel, mask=mask, window_left=window_left)
    event(f"split: {p.split}")
    if p.split:
        assert p.chunk_size % np.lcm(page_size, kernel.cta_tile_kv) == 0


@st.composite
def prefill_batches(draw):
    batch = draw(st.integers(1, 12))
    qo = draw(st.lists(st.integers(0, 200), min_size=batch, max_size=batch))
    extra = draw(st.lists(st.integers(0, 100_000), min_size=batch, max_size=batch))
    shorter = draw(st.booleans())  # a few queries without keys (q_len > kv_len) under causal masks
    kv = [max(0, q + e - 300) if shorter else q + e for q, e in zip(qo, extra, strict=True)]
    return qo, kv


@SLOW
@given(
    batch=prefill_batches(),
    kernel=kernels,
    heads=heads,
    mask=st.sampled_from(["none", "causal", "sliding_window", "custom"]),
    window_left=st.integers(0, 3000),
)
def test_prefill_plan_covers_every_key_once(batch, kernel, heads, mask, window_left):
    qo, kv = batch
    hq, hkv = heads
    p = scheduler.plan(
        qo,
        kv,
        num_qo_heads=hq,
        num_kv_heads=hkv,
        page_size=1,
        kernel=kernel,
        mask=mask,
        window_left=window_left,
        cost=CHEAP_SPLITS,
    )
    _check(p, qo, kv, hq, hkv, kernel, mask=mask, window_left=window_left)
    event(f"split: {p.split}")


def test_check_plan_catches_a_gap_and_an_overlap():
    kv = [32768] + [512] * 63
    p = _decode(kv)
    assert p.split
    first_chunk = int(np.nonzero((p.work[:, 0] == 0) & (p.work[:, 3] == 0))[0][0])
    gap = p.work.copy()
    gap[first_chunk, 4] -= 1
    with pytest.raises(emulate.PlanError, match="not covered exactly once"):
        _check(scheduler.Plan(**{**p.__dict__, "work": gap}), None, kv)
    twice = p.work.copy()
    twice[first_chunk, 5] = twice[first_chunk + 1, 5]
    with pytest.raises(emulate.PlanError, match="another item writes too"):
        _check(scheduler.Plan(**{**p.__dict__, "work": twice}), None, kv)


def test_skewed_decode_splits_the_long_request_to_the_average():
    kv = [32768] + [512] * 63
    p = _decode(kv)
    long_items = p.work[p.work[:, 0] == 0]
    assert p.split and long_items.shape[0] > 1
    # The longest item is near the average work per CTA slot, not the 32k request.
    per_slot = 8 * sum(kv) / H100.slots
    assert (p.work[:, 4] - p.work[:, 3]).max() <= 1.2 * per_slot
    assert p.estimate.unsplit / p.estimate.chosen >= 2
    assert (p.work[p.work[:, 0] > 0, 5] == -1).all(), "short requests are not split"
    assert p.merge_indptr[1] - p.merge_indptr[0] == long_items.shape[0]


def test_uniform_full_batches_are_not_split():
    for batch, kv_len in [(64, 8192), (256, 1024), (256, 32768), (128, 512)]:
        p = _decode([kv_len] * batch)
        assert not p.split, (batch, kv_len, p.estimate)
        assert p.num_partial_rows == 0 and p.merge_indices.shape[0] == 0


def test_single_long_request_fills_the_gpu():
    p = _decode([32768])
    assert p.split
    items_per_wave = H100.slots // 8
    assert p.num_items >= items_per_wave // 2
    assert p.num_partial_rows == p.num_items


def test_split_kv_off_never_splits():
    p = _decode([32768] + [512] * 63, split_kv=False)
    assert not p.split and p.num_items == 64


def test_min_gain_keeps_marginal_splits_off():
    kv = [4096] * 33  # one item per slot already: splitting saves nothing once the merge is paid
    assert not _decode(kv).split
    eager = CostModel(min_gain=-10.0)  # any candidate wins
    assert _decode([4096] * 8, cost=eager).split


def _waves(keys, items, split_items, longest_item, slots, c, partial_write):
    """The module docstring's attention estimate, written out independently (one KV head)."""
    average = (keys + c.item_overhead * items + partial_write * split_items) / items
    full, rest = divmod(items, slots)
    time = full * average
    if rest:
        fill = c.wave_fill * slots
        share = (1 - math.exp(-rest / fill)) / (1 - math.exp(-slots / fill))
        time += average / min(c.solo_speedup, share * slots / rest)
    return max(time, longest_item / c.solo_speedup)


def test_cost_model_formula():
    cost = CostModel(item_overhead=10.0, solo_speedup=2.0, wave_fill=0.5, merge_launch=100.0)
    kernel = KernelShape(num_sms=4, ctas_per_sm=1, cta_tile_q=16, cta_tile_kv=16)
    kv = [1000, 100]
    p = scheduler.plan(None, kv, num_qo_heads=1, num_kv_heads=1, page_size=1, kernel=kernel, cost=cost)
    partial = 4.0 * 1 / (2 * 2)  # float32 partial row of one head vs a 2-byte key
    # Two CTAs on four slots: the 1000-key CTA alone, at twice its full-occupancy speed, sets the time.
    assert p.estimate.unsplit == pytest.approx(_waves(1100, 2, 0, 1010, 4, cost, 0)) == pytest.approx(505)
    assert p.estimate.candidates
    for size, time in p.estimate.candidates:
        counts = [-(-n // size) for n in kv]
        items, split_items = sum(counts), sum(c for c in counts if c > 1)
        attention = _waves(1100, items, split_items, min(size, 1000) + 10 + partial, 4, cost, partial)
        assert time == pytest.approx(attention + 100 + partial * split_items / 4)
    assert p.split and p.estimate.chosen == min(t for _, t in p.estimate.candidates)


def test_partial_waves_and_full_waves():
    cost = CostModel(item_overhead=0.0, solo_speedup=3.0, wave_fill=0.4)
    kernel = KernelShape(num_sms=100, ctas_per_sm=1, cta_tile_q=16, cta_tile_kv=16)
    full = scheduler.plan(
        None,
        [1000] * 200,
        num_qo_heads=1,
        num_kv_heads=1,
        page_size=1,
        kernel=kernel,
        cost=cost,
        split_kv=False,
    )
    assert full.estimate.unsplit == pytest.approx(2000)  # two full waves at the full-occupancy speed
    few = scheduler.plan(
        None,
        [1000] * 10,
        num_qo_heads=1,
        num_kv_heads=1,
        page_size=1,
        kernel=kernel,
        cost=cost,
        split_kv=False,
    )
    assert 1000 / 3 <= few.estimate.unsplit < 1000  # a sparse wave runs faster per CTA, up to 3x


def test_items_are_in_dispatch_order():
    # Unsplit, where the longest item sets the time: longest first.
    p = _decode([700] * 10 + [100_000] + [2000] * 10, split_kv=False)
    lengths = p.work[: p.num_items, 4] - p.work[: p.num_items, 3]
    assert (np.diff(lengths) <= 0).all()
    # Split decode: the split requests' chunks before the unsplit requests, none longer than a chunk.
    rng = np.random.default_rng(0)
    p = _decode(rng.integers(0, 30_000, 40), cost=CHEAP_SPLITS)
    real = p.work[: p.num_items]
    whole = np.flatnonzero(real[:, 5] < 0)
    assert p.split and whole.shape[0] and whole.min() == p.num_partial_rows
    assert (real[whole, 4] - real[whole, 3] <= p.chunk_size).all()


def test_causal_chunks_skip_keys_no_query_sees():
    qo, kv = [64], [20_000]
    kernel = KernelShape(num_sms=132, ctas_per_sm=1, cta_tile_q=64, cta_tile_kv=64)
    p = scheduler.plan(qo, kv, num_qo_heads=4, num_kv_heads=1, page_size=16, kernel=kernel, mask="causal")
    assert p.split
    first_tile = p.work[p.work[:, 1] == 0]
    assert first_tile[:, 4].max() <= 20_000 - 64 + 16  # the first 16 tokens see at most these keys


def test_fixed_grid_keeps_shapes_and_pads():
    cap = scheduler.capacity(max_batch=64, max_tokens=64, group=4, cta_tile_q=16, num_sms=132, decode=True)
    shapes = set()
    for kv in ([32768] + [512] * 63, [100] * 3, [0], [70_000] * 64):
        p = _decode(kv, capacity=cap, fixed_grid=True)
        _check(p, None, kv)
        shapes.add((p.work.shape, p.merge_indptr.shape))
        assert (p.work[p.num_items :] == scheduler.PADDING_ITEM).all()
        assert p.num_partial_rows <= cap.partial_rows
    assert shapes == {((cap.work_items, 6), (cap.tokens + 1,))}


def test_batch_over_capacity_is_a_clear_error():
    cap = scheduler.capacity(max_batch=8, max_tokens=8, group=4, cta_tile_q=16, num_sms=132, decode=True)
    with pytest.raises(ValueError, match="batch size 9 exceeds the wrapper's max batch size 8"):
        _decode([10] * 9, capacity=cap)
    tight = Capacity(batch=8, tokens=8, work_items=4, partial_rows=0)
    with pytest.raises(ValueError, match="needs 8 work items but the workspace holds 4"):
        _decode([10] * 8, capacity=tight)


def test_capacity_limits_splitting_instead_of_failing():
    no_rows = Capacity(batch=64, tokens=64, work_items=1000, partial_rows=0)
    p = _decode([32768] + [512] * 63, capacity=no_rows)
    assert not p.split


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kv_lens": [1, -1]}, "must be >= 0"),
        ({"num_qo_heads": 30}, "positive multiple of num_kv_heads"),
        ({"page_size": 0}, "page_size must be >= 1"),
        ({"mask": "diagonal"}, "mask must be one of"),
        ({"mask": "sliding_window"}, "needs window_left >= 0"),
        ({"qo_lens": [1, 2, 3]}, "qo_lens has 3 requests but kv_lens has 2"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    args = {
        "qo_lens": None,
        "kv_lens": [5, 6],
        "num_qo_heads": 32,
        "num_kv_heads": 8,
        "page_size": 16,
        "kernel": H100,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        scheduler.plan(args.pop("qo_lens"), args.pop("kv_lens"), **args)


def test_kernel_shape_rejects_zero():
    with pytest.raises(ValueError, match="ctas_per_sm must be >= 1"):
        KernelShape(num_sms=132, ctas_per_sm=0, cta_tile_q=16)


def test_kv_lengths_from_paged_indptr():
    indptr = np.array([0, 0, 3, 4])
    last = np.array([0, 5, 16])
    assert scheduler.kv_lengths(indptr, last, 16).tolist() == [0, 37, 16]


def test_workspace_layout_is_aligned_and_disjoint():
    cap = Capacity(batch=7, tokens=13, work_items=29, partial_rows=11, pages=5)
    lay = scheduler.layout(cap, num_qo_heads=6, head_dim=64)
    names = [
        "work",
        "merge_indptr",
        "merge_indices",
        "qo_indptr",
        "kv_indptr",
        "kv_last_page_len",
        "kv_indices",
        "partial_o",
        "partial_lse",
    ]
    offsets = [getattr(lay, n) for n in names] + [lay.total_bytes]
    assert all(o % scheduler.ALIGN_BYTES == 0 for o in offsets)
    assert offsets == sorted(offsets)
    assert lay.partial_lse - lay.partial_o >= 11 * 6 * 64 * 4
    assert lay.total_bytes - lay.partial_lse >= 11 * 6 * 4
    assert lay.metadata_bytes == lay.partial_o


def test_workspace_size_grows_with_bounds():
    small = scheduler.workspace_size(32, 8, 128, max_batch_size=16)
    large = scheduler.workspace_size(32, 8, 128, max_batch_size=256)
    paged = scheduler.workspace_size(32, 8, 128, max_batch_size=256, max_num_pages=10_000)
    assert small < large < paged
    assert paged - large >= 40_000


def test_pack_metadata_writes_the_plan_and_rejects_overflow():
    kv = [32768] + [512] * 63
    cap = scheduler.capacity(max_batch=64, max_tokens=64, group=4, cta_tile_q=16, num_sms=132, decode=True)
    p = _decode(kv, capacity=cap)
    lay = scheduler.layout(cap, 32, 128)
    host = np.full(lay.metadata_bytes // 4, -7, np.int32)
    indptr = np.arange(65, dtype=np.int32) * 3
    end = scheduler.pack_metadata(p, lay, host, {"kv_indptr": indptr})
    at = lay.work // 4
    assert (host[at : at + p.work.size] == p.work.reshape(-1)).all()
    at = lay.merge_indices // 4
    assert (host[at : at + p.merge_indices.size] == p.merge_indices).all()
    assert (host[lay.kv_indptr // 4 : lay.kv_indptr // 4 + 65] == indptr).all()
    assert end == lay.kv_indptr + 65 * 4
    with pytest.raises(ValueError, match="kv_indices needs 10 entries but the workspace holds 0"):
        scheduler.pack_metadata(p, lay, host, {"kv_indices": np.zeros(10, np.int32)})
