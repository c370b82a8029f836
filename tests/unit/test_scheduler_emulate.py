"""Plans executed on the CPU (kernels/emulate.py) equal the reference attention, and the merge math."""

import numpy as np
import pytest
import torch
from flashinfer_build.kernels import emulate, reference, scheduler
from flashinfer_build.kernels.scheduler import CostModel, KernelShape
from flashinfer_build.variants import hooks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CHEAP_SPLITS = CostModel(item_overhead=1.0, merge_launch=0.0, min_gain=0.0)


@st.composite
def small_batches(draw):
    batch = draw(st.integers(1, 4))
    decode = draw(st.booleans())
    qo = [1] * batch if decode else draw(st.lists(st.integers(0, 9), min_size=batch, max_size=batch))
    kv = draw(st.lists(st.integers(0, 160), min_size=batch, max_size=batch))
    return (None if decode else qo), qo, kv


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=small_batches(),
    heads=st.sampled_from([(4, 2), (2, 2), (3, 1)]),
    mask=st.sampled_from(["none", "causal", "sliding_window", "custom"]),
    pos=st.sampled_from(["none", "rope", "alibi"]),
    soft_cap=st.sampled_from([None, 5.0]),
    kernel=st.builds(
        KernelShape,
        num_sms=st.integers(1, 16),
        ctas_per_sm=st.integers(1, 2),
        cta_tile_q=st.sampled_from([2, 4, 8]),
        cta_tile_kv=st.sampled_from([4, 16]),
    ),
    seed=st.integers(0, 2**31 - 1),
)
def test_emulated_plan_equals_reference(batch, heads, mask, pos, soft_cap, kernel, seed):
    qo_lens, qo, kv = batch
    if qo_lens is None and mask in ("causal", "custom"):
        mask = "none"  # decode has no causal or custom masks (variants RULES)
    num_qo_heads, num_kv_heads = heads
    head_dim, window_left = 8, 13
    gen = torch.Generator().manual_seed(seed)
    p = scheduler.plan(
        qo_lens,
        kv,
        num_qo_heads=num_qo_heads,
        num_kv_heads=num_kv_heads,
        page_size=4,
        kernel=kernel,
        mask=mask,
        window_left=window_left,
        cost=CHEAP_SPLITS,
    )
    q = torch.randn(sum(qo), num_qo_heads, head_dim, generator=gen)
    keys = [torch.randn(n, num_kv_heads, head_dim, generator=gen) for n in kv]
    values = [torch.randn(n, num_kv_heads, head_dim, generator=gen) for n in kv]
    masks = [torch.rand(a, b, generator=gen) < 0.6 for a, b in zip(qo, kv, strict=True)]
    variant = {
        "mask": mask,
        "pos": pos,
        "soft_cap": soft_cap,
        "window_left": window_left,
        "alibi_slopes": hooks.alibi_slopes(num_qo_heads),
    }
    o, lse = emulate.execute(p, q, keys, values, qo_lens, custom_masks=masks, dtype=torch.float64, **variant)
    start = np.concatenate([[0], np.cumsum(qo)])
    for r in range(len(kv)):
        ref_o, ref_lse = reference.attention(
            q[start[r] : start[r + 1]],
            keys[r],
            values[r],
            custom_mask=masks[r],
            dtype=torch.float64,
            **variant,
        )
        torch.testing.assert_close(o[start[r] : start[r + 1]], ref_o, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(lse[start[r] : start[r + 1]], ref_lse, atol=1e-12, rtol=1e-12)


def test_emulation_shows_unwritten_rows():
    p = scheduler.plan(
        None,
        [50, 60],
        num_qo_heads=2,
        num_kv_heads=1,
        page_size=1,
        kernel=KernelShape(num_sms=1, ctas_per_sm=1, cta_tile_q=2),
    )
    dropped = scheduler.Plan(**{**p.__dict__, "work": p.work[:1], "num_items": 1})
    q, keys = torch.randn(2, 2, 8), [torch.randn(50, 1, 8), torch.randn(60, 1, 8)]
    o, _ = emulate.execute(dropped, q, keys, keys, None)
    assert torch.isnan(o[int(p.work[1, 0])]).all() and not torch.isnan(o[int(p.work[0, 0])]).any()


def _split_states(s, v, bounds):
    """Partial (o, lse) of logits s [heads, keys] and values v [keys, heads, d] over key ranges."""
    outs, lses = [], []
    for lo, hi in bounds:
        part = s[:, lo:hi]
        lse = torch.logsumexp(part, dim=-1)
        w = torch.exp(part - lse[:, None]).nan_to_num(0.0)
        outs.append(torch.einsum("hk,khd->hd", w, v[lo:hi]))
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def test_merge_states_equals_one_softmax():
    s, v = torch.randn(3, 40, dtype=torch.float64) * 4, torch.randn(40, 3, 5, dtype=torch.float64)
    whole_o, whole_lse = _split_states(s, v, [(0, 40)])
    part_o, part_lse = _split_states(s, v, [(0, 7), (7, 8), (8, 40), (40, 40)])  # an empty chunk too
    o = torch.full((2, 3, 5), float("nan"), dtype=torch.float64)
    lse = torch.full((2, 3), float("nan"), dtype=torch.float64)
    emulate.merge_states(part_o, part_lse, [0, 0, 4], [3, 1, 0, 2], o, lse)
    assert torch.isnan(o[0]).all(), "a row with an empty range is left untouched"
    torch.testing.assert_close(o[1], whole_o[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse[1], whole_lse[0], atol=1e-12, rtol=1e-12)


def test_merge_of_rows_without_keys_is_zero_and_minus_inf():
    part_o = torch.randn(2, 1, 4, dtype=torch.float64)
    part_lse = torch.full((2, 1), float("-inf"), dtype=torch.float64)
    o, lse = torch.full((1, 1, 4), float("nan"), dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    emulate.merge_states(part_o, part_lse, [0, 2], [0, 1], o, lse)
    assert (o == 0).all() and lse.item() == float("-inf")


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1]])
def test_merge_is_associative(order):
    s, v = torch.randn(2, 30, dtype=torch.float64), torch.randn(30, 2, 4, dtype=torch.float64)
    part_o, part_lse = _split_states(s, v, [(0, 10), (10, 20), (20, 30)])
    flat_o, flat_lse = torch.zeros(1, 2, 4, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    emulate.merge_states(part_o, part_lse, [0, 3], order, flat_o, flat_lse)
    pair_o, pair_lse = torch.zeros(1, 2, 4, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    emulate.merge_states(part_o, part_lse, [0, 2], order[:2], pair_o, pair_lse)
    nested_o, nested_lse = torch.zeros(1, 2, 4, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    both_o = torch.cat([pair_o, part_o[order[2:]]])
    both_lse = torch.cat([pair_lse, part_lse[order[2:]]])
    emulate.merge_states(both_o, both_lse, [0, 2], [0, 1], nested_o, nested_lse)
    torch.testing.assert_close(nested_o, flat_o, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(nested_lse, flat_lse, atol=1e-12, rtol=1e-12)
