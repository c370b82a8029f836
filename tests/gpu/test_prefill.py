"""Prefill kernels of the built packs against the float32 reference (kernels/reference.py).

One test id per built prefill variant. Ragged and paged KV (shuffled page tables, page sizes 1, 5, 7
and 16, NHD and HND), GQA ratios 1 to 8, requests with 0 and 1 tokens, q_len == kv_len and
q_len < kv_len, lengths that are not multiples of the tile or page size; fresh random inputs on each
run; outputs poisoned before the launch (kernels/accuracy.py holds the accuracy rule). A split work
list (each tile's keys in two halves, written as float32 partial rows) is checked through the merge.
"""

from __future__ import annotations

import math

import pytest
import torch
from flashinfer_build.kernels import accuracy, loader, reference
from flashinfer_build.variants import Variant, hooks, parse_id

pytestmark = pytest.mark.gpu

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SOFT_CAP = 5.0
WINDOW_LEFT = 37
KEEP_PROBABILITY = 0.6  # custom masks


def _built_prefill_ids() -> list[str]:
    try:
        packs = loader.discover_packs()
    except loader.PackError:
        return []
    return sorted({i for p in packs for i in p.variants if i.startswith("prefill_")})


VARIANT_IDS = _built_prefill_ids() or [
    pytest.param(
        "none", marks=pytest.mark.skip(reason="no kernel pack with prefill variants (FLASHINFER_BUILD_PACK)")
    )
]

# (q_lens, kv_lens, num_qo_heads, num_kv_heads, page_size (0: ragged), kv_layout)
CASES = {
    "ragged_gqa4_empty_and_single": ([1, 77, 300, 0, 128], [1, 200, 300, 5, 387], 8, 2, 0, "NHD"),
    "ragged_mha_long": ([1500], [1500], 4, 4, 0, "NHD"),
    "paged16_nhd_mha": ([13, 1, 250], [13, 1000, 517], 4, 4, 16, "NHD"),
    "paged1_hnd_gqa8": ([70, 3], [70, 129], 8, 1, 1, "HND"),
    "paged5_nhd_gqa2": ([33, 64, 2], [100, 64, 7], 4, 2, 5, "NHD"),
    "paged16_hnd_gqa3": ([45, 9], [300, 9], 6, 2, 16, "HND"),
}
SPLIT_CASES = {
    "ragged_gqa4": ([1, 77, 300, 128], [1, 200, 300, 387], 8, 2, 0, "NHD"),
    "paged7_nhd_gqa2": ([40, 5], [95, 33], 4, 2, 7, "NHD"),
}


@pytest.fixture(scope="module")
def ops():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from flashinfer_build.kernels import ops

    return ops


@pytest.fixture
def variant(request, ops):
    v = parse_id(request.param)
    with loader.pinned_arch(v.arch):
        try:
            loader.find_kernel(v, torch.cuda.get_device_capability())
        except loader.PackError as e:
            pytest.skip(f"{v.id} cannot run on this GPU: {e}")
    return v


def _indptr(lengths: list[int], device) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)


class Batch:
    """Random inputs of one case for one variant, and per-request views of its keys and values."""

    def __init__(self, v, q_lens, kv_lens, num_qo_heads, num_kv_heads, page_size, layout, device):
        self.v, self.q_lens, self.kv_lens, self.layout = v, q_lens, kv_lens, layout
        self.num_qo_heads, self.num_kv_heads = num_qo_heads, num_kv_heads
        dtype, d = DTYPES[v.q_dtype], v.head_dim
        spread = 2.0 if v.soft_cap else 1.0  # logits large enough for the soft-cap to bend them
        self.q = (torch.randn(sum(q_lens), num_qo_heads, d, device=device) * spread).to(dtype)
        self.qo_indptr = _indptr(q_lens, device)
        self.kv_args: dict = {"kv_layout": layout}
        if page_size == 0:
            shape = (sum(kv_lens), num_kv_heads, d)
            self.kv_args["kv_indptr"] = _indptr(kv_lens, device)
        else:
            pages = [math.ceil(n / page_size) for n in kv_lens]
            num_pages = sum(pages) + 3  # unused pages too
            shape = (
                (num_pages, page_size, num_kv_heads, d)
                if layout == "NHD"
                else (num_pages, num_kv_heads, page_size, d)
            )
            self.kv_args["kv_indptr"] = _indptr(pages, device)
            self.kv_args["kv_indices"] = torch.randperm(num_pages, device=device)[: sum(pages)].to(
                torch.int32
            )
            self.kv_args["kv_last_page_len"] = torch.tensor(
                [n - (p - 1) * page_size if p else 0 for n, p in zip(kv_lens, pages, strict=True)],
                dtype=torch.int32,
                device=device,
            )
        self.k = (torch.randn(shape, device=device) * spread).to(dtype)
        self.v_cache = torch.randn(shape, device=device).to(dtype)
        self.hook_args, self.ref_args = self._hooks(device)

    def _hooks(self, device) -> tuple[dict, dict]:
        v = self.v
        hook_args: dict = {"sm_scale": 1 / math.sqrt(v.head_dim)}
        ref_args: dict = {"mask": v.mask, "pos": v.pos, "sm_scale": hook_args["sm_scale"]}
        if v.soft_cap:
            hook_args["logits_soft_cap"] = ref_args["soft_cap"] = SOFT_CAP
        if v.mask == "sliding_window":
            hook_args["window_left"] = ref_args["window_left"] = WINDOW_LEFT
        if v.pos == "alibi":
            hook_args["alibi_slopes"] = ref_args["alibi_slopes"] = hooks.alibi_slopes(self.num_qo_heads).to(
                device
            )
        self.masks = []
        if v.mask == "custom":
            for q_len, kv_len in zip(self.q_lens, self.kv_lens, strict=True):
                keep = torch.rand(q_len, kv_len, device=device) < KEEP_PROBABILITY
                if q_len > 2:
                    keep[1] = False  # a row with no visible key
                self.masks.append(keep)
            hook_args["custom_mask"], hook_args["mask_indptr"] = _pack_bits(self.masks, device)
        return hook_args, ref_args

    def keys(self, cache: torch.Tensor, r: int) -> torch.Tensor:
        if "kv_indices" not in self.kv_args:
            lo, hi = self.kv_args["kv_indptr"][r : r + 2].tolist()
            return cache[lo:hi]
        a = self.kv_args
        return reference.gather_paged(
            cache, a["kv_indptr"], a["kv_indices"], a["kv_last_page_len"], r, self.layout
        )

    def reference(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """o [total_q, Hq, D] and lse [total_q, Hq], computed in `dtype` (float32: the reference)."""
        outs, lses = [], []
        for r, q_len in enumerate(self.q_lens):
            lo = int(self.qo_indptr[r])
            extra = {"custom_mask": self.masks[r]} if self.masks else {}
            o, lse = reference.attention(
                self.q[lo : lo + q_len],
                self.keys(self.k, r),
                self.keys(self.v_cache, r),
                **self.ref_args,
                **extra,
                dtype=dtype,
            )
            outs.append(o.float())
            lses.append(lse.float())
        return torch.cat(outs), torch.cat(lses)

    def work(self, tile_q: int, split: bool) -> torch.Tensor:
        """One item per tile of packed rows over all keys, or (split) two items over the key halves
        writing partial rows: token t's first half to row t, its second to row total_q + t."""
        group, total_q, items = self.num_qo_heads // self.num_kv_heads, self.q.shape[0], []
        for r, (q_len, kv_len) in enumerate(zip(self.q_lens, self.kv_lens, strict=True)):
            first_token = int(self.qo_indptr[r])
            for begin in range(0, q_len * group, tile_q):
                end = min(begin + tile_q, q_len * group)
                if split:
                    mid, row = kv_len // 2, first_token + begin // group
                    items += [(r, begin, end, 0, mid, row), (r, begin, end, mid, kv_len, total_q + row)]
                else:
                    items.append((r, begin, end, 0, kv_len, -1))
        return torch.tensor(items, dtype=torch.int32, device=self.q.device).reshape(-1, 6)


def _pack_bits(masks: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major bit masks of all requests back to back, little-endian within bytes, and the bit
    offsets where each starts (batch_size + 1 entries)."""
    flat = torch.cat([m.flatten() for m in masks])
    sizes = torch.tensor([m.numel() for m in masks])
    starts = torch.tensor([0, *sizes.cumsum(0).tolist()], dtype=torch.int64)
    padded = torch.zeros((flat.numel() + 7) // 8 * 8, dtype=torch.uint8, device=device)
    padded[: flat.numel()] = flat.to(torch.uint8)
    weights = 2 ** torch.arange(8, dtype=torch.uint8, device=device)
    return (padded.view(-1, 8) * weights).sum(-1, dtype=torch.uint8), starts.to(device)


def _check(o, lse, o_ref, lse_ref, o_low, lse_low) -> None:
    empty = torch.isinf(lse_ref)
    for name, got, ref, low, empty_value in (
        ("o", o, o_ref, o_low.to(o.dtype), 0.0),
        ("lse", lse, lse_ref, lse_low, -math.inf),
    ):
        c = accuracy.compare(got, ref, low, empty_rows=empty, empty_value=empty_value)
        assert c.passed, f"{name}: {c.problem()} (rel err {c.rel_err:.2e})"


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("variant", VARIANT_IDS, indirect=True)
def test_prefill_matches_reference(ops, variant, case):
    device = torch.device("cuda")
    batch = Batch(variant, *case, device)
    dtype = DTYPES[variant.q_dtype]
    o = accuracy.poisoned_like(batch.q)
    lse = accuracy.poison_(torch.empty(batch.q.shape[:2], device=device))
    with loader.pinned_arch(variant.arch):
        work = batch.work(ops.kernel_info(variant).cta_tile_q, split=False)
        ops.attention(
            variant,
            batch.q,
            batch.k,
            batch.v_cache,
            o,
            qo_indptr=batch.qo_indptr,
            work=work,
            lse=lse,
            **batch.kv_args,
            **batch.hook_args,
        )
    torch.cuda.synchronize()
    _check(o, lse, *batch.reference(torch.float32), *batch.reference(dtype))


@pytest.mark.parametrize("case", SPLIT_CASES.values(), ids=SPLIT_CASES.keys())
@pytest.mark.parametrize("variant", VARIANT_IDS, indirect=True)
def test_prefill_split_kv_merges(ops, variant, case):
    merge = Variant(family="merge", arch=variant.arch, q_dtype=variant.q_dtype)
    try:
        loader.find_kernel(merge, torch.cuda.get_device_capability())
    except loader.PackError as e:
        pytest.skip(f"the split check needs a merge kernel in the packs: {e}")
    device = torch.device("cuda")
    batch = Batch(variant, *case, device)
    dtype = DTYPES[variant.q_dtype]
    total_q, heads, d = batch.q.shape
    partial_o = accuracy.poison_(torch.empty(2 * total_q, heads, d, device=device))
    partial_lse = accuracy.poison_(torch.empty(2 * total_q, heads, device=device))
    o = accuracy.poisoned_like(batch.q)
    lse = accuracy.poison_(torch.empty(total_q, heads, device=device))
    with loader.pinned_arch(variant.arch):
        work = batch.work(ops.kernel_info(variant).cta_tile_q, split=True)
        ops.attention(
            variant,
            batch.q,
            batch.k,
            batch.v_cache,
            o,
            qo_indptr=batch.qo_indptr,
            work=work,
            partial_o=partial_o,
            partial_lse=partial_lse,
            **batch.kv_args,
            **batch.hook_args,
        )
    tokens = torch.arange(total_q, dtype=torch.int32, device=device)
    merge_indptr = torch.arange(0, 2 * total_q + 1, 2, dtype=torch.int32, device=device)
    merge_indices = torch.stack([tokens, tokens + total_q], dim=1).flatten()
    ops.merge_states(partial_o, partial_lse, merge_indptr, merge_indices, o, lse)
    torch.cuda.synchronize()
    _check(o, lse, *batch.reference(torch.float32), *batch.reference(dtype))


@pytest.mark.parametrize("variant", VARIANT_IDS, indirect=True)
def test_prefill_kernel_info(ops, variant):
    from flashinfer_build.kernels import abi

    with loader.pinned_arch(variant.arch):
        info = ops.kernel_info(variant)
    assert info.abi_version == abi.ABI_VERSION
    assert info.cta_tile_q % 16 == 0 and info.cta_tile_kv % 16 == 0, info.as_dict()
    assert info.num_threads % 32 == 0 and info.smem_bytes > 0, info.as_dict()
    assert info.ctas_per_sm >= 1, f"{variant.id} does not fit an SM of this GPU: {info.as_dict()}"
