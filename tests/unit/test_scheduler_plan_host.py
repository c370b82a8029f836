"""The host side of the wrappers' plan on the CPU: the one-pass paged-length check, the cached decode
arrays, and the whole BatchDecodeWrapper.plan through the device seams (benchmarks/plan_time.py)."""

import numpy as np
import pytest
import torch
from flashinfer_build.kernels import native_plan, scheduler, wrapper_engine, wrappers
from flashinfer_build.kernels.checks import InvalidArgument
from hypothesis import given, settings
from hypothesis import strategies as st

SHAPE = scheduler.KernelShape(num_sms=132, ctas_per_sm=2, cta_tile_q=4, cta_tile_kv=64)


def slow_lengths(indptr, last, page_size):
    pages = np.diff(indptr.astype(np.int64))
    return np.where(pages > 0, (pages - 1) * page_size + last, 0)


@settings(max_examples=200, deadline=None)
@given(
    pages=st.lists(st.integers(0, 40), min_size=0, max_size=64),
    page_size=st.integers(1, 32),
    seed=st.integers(0, 2**32 - 1),
    empty_last=st.sampled_from([0, 1, None]),
)
def test_paged_lengths_match_the_definition(pages, page_size, seed, empty_last):
    rng = np.random.default_rng(seed)
    indptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
    last = rng.integers(1, page_size + 1, len(pages)).astype(np.int32)
    if empty_last is not None:  # callers put anything (0, page_size + 1, ...) for requests without pages
        last[np.array(pages, dtype=np.int64) == 0] = 0 if empty_last == 0 else page_size + 1
    got = wrapper_engine.paged_lengths(indptr, last, page_size, int(indptr[-1]))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, slow_lengths(indptr, last, page_size))


@pytest.mark.parametrize(
    "indptr, last, total, message",
    [
        ([1, 2], [1], 4, "start at 0"),
        ([0, 3, 1], [1, 1], 4, "non-decreasing"),
        ([0, 2, 5], [1, 1], 4, "exceeds the 4 entries"),
        ([0, 2, 3], [1, 0], 4, "kv_last_page_len must lie in"),
        ([0, 2, 3], [17, 1], 4, "kv_last_page_len must lie in"),
    ],
)
def test_paged_lengths_reject_bad_arrays(indptr, last, total, message):
    with pytest.raises(InvalidArgument, match=message):
        wrapper_engine.paged_lengths(np.array(indptr, np.int32), np.array(last, np.int32), 16, total)


def test_cached_decode_arrays_are_read_only():
    p = scheduler.plan(None, [100] * 8, num_qo_heads=8, num_kv_heads=2, page_size=16, kernel=SHAPE)
    assert not p.split
    with pytest.raises(ValueError):
        p.merge_indptr[0] = 1
    p.work[0, 4] = 1  # the work list is the plan's own
    again = scheduler.plan(None, [100] * 8, num_qo_heads=8, num_kv_heads=2, page_size=16, kernel=SHAPE)
    assert again.work[0, 4] == 100


def aligned_workspace(size):
    raw = torch.zeros(size + scheduler.ALIGN_BYTES, dtype=torch.uint8)
    skip = -raw.data_ptr() % scheduler.ALIGN_BYTES
    return raw[skip : skip + size]


class HostStaging(wrapper_engine.Staging):
    pinned = False

    def reserve(self, nbytes):
        if self.host.numel() * 4 < nbytes:
            self._allocate(nbytes // 4)
        return self.array

    def upload(self, workspace, nbytes):
        workspace[:nbytes].copy_(self.bytes[:nbytes])


@pytest.fixture(params=["python", "C"])
def host_seams(request, monkeypatch):
    """The wrappers on the CPU (benchmarks/plan_time.py's seams), planning in Python or in C."""
    planner = request.getfixturevalue("host_planner") if request.param == "C" else None
    monkeypatch.setattr(wrapper_engine, "check_workspace", lambda workspace: None)
    monkeypatch.setattr(wrapper_engine, "kernel_shape", lambda variant, index: SHAPE)
    monkeypatch.setattr(wrapper_engine, "native_planner", lambda variant, index: planner)
    monkeypatch.setattr(wrapper_engine, "Staging", HostStaging)
    return request.param


def test_wrapper_plan_on_host_seams_packs_the_scheduler_plan(host_seams):
    rng = np.random.default_rng()
    kv_lens = [int(rng.integers(20000, 40000))] + rng.integers(0, 600, 31).tolist()
    pages = [-(-n // 16) for n in kv_lens]
    indptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
    last = np.array([n - (p - 1) * 16 if p else 0 for n, p in zip(kv_lens, pages, strict=True)], np.int32)
    indices = rng.permutation(int(indptr[-1])).astype(np.int32)
    size = wrappers.workspace_size(32, 8, 128, max_batch_size=32, max_num_pages=indices.shape[0])
    raw = torch.zeros(size + scheduler.ALIGN_BYTES, dtype=torch.uint8)
    skip = -raw.data_ptr() % scheduler.ALIGN_BYTES
    ws = raw[skip : skip + size]
    w = wrappers.BatchDecodeWrapper(ws)
    for kv_indices in (torch.from_numpy(indices), indices):  # on the workspace's device, on the host
        ws.zero_()
        w.plan(torch.from_numpy(indptr), kv_indices, torch.from_numpy(last), 32, 8, 128, 16)
        assert isinstance(w._engine.plan_, native_plan.NativePlan) == (host_seams == "C")
        lay, p = w._engine.layout, w.plan_info
        expect = scheduler.plan(
            None, kv_lens, num_qo_heads=32, num_kv_heads=8, page_size=16, kernel=SHAPE, capacity=lay.capacity
        )
        assert p.split and p.chunk_size == expect.chunk_size
        words = ws.view(torch.int32).numpy()
        np.testing.assert_array_equal(words[lay.work // 4 :][: expect.work.size], expect.work.reshape(-1))
        np.testing.assert_array_equal(words[lay.kv_indptr // 4 :][:33], indptr)
        np.testing.assert_array_equal(words[lay.kv_last_page_len // 4 :][:32], last)
        n = expect.merge_indptr.shape[0]
        np.testing.assert_array_equal(words[lay.merge_indptr // 4 :][:n], expect.merge_indptr)
        host_copy = words[lay.kv_indices // 4 :][: indices.shape[0]]
        assert (host_copy == indices).all() == isinstance(kv_indices, np.ndarray)
        np.testing.assert_array_equal(p.work, expect.work)
        assert p.estimate == expect.estimate


def test_wrapper_plan_errors_are_the_same_on_both_paths(host_seams):
    def plan(wrapper, indptr, indices, last, **kw):  # 32 / 8 heads, head dim 128, page size 16
        return wrapper.plan(indptr, indices, last, 32, 8, 128, 16, **kw)

    ws = aligned_workspace(1 << 24)
    w = wrappers.BatchDecodeWrapper(ws, use_cuda_graph=True, max_batch_size=4, max_num_pages=8)
    last = torch.ones(5, dtype=torch.int32)
    with pytest.raises(ValueError, match="batch size 5 exceeds the wrapper's max batch size 4"):
        plan(w, torch.arange(6, dtype=torch.int32), torch.arange(5, dtype=torch.int32), last)
    with pytest.raises(InvalidArgument, match="9 kv_indices exceed the wrapper's max_num_pages 8"):
        plan(w, torch.arange(5, dtype=torch.int32), torch.arange(9, dtype=torch.int32), last[:4])
    with pytest.raises(InvalidArgument, match="kv_indptr must be non-decreasing"):
        plan(w, torch.tensor([0, 2, 1], dtype=torch.int32), torch.arange(5, dtype=torch.int32), last[:2])
    with pytest.raises(InvalidArgument, match=r"kv_last_page_len must lie in \[1, page_size = 16\]"):
        plan(w, torch.tensor([0, 2, 3], dtype=torch.int32), torch.arange(5, dtype=torch.int32), last[:2] * 17)
    # two problems at once: the index arrays' is reported first, as the Python path always did
    small = wrappers.BatchDecodeWrapper(aligned_workspace(1 << 20))
    with pytest.raises(InvalidArgument, match="kv_last_page_len must lie in"):
        plan(small, torch.arange(5, dtype=torch.int32), torch.arange(5, dtype=torch.int32), last[:4] * 0)
    with pytest.raises(InvalidArgument, match="kv_indptr must be non-decreasing"):
        plan(w, torch.tensor([0, 2, 1], dtype=torch.int32), torch.arange(9, dtype=torch.int32), last[:2])
    with pytest.raises(InvalidArgument, match="kv_indptr must be non-decreasing"):
        plan(w, torch.tensor([0, 2, 1], dtype=torch.int32), torch.arange(5), last[:2], window_left=5)
    small = wrappers.BatchDecodeWrapper(aligned_workspace(256))
    with pytest.raises(InvalidArgument, match="workspace holds 256 bytes but this batch needs"):
        plan(small, torch.arange(5, dtype=torch.int32), torch.arange(9, dtype=torch.int32), last[:4])


def test_graph_wrapper_plans_pad_to_the_bounds(host_seams):
    ws = aligned_workspace(1 << 24)
    w = wrappers.BatchDecodeWrapper(ws, use_cuda_graph=True, max_batch_size=8, max_num_pages=64)
    kv_lens = [40, 0, 300]
    pages = [-(-n // 16) for n in kv_lens]
    indptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
    last = np.array([n - (p - 1) * 16 if p else 0 for n, p in zip(kv_lens, pages, strict=True)], np.int32)
    w.plan(
        torch.from_numpy(indptr),
        torch.arange(indptr[-1], dtype=torch.int32),
        torch.from_numpy(last),
        32,
        8,
        128,
        16,
    )
    lay, p = w._engine.layout, w.plan_info
    expect = scheduler.plan(
        None,
        kv_lens,
        num_qo_heads=32,
        num_kv_heads=8,
        page_size=16,
        kernel=SHAPE,
        capacity=lay.capacity,
        fixed_grid=True,
    )
    words = ws.view(torch.int32).numpy()
    np.testing.assert_array_equal(p.work, expect.work)
    np.testing.assert_array_equal(words[lay.work // 4 :][: expect.work.size], expect.work.reshape(-1))
    np.testing.assert_array_equal(words[lay.kv_indptr // 4 :][:9], np.concatenate([indptr, [indptr[-1]] * 5]))
    np.testing.assert_array_equal(
        words[lay.kv_last_page_len // 4 :][:8], np.concatenate([last, [last[-1]] * 5])
    )
    np.testing.assert_array_equal(words[lay.merge_indptr // 4 :][:9], expect.merge_indptr)


@pytest.mark.parametrize("paged", [True, False])
def test_prefill_wrapper_plan_on_host_seams_packs_the_scheduler_plan(host_seams, paged):
    rng = np.random.default_rng()
    qo = [int(rng.integers(0, 4)) for _ in range(12)] + [7]  # short appends and one over long KV: split
    kv = [q + int(rng.integers(0, 500)) for q in qo[:-1]] + [30_000]
    qo_ptr = np.concatenate([[0], np.cumsum(qo)]).astype(np.int32)
    if paged:
        pages = [-(-n // 16) for n in kv]
        kv_ptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
        last = np.array([n - (p - 1) * 16 if p else 0 for n, p in zip(kv, pages, strict=True)], np.int32)
        extra = dict(
            kv_indices=torch.arange(int(kv_ptr[-1]), dtype=torch.int32),
            kv_last_page_len=torch.from_numpy(last),
        )
    else:
        kv_ptr, extra = np.concatenate([[0], np.cumsum(kv)]).astype(np.int32), {}
    ws = aligned_workspace(1 << 26)
    w = wrappers.BatchPrefillWrapper(ws, paged=paged)
    for mask in ("causal", "none"):
        ws.zero_()
        w.plan(
            torch.from_numpy(qo_ptr), torch.from_numpy(kv_ptr), 32, 8, 128, mask=mask, page_size=16, **extra
        )
        assert isinstance(w._engine.plan_, native_plan.NativePlan) == (host_seams == "C")
        lay, p = w._engine.layout, w.plan_info
        expect = scheduler.plan(
            qo, kv, num_qo_heads=32, num_kv_heads=8, page_size=16 if paged else 1, kernel=SHAPE, mask=mask,
            capacity=lay.capacity, cost=scheduler.PREFILL_COST,
        )  # fmt: skip
        assert p.split and p.chunk_size == expect.chunk_size and p.estimate == expect.estimate
        words = ws.view(torch.int32).numpy()
        np.testing.assert_array_equal(words[lay.work // 4 :][: expect.work.size], expect.work.reshape(-1))
        n = expect.merge_indptr.shape[0]
        np.testing.assert_array_equal(words[lay.merge_indptr // 4 :][:n], expect.merge_indptr)
        n = expect.merge_indices.shape[0]
        np.testing.assert_array_equal(words[lay.merge_indices // 4 :][:n], expect.merge_indices)
        np.testing.assert_array_equal(words[lay.qo_indptr // 4 :][:14], qo_ptr)
        np.testing.assert_array_equal(words[lay.kv_indptr // 4 :][:14], kv_ptr)
    with pytest.raises(InvalidArgument, match="qo_indptr must be non-decreasing"):
        bad = qo_ptr.copy()
        bad[3] = bad[4] + 1
        w.plan(torch.from_numpy(bad), torch.from_numpy(kv_ptr), 32, 8, 128, page_size=16, **extra)
