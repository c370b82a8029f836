"""Latency of a split decode (issue 3: batch 1 x 32k under 55 us) and the bandwidth rows it must not
cost (batch 64 x 8k, bf16 and fp8 KV), in one run.

    python benchmarks/decode_latency.py [--json FILE] [--profile] [--quick]

Shape: 32 query heads, 8 KV heads, head dim 128, page size 16, NHD, bf16 queries, pages shuffled.
Every time is the median of CUDA-graph replays (kernels/bench/timing.py, inputs rotated past L2):
  - "planned": BatchDecodeWrapper's launches (attention, then merge when the plan split), the
    number the issue's target is about;
  - "attention" / "merge": the same plan's two launches timed alone, through ops;
  - "chunk N": the plan forced to KV chunks of N keys (attention + merge), through ops;
  - "after a plain kernel": the planned launches each right after a torch kernel that writes q,
    minus that kernel alone (back-to-back replays let the next call's start overlap this one's end).
Each wrapper output is checked against the float32 reference (kernels/reference.py) first.
--profile adds a torch.profiler trace of graph replays of the 1 x 32k launches: each kernel's
duration and the idle gap before it, medians over the replays.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
from flashinfer_build.kernels import ops, reference, scheduler, wrapper_engine, wrappers
from flashinfer_build.kernels.bench.timing import measure_peaks, rotation_sets, time_calls

HQ, HKV, D, PAGE = 32, 8, 128, 16
BF16 = torch.bfloat16


class Batch:
    """Shuffled page table (host int32) and `sets` KV caches of random values in `kv_dtype`."""

    def __init__(self, kv_lens, kv_dtype, sets, device):
        self.kv_lens = list(kv_lens)
        pages = [math.ceil(n / PAGE) for n in kv_lens]
        num_pages = sum(pages)
        self.indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(pages)]).astype(np.int32))
        self.indices = torch.from_numpy(np.random.permutation(num_pages).astype(np.int32))
        self.last = torch.tensor(
            [n - (p - 1) * PAGE for n, p in zip(kv_lens, pages, strict=True)], dtype=torch.int32
        )
        shape = (num_pages, PAGE, HKV, D)
        self.caches = [
            tuple(torch.randn(shape, device=device, dtype=BF16).to(kv_dtype) for _ in range(2))
            for _ in range(sets)
        ]
        self.qs = [torch.randn(len(kv_lens), HQ, D, device=device, dtype=BF16) for _ in range(sets)]
        self.outs = [torch.empty_like(q) for q in self.qs]
        self.kv_dtype = kv_dtype

    def index_on(self, device):
        return dict(
            kv_indptr=self.indptr.to(device),
            kv_indices=self.indices.to(device),
            kv_last_page_len=self.last.to(device),
        )


def num_sets(kv_lens, kv_bytes, device):
    props = torch.cuda.get_device_properties(device)
    free, _ = torch.cuda.mem_get_info(device)
    return rotation_sets(sum(kv_lens) * HKV * D * kv_bytes * 2, props.L2_cache_size, free // 2, most=8)


def max_error(batch: Batch, out: torch.Tensor, requests) -> float:
    """Largest |out - ref| over `requests`, over the largest |ref| (float32 reference)."""
    k, v = batch.caches[0]
    worst = 0.0
    for r in requests:
        ids = batch.indices[batch.indptr[r] : batch.indptr[r + 1]].long().to(k.device)
        n = batch.kv_lens[r]
        kr, vr = k[ids].reshape(-1, HKV, D)[:n], v[ids].reshape(-1, HKV, D)[:n]
        ref, _ = reference.attention(batch.qs[0][r : r + 1], kr, vr)
        err = (out[r : r + 1].float() - ref).abs().max() / ref.abs().max()
        worst = max(worst, float(err))
    return worst


def planned(batch: Batch, device):
    """Graph-replay time of the wrapper's launches, its plan, and the checked output's error."""
    size = wrappers.workspace_size(
        HQ, HKV, D, max_batch_size=len(batch.kv_lens), max_num_pages=len(batch.indices)
    )
    w = wrappers.BatchDecodeWrapper(torch.empty(size, dtype=torch.uint8, device=device))
    w.plan(batch.indptr, batch.indices, batch.last, HQ, HKV, D, PAGE, kv_dtype=batch.kv_dtype)
    out = w.run(batch.qs[0], batch.caches[0])
    err = max_error(batch, out, sorted({0, len(batch.kv_lens) - 1}))
    calls = [w.launcher(q, k, v, o) for q, (k, v), o in zip(batch.qs, batch.caches, batch.outs, strict=True)]
    return time_calls(calls, graph=True).median_us, w.plan_info, err, calls


def forced(batch: Batch, device, chunk: int | None, parts=("attention", "merge")):
    """Graph-replay time of `parts` of a plan forced to `chunk` keys (None: the model's choice)."""
    variant = wrapper_engine.variant_for("decode", BF16, batch.kv_dtype, D, "none", "none", None)
    kernel = wrapper_engine.kernel_shape(variant, device.index or 0)
    kw = dict(
        num_qo_heads=HQ, num_kv_heads=HKV, page_size=PAGE, kernel=kernel, kv_bytes=batch.kv_dtype.itemsize
    )
    if chunk is not None:
        kw.update(split_kv=chunk > 0, force_chunk=chunk)
    p = scheduler.plan(None, batch.kv_lens, **kw)
    i32 = dict(dtype=torch.int32, device=device)
    work = torch.from_numpy(p.work).to(device)
    rows = max(p.num_partial_rows, 1)
    partial_o, partial_lse = torch.empty(rows, HQ, D, device=device), torch.empty(rows, HQ, device=device)
    merge_index = (torch.from_numpy(p.merge_indptr).to(**i32), torch.from_numpy(p.merge_indices).to(**i32))
    split = dict(partial_o=partial_o, partial_lse=partial_lse) if p.split else {}
    calls = []
    for q, (k, v), o in zip(batch.qs, batch.caches, batch.outs, strict=True):
        a = ops.prepare_attention(variant, q, k, v, o, work=work, **batch.index_on(device), **split)
        m = ops.prepare_merge(partial_o, partial_lse, *merge_index, o) if p.split else None

        a.launch(q, k, v, o)  # real partial states for a merge timed alone

        def call(a=a, m=m, q=q, k=k, v=v, o=o):
            if "attention" in parts:
                a.launch(q, k, v, o)
            if m is not None and "merge" in parts:
                m.launch(o)

        calls.append(call)
    return time_calls(calls, graph=True).median_us, p


def after_plain_kernel(batch: Batch, calls) -> tuple[float, float]:
    """Graph-replay times of (a plain kernel that writes q, then the planned launches) and of that
    kernel alone: a model step puts a RoPE or KV-append kernel, not the previous merge, before the
    attention kernel, and on sm_90 the attention kernel's early work overlaps only what comes before."""
    sources = [torch.randn_like(q) for q in batch.qs]
    both = [lambda c=c, q=q, s=s: (q.copy_(s), c()) for c, q, s in zip(calls, batch.qs, sources, strict=True)]
    alone = [lambda q=q, s=s: q.copy_(s) for q, s in zip(batch.qs, sources, strict=True)]
    return time_calls(both, graph=True).median_us, time_calls(alone, graph=True).median_us


def profile(calls, replays: int = 20) -> list[dict]:
    """Per kernel name: median duration and median idle gap before it, over graph replays."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    g = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(g):
        for i in range(4 * len(calls)):
            calls[i % len(calls)]()
    g.replay()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            g.replay()
        torch.cuda.synchronize()
    events = sorted(
        (e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and "kernel" in e.name),
        key=lambda e: e.time_range.start,
    )
    rows: dict[str, dict[str, list[float]]] = {}
    prev_end = None
    for e in events:
        r = rows.setdefault(e.name, {"us": [], "gap_us": []})
        r["us"].append(e.time_range.elapsed_us())
        if prev_end is not None:
            r["gap_us"].append(e.time_range.start - prev_end)
        prev_end = e.time_range.end
    return [
        {
            "kernel": name[:60],
            "count": len(r["us"]),
            "median_us": round(statistics.median(r["us"]), 2),
            "median_gap_us": round(statistics.median(r["gap_us"]), 2) if r["gap_us"] else None,
        }
        for name, r in rows.items()
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--profile", action="store_true", help="torch.profiler trace of the 1 x 32k replays")
    ap.add_argument("--quick", action="store_true", help="no chunk sweep")
    args = ap.parse_args()
    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    np.random.seed(0)
    peaks = measure_peaks(device, matmul_n=1024)
    res = {"device": peaks.name, "date": time.strftime("%Y-%m-%d %H:%M"), "copy_gbps": round(peaks.copy_gbps)}
    lines = [f"{peaks.name}, {res['date']}, copy {peaks.copy_gbps:.0f} GB/s"]

    one = Batch([32768], BF16, num_sets([32768], 2, device), device)
    us, info, err, calls = planned(one, device)
    res["1x32k"] = {
        "planned_us": round(us, 2),
        "chunk": info.chunk_size,
        "items": info.num_items,
        "rel_err": err,
    }
    lines.append(
        f"1 x 32k bf16  planned {us:7.2f} us (chunk {info.chunk_size}, {info.num_items} items, err {err:.1e})"
    )
    both, alone = after_plain_kernel(one, calls)
    res["1x32k"]["after_plain_kernel_us"] = round(both - alone, 2)
    lines.append(
        f"1 x 32k bf16  after a plain kernel writing q {both:7.2f} us - {alone:.2f} us (it alone) = "
        f"{both - alone:.2f} us"
    )
    for parts in (("attention",), ("merge",)):
        t, _ = forced(one, device, None, parts)
        res["1x32k"][f"{parts[0]}_us"] = round(t, 2)
        lines.append(f"1 x 32k bf16  {parts[0]:9s} alone {t:7.2f} us")
    if not args.quick:
        sweep = {}
        for chunk in (512, 1024, 2048, 4096):
            sweep[chunk], _ = forced(one, device, chunk)
        res["1x32k"]["chunk_sweep_us"] = {str(c): round(t, 2) for c, t in sweep.items()}
        lines.append("1 x 32k bf16  chunk sweep  " + "  ".join(f"{c}: {t:.1f}" for c, t in sweep.items()))
    if args.profile:
        res["1x32k"]["profile"] = profile(calls)
        for r in res["1x32k"]["profile"]:
            lines.append(
                f"  {r['kernel']:60s} x{r['count']:4d} {r['median_us']:7.2f} us, gap {r['median_gap_us']} us"
            )
    del one, calls
    torch.cuda.empty_cache()

    wide = {}
    for name, dtype, nbytes in (("bf16", BF16, 2), ("fp8e4m3", torch.float8_e4m3fn, 1)):
        lens = [8192] * 64
        b = Batch(lens, dtype, num_sets(lens, nbytes, device), device)
        us, info, err, _ = planned(b, device)
        moved = 2 * sum(lens) * HKV * D * nbytes + 2 * len(lens) * HQ * D * 2
        pct = 100 * moved / (us * 1e-6) / 1e9 / peaks.copy_gbps
        wide[name] = us
        res[f"64x8k_{name}"] = {
            "planned_us": round(us, 2),
            "pct_copy": round(pct, 1),
            "split": info.split,
            "rel_err": err,
        }
        lines.append(
            f"64 x 8k {name:7s} planned {us:7.2f} us {pct:5.1f}% of copy (split {info.split}, err {err:.1e})"
        )
        del b
        torch.cuda.empty_cache()
    res["fp8_speedup"] = round(wide["bf16"] / wide["fp8e4m3"], 3)
    lines.append(f"fp8 / bf16 speedup at 64 x 8k: {res['fp8_speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
