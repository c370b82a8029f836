"""bench on the CPU: FLOP and byte formulas, workloads and user shapes, inputs, baselines, report outputs."""

from __future__ import annotations

import csv
import io
import random

import pytest
import torch
from flashinfer_build.kernels import bench, reference
from flashinfer_build.kernels.bench import baselines as bench_baselines
from flashinfer_build.kernels.bench import counts as bench_counts
from flashinfer_build.kernels.bench import inputs as bench_inputs
from flashinfer_build.kernels.bench import report as bench_report
from flashinfer_build.kernels.bench import workloads as wl
from flashinfer_build.kernels.bench.timing import DevicePeaks, Timing, rotation_sets
from flashinfer_build.variants import hooks, load_matrix

H100 = DevicePeaks("H100", 132, 50 << 20, copy_gbps=3000.0, matmul_tflops=800.0)


def test_flops_and_bytes_of_a_decode_batch_by_hand():
    # 2 requests of 10 and 5 keys, 4 query heads over 2 KV heads, head dim 8, bf16.
    assert bench_counts.attention_flops([1, 1], [10, 5], 4, 8) == 4 * 4 * 8 * 15
    q_and_o = 2 * (2 * 4 * 8 * 2)
    k_and_v = 2 * (15 * 2 * 8 * 2)
    assert bench_counts.attention_bytes([1, 1], [10, 5], 4, 2, 8) == q_and_o + k_and_v == 1216
    fp8 = bench_counts.attention_bytes([1, 1], [10, 5], 4, 2, 8, kv_dtype="fp8e4m3")
    assert fp8 == q_and_o + k_and_v // 2


def test_visible_pairs_by_hand():
    assert bench_counts.visible_pairs(4, 6, "none") == 24
    assert bench_counts.visible_pairs(4, 6, "causal") == 3 + 4 + 5 + 6
    assert bench_counts.visible_pairs(4, 6, "sliding_window", 2) == 3 * 4
    assert bench_counts.visible_pairs(6, 6, "sliding_window", 2) == 1 + 2 + 3 + 3 + 3 + 3
    assert bench_counts.visible_pairs(0, 9, "causal") == 0
    assert bench_counts.visible_keys(1, 100, "sliding_window", 10) == 11
    with pytest.raises(ValueError, match="q_len"):
        bench_counts.visible_pairs(5, 4)


def test_visible_counts_match_the_hook_masks():
    rng = random.Random()
    for _ in range(200):
        kv = rng.randint(0, 70)
        q, w = rng.randint(0, kv), rng.randint(0, 80)
        mask = rng.choice(["none", "causal", "sliding_window"])
        keep = hooks.mask_keep(mask, q, kv, window_left=w)
        assert bench_counts.visible_pairs(q, kv, mask, w) == int(keep.sum()), (q, kv, mask, w)
        assert bench_counts.visible_keys(q, kv, mask, w) == int(keep.any(0).sum()), (q, kv, mask, w)


def test_shared_prefix_is_read_once():
    # 3 samples decoding after a 16-key prefix, each with 4 keys of its own: 28 distinct keys.
    nbytes = bench_counts.attention_bytes([1, 1, 1], [4, 4, 4], 4, 2, 8, shared_prefix=16)
    assert nbytes == 2 * (3 * 4 * 8 * 2) + 2 * (28 * 2 * 8 * 2)


def test_default_workloads_use_variants_of_the_default_preset():
    default = {v.id for v in load_matrix("default")}
    rows = wl.workloads(list(wl.WORKLOAD_SETS))
    assert len({w.name for w in rows}) == len(rows)
    missing = {w.variant().id for w in rows} - default
    assert not missing


def test_chat_trace_is_fixed_and_shaped():
    q_lens, kv_lens = wl.chat_trace(64)
    assert (q_lens, kv_lens) == wl.chat_trace(64) and (q_lens, kv_lens) != wl.chat_trace(64, seed=1)
    assert sum(q > 1 for q in q_lens) <= 8 and all(16 <= kv <= 32768 for kv in kv_lens)
    assert 500 < sorted(kv_lens)[32] < 5000  # median near 1,500


def test_user_shapes():
    w = wl.parse_shape("decode:batch=32,kv=4096,kv_dtype=fp8e4m3,hkv=4")
    assert (len(w.q_lens), w.kv_lens[0], w.num_kv_heads, w.variant().id) == (
        32,
        4096,
        4,
        "decode_sm90a_bf16_kvfp8e4m3_hd128",
    )
    p = wl.parse_shape("prefill:batch=2,tokens=8192,hd=64,causal=false,page=0")
    assert p.q_lens == p.kv_lens == (8192, 8192) and p.mask == "none" and p.variant().id.endswith("hd64")
    assert wl.parse_shape("decode").kv_lens == (4096,)  # every key has a default
    for bad in ("decode:batch", "decode:size=3", "prefill:q=9,kv=4", "encode:batch=1"):
        with pytest.raises(ValueError):
            wl.parse_shape(bad)


def test_rotation_sets():
    assert rotation_sets(1 << 20, 50 << 20, 80 << 30) == 32  # small inputs: as many copies as allowed
    assert rotation_sets(60 << 20, 50 << 20, 80 << 30) == 3
    assert rotation_sets(40 << 30, 50 << 20, 80 << 30) == 1
    assert rotation_sets(1 << 30, 50 << 20, 3 << 30) == 1  # no room for a second copy


WORKLOADS = [
    wl.Workload(
        name="decode",
        kind="decode",
        q_lens=(1,) * 3,
        kv_lens=(37,) * 3,
        num_qo_heads=8,
        num_kv_heads=2,
        head_dim=32,
    ),
    wl.Workload(
        name="varlen alibi",
        kind="decode",
        q_lens=(1,) * 3,
        kv_lens=(37, 5, 60),
        num_qo_heads=8,
        num_kv_heads=2,
        head_dim=32,
        pos="alibi",
    ),
    wl.Workload(
        name="prefill",
        kind="prefill",
        q_lens=(20, 20),
        kv_lens=(20, 20),
        num_qo_heads=4,
        num_kv_heads=4,
        head_dim=32,
        mask="causal",
        page_size=0,
    ),
    wl.Workload(
        name="window softcap",
        kind="prefill",
        q_lens=(7, 3),
        kv_lens=(20, 9),
        num_qo_heads=4,
        num_kv_heads=2,
        head_dim=32,
        mask="sliding_window",
        window_left=4,
        soft_cap=2.0,
    ),
    wl.Workload(
        name="rope",
        kind="prefill",
        q_lens=(5, 5),
        kv_lens=(20, 20),
        num_qo_heads=4,
        num_kv_heads=2,
        head_dim=32,
        mask="causal",
        pos="rope",
    ),
    wl.Workload(
        name="prefix",
        kind="decode",
        q_lens=(1,) * 3,
        kv_lens=(7,) * 3,
        num_qo_heads=4,
        num_kv_heads=2,
        head_dim=32,
        shared_prefix=32,
    ),
    wl.Workload(
        name="fp8",
        kind="decode",
        q_lens=(1,) * 3,
        kv_lens=(17,) * 3,
        num_qo_heads=4,
        num_kv_heads=2,
        head_dim=32,
        kv_dtype="fp8e4m3",
    ),
]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("w", WORKLOADS, ids=lambda w: w.name)
def test_baselines_compute_the_reference_on_the_bench_inputs(w):
    """SDPA (math backend on the CPU) and FlexAttention (eager) see the same problem as our kernels."""
    x = bench_inputs.make_inputs(w, "cpu", torch.Generator().manual_seed(random.getrandbits(32)))
    dense = bench_inputs.dense_inputs(w, x)
    checked = bench._checked_requests(w)
    refs = bench._references(w, x, checked)
    made = [bench_baselines._flex(w, dense, compiled=False)]
    if not w.soft_cap:
        made.append(bench_baselines._sdpa("MATH", w, dense))
    for baseline in made:
        cmp = bench._check(w, x, baseline.packed_output(baseline.call()), checked, refs)
        assert cmp.passed, cmp.problem()
    wrong = made[0].packed_output(made[0].call()).clone()
    wrong[bench._request_rows(w, checked[-1]).stop - 1, 0, 0] += 0.5
    assert not bench._check(w, x, wrong, checked, refs).passed


def test_soft_cap_is_no_sdpa_feature():
    w = WORKLOADS[3]
    x = bench_inputs.make_inputs(w, "cpu", torch.Generator().manual_seed(0))
    with pytest.raises(bench_baselines.Unsupported, match="soft-cap"):
        bench_baselines._sdpa("MATH", w, bench_inputs.dense_inputs(w, x))


def test_inputs_page_tables_and_dense_views_agree():
    w = WORKLOADS[5]  # shared prefix: every page table starts with the prefix pages
    x = bench_inputs.make_inputs(w, "cpu", torch.Generator().manual_seed(1))
    dense = bench_inputs.dense_inputs(w, x)
    for r in range(3):
        k = reference.gather_paged(x.k, x.kv_indptr, x.kv_indices, x.kv_last_page_len, r)
        assert torch.equal(k, dense.k[r]) and k.shape[0] == 32 + 7
    u = WORKLOADS[0]
    y = bench_inputs.make_inputs(u, "cpu", torch.Generator().manual_seed(2))
    d = bench_inputs.dense_inputs(u, y)
    assert d.kb.data_ptr() == y.k.data_ptr()  # a view of the pool, no copy
    for r in range(3):
        pages = (y.kv_indptr, y.kv_indices, y.kv_last_page_len, r)
        assert torch.equal(d.kb[r], reference.gather_paged(y.k, *pages))


def _fake_report() -> dict:
    w = wl.decode_set()[7]  # decode b64 kv8k
    flops, nbytes = bench.row_counts(w)
    row = bench.Row(w, w.variant().id, flops, nbytes, 1)
    t = lambda us: Timing(us, us * 0.99, us * 1.01, 20, 5, False)  # noqa: E731
    row.methods = [
        bench.MethodResult("ours", "ok", t(100.0)),
        bench.MethodResult("sdpa-flash", "ok", t(150.0)),
        bench.MethodResult("sdpa-cudnn", "ok", t(120.0)),
        bench.MethodResult("flex", "unsupported", note="no"),
    ]
    report = bench.BenchReport(H100, graph=False, rows=[row])
    return report.to_dict()


def test_report_numbers_and_outputs():
    data = _fake_report()
    row = data["rows"][0]
    assert data["schema"] == bench.SCHEMA and set(data["device"]) == {
        "name",
        "num_sms",
        "l2_bytes",
        "copy_gbps",
        "matmul_tflops",
    }
    assert row["speedup"] == pytest.approx(1.2) and row["bound"] == "memory"
    ours = row["methods"][0]
    assert ours["gbps"] == pytest.approx(row["bytes"] / 100e-6 / 1e9)
    assert ours["tflops"] == pytest.approx(row["flops"] / 100e-6 / 1e12)
    assert ours["pct_of_peak"] == pytest.approx(100 * row["bytes"] / 3000e9 / 100e-6)
    lines = list(csv.DictReader(io.StringIO(bench_report.to_csv(data))))
    assert [line["method"] for line in lines] == ["ours", "sdpa-flash", "sdpa-cudnn", "flex"]
    assert lines[3]["status"] == "unsupported" and float(lines[0]["speedup"]) == pytest.approx(1.2)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(bench_report.table(data))
    text = console.export_text()
    assert "decode b64 kv8k" in text and "1.20x" in text and "n/a" in text


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    bench_report.plot(_fake_report(), str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"
