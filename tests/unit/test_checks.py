"""Argument validation of kernels/checks.py and kernels/ops.py: messages that name the argument. CPU only:
everything here is rejected before a kernel is looked up."""

from __future__ import annotations

import pytest
import torch
from flashinfer_build.kernels import checks, ops
from flashinfer_build.kernels.checks import InvalidArgument
from flashinfer_build.variants import Variant

CPU = torch.device("cpu")
DECODE = Variant(family="decode", arch="sm90a")


def test_cpu_tensors_are_rejected_naming_the_argument():
    q = torch.randn(2, 8, 128, dtype=torch.bfloat16)
    k = torch.randn(4, 16, 2, 128, dtype=torch.bfloat16)
    with pytest.raises(InvalidArgument, match=r"^q must be a CUDA tensor, got a tensor on cpu"):
        ops.prepare_attention(DECODE, q, k, k, q, kv_indptr=None, work=None)


def test_wrong_query_dtype_names_the_variant_dtype():
    q = torch.randn(2, 8, 128, dtype=torch.float16)
    with pytest.raises(InvalidArgument, match=r"^q must have dtype bfloat16, got float16"):
        ops.prepare_attention(DECODE, q, q, q, q, kv_indptr=None, work=None)


def test_head_dim_must_match_the_variant():
    q = torch.randn(2, 8, 64, dtype=torch.bfloat16)
    with pytest.raises(InvalidArgument, match=r"q must have shape \[\*, \*, 128\], got \[2, 8, 64\]"):
        ops.prepare_attention(DECODE, q, q, q, q, kv_indptr=None, work=None)


def test_layout_and_family_are_checked_first():
    q = torch.randn(2, 8, 128, dtype=torch.bfloat16)
    with pytest.raises(InvalidArgument, match="kv_layout must be one of"):
        ops.prepare_attention(DECODE, q, q, q, q, kv_indptr=None, work=None, kv_layout="NDH")
    merge = Variant(family="merge", arch="sm90a")
    with pytest.raises(InvalidArgument, match="variant must be a decode or prefill Variant"):
        ops.prepare_attention(merge, q, q, q, q, kv_indptr=None, work=None)


def test_merge_helpers_reject_cpu_and_bad_dtypes():
    v = torch.randn(3, 4, 64, dtype=torch.float16)
    s = torch.randn(3, 4)
    with pytest.raises(InvalidArgument, match="v_a must be a CUDA tensor"):
        ops.merge_state(v, s, v, s)
    with pytest.raises(InvalidArgument, match="v must have dtype bfloat16 or float16, got float32"):
        ops.merge_state_list(v.float()[:, None], s[:, None])
    with pytest.raises(InvalidArgument, match="partial_o must be a CUDA tensor"):
        ops.merge_states(v.float(), s, None, None, v)


def test_append_checks_layout_and_device():
    cache = torch.zeros(4, 16, 2, 64)
    with pytest.raises(InvalidArgument, match="kv_layout must be one of"):
        ops.append_paged_kv_cache(None, None, None, None, cache, cache, None, None, kv_layout="nhd")
    with pytest.raises(InvalidArgument, match="k_cache must be a CUDA tensor"):
        ops.append_paged_kv_cache(None, None, None, None, cache, cache, None, None)


def test_check_tensor_messages():
    t = torch.zeros(4, 8, 128)
    with pytest.raises(InvalidArgument, match=r"^k must have dtype bfloat16 or float16, got float32$"):
        checks.check_tensor("k", t, dtype=(torch.bfloat16, torch.float16), device=CPU)
    with pytest.raises(InvalidArgument, match=r"^k must have shape \[\*, 4, 128\], got \[4, 8, 128\]$"):
        checks.check_tensor("k", t, shape=(None, 4, 128), device=CPU)
    with pytest.raises(InvalidArgument, match="k must be contiguous"):
        checks.check_tensor("k", t.transpose(0, 1), contiguous=True, device=CPU)
    with pytest.raises(InvalidArgument, match="k must have a contiguous last dimension"):
        checks.check_tensor("k", t.transpose(1, 2), inner_contiguous=True, align_bytes=16, device=CPU)
    with pytest.raises(InvalidArgument, match="k's data pointer must be 16-byte aligned"):
        checks.check_tensor("k", t[:, :, 1:], inner_contiguous=True, align_bytes=16, device=CPU)
    with pytest.raises(InvalidArgument, match="k's stride 127 of dim 1 is not a multiple of 16 bytes"):
        checks.check_tensor(
            "k",
            t.view(-1)[: 4 * 8 * 127].view(4, 8, 127)[:, :, :124],
            inner_contiguous=True,
            align_bytes=16,
            device=CPU,
        )
    with pytest.raises(InvalidArgument, match="k is on cpu, expected meta"):
        checks.check_tensor("k", t, device=torch.device("meta"))
    with pytest.raises(InvalidArgument, match="k must be a torch.Tensor, got list"):
        checks.check_tensor("k", [1, 2], device=CPU)
    checks.check_tensor(
        "k",
        t,
        dtype=torch.float32,
        shape=(4, None, 128),
        contiguous=True,
        inner_contiguous=True,
        align_bytes=16,
        device=CPU,
    )


def test_check_index_messages():
    with pytest.raises(InvalidArgument, match="kv_indptr must have dtype int32, got int64"):
        checks.check_index("kv_indptr", torch.zeros(3, dtype=torch.int64), device=CPU)
    with pytest.raises(InvalidArgument, match=r"kv_indptr must be 1-D, got shape \[3, 1\]"):
        checks.check_index("kv_indptr", torch.zeros(3, 1, dtype=torch.int32), device=CPU)
    with pytest.raises(InvalidArgument, match="kv_last_page_len must have length 2, got 3"):
        checks.check_index("kv_last_page_len", torch.zeros(3, dtype=torch.int32), device=CPU, length=2)
    with pytest.raises(InvalidArgument, match="kv_indices must be contiguous"):
        checks.check_index("kv_indices", torch.zeros(6, dtype=torch.int32)[::2], device=CPU)


def test_index_value_checks():
    with pytest.raises(
        InvalidArgument, match=r"kv_indptr must be non-decreasing: kv_indptr\[2\] = 1 < kv_indptr\[1\] = 3"
    ):
        checks.check_indptr_values("kv_indptr", torch.tensor([0, 3, 1]))
    with pytest.raises(InvalidArgument, match=r"kv_indptr\[0\] must be 0, got 2"):
        checks.check_indptr_values("kv_indptr", torch.tensor([2, 3]))
    with pytest.raises(InvalidArgument, match=r"kv_indptr\[-1\] = 5 exceeds the 4 entries"):
        checks.check_indptr_values("kv_indptr", torch.tensor([0, 5]), total=4)
    assert checks.check_indptr_values("kv_indptr", torch.tensor([0, 0, 4]), total=4) == [0, 0, 4]
    with pytest.raises(
        InvalidArgument, match=r"kv_indices holds page id 7, outside the cache's pages \[0, 7\)"
    ):
        checks.check_page_ids("kv_indices", torch.tensor([0, 7, 1]), num_pages=7, used=3)
    checks.check_page_ids("kv_indices", torch.tensor([0, 6, 99]), num_pages=7, used=2)
    with pytest.raises(InvalidArgument, match=r"kv_last_page_len\[1\] = 0 must lie in \[1, page_size = 16\]"):
        checks.check_last_page_len("kv_last_page_len", torch.tensor([3, 0]), [1, 2], 16)


def test_check_scalar_messages():
    with pytest.raises(InvalidArgument, match="k_scale must be finite, got nan"):
        checks.check_scalar("k_scale", float("nan"))
    with pytest.raises(InvalidArgument, match="sm_scale must be > 0, got -1.0"):
        checks.check_scalar("sm_scale", -1, positive=True)
    with pytest.raises(InvalidArgument, match="rope_theta must be a number, got 'x'"):
        checks.check_scalar("rope_theta", "x")
