"""The scheduler's benchmarks (issue 4): planned split-KV vs unsplit decode, plan host time, and cascade
vs plain paged decode for parallel generation with a shared prefix (benchmarks/shared_prefix.py).

    python benchmarks/scheduler.py [--json FILE] [--quick]

Shape: 32 query heads, 8 KV heads, head dim 128, page size 16, NHD, bf16, pages shuffled. Kernel times
are medians of CUDA-graph replays of the wrapper's launches (attention, then merge when the plan split
anything), cycling through input sets that together exceed L2 (kernels/bench/timing.py). "unsplit" is
the same wrapper planned with split_kv=False: one work item per request. Plan host time: wall clock of
BatchDecodeWrapper.plan with host (CPU) index arrays, including the staging copy and the upload call,
and of scheduler.plan alone.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import numpy as np
import torch
from flashinfer_build.kernels import scheduler, wrapper_engine, wrappers
from flashinfer_build.kernels.bench.timing import rotation_sets, time_calls

HQ, HKV, D, PAGE = 32, 8, 128, 16
BF16 = torch.bfloat16


def paged_batch(kv_lens, num_sets, device, shared_prefix=0):
    """Index arrays (host int32) and `num_sets` caches of random data. With shared_prefix, every
    request's page list starts with the same prefix pages (parallel generation)."""
    prefix_pages = shared_prefix // PAGE
    own = [math.ceil(n / PAGE) for n in kv_lens]
    num_pages = prefix_pages + sum(own)
    ids = np.random.permutation(num_pages).astype(np.int32)
    prefix, rest = ids[:prefix_pages], ids[prefix_pages:]
    lists, at = [], 0
    for n in own:
        lists.append(np.concatenate([prefix, rest[at : at + n]]))
        at += n
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int32)
    last = np.array([n - (p - 1) * PAGE if p else PAGE for n, p in zip(kv_lens, own, strict=True)], np.int32)
    caches = [
        (
            torch.randn(num_pages, PAGE, HKV, D, device=device, dtype=BF16),
            torch.randn(num_pages, PAGE, HKV, D, device=device, dtype=BF16),
        )
        for _ in range(num_sets)
    ]
    return (
        torch.from_numpy(indptr),
        torch.from_numpy(np.concatenate(lists)),
        torch.from_numpy(last),
        caches,
        prefix,
        rest,
    )


def sets_for(total_keys, device):
    props = torch.cuda.get_device_properties(device)
    free, _ = torch.cuda.mem_get_info(device)
    return rotation_sets(total_keys * HKV * D * 2 * 2, props.L2_cache_size, free // 2, most=8)


def decode_time(kv_lens, split_kv, device, sets):
    indptr, indices, last, caches, _, _ = paged_batch(kv_lens, sets, device)
    size = wrappers.workspace_size(HQ, HKV, D, max_batch_size=len(kv_lens), max_num_pages=len(indices))
    w = wrappers.BatchDecodeWrapper(torch.empty(size, dtype=torch.uint8, device=device))
    w.plan(indptr, indices, last, HQ, HKV, D, PAGE, split_kv=split_kv)
    qs = [torch.randn(len(kv_lens), HQ, D, device=device, dtype=BF16) for _ in caches]
    outs = [torch.empty_like(q) for q in qs]
    calls = [w.launcher(q, k, v, o) for q, (k, v), o in zip(qs, caches, outs, strict=True)]
    timing = time_calls(calls, graph=True)
    check = w.run(qs[0], caches[0])
    return timing.median_us, w.plan_info, check


def row(label, planned, unsplit, info):
    return {
        "workload": label,
        "planned_us": round(planned, 2),
        "unsplit_us": round(unsplit, 2),
        "speedup": round(unsplit / planned, 3),
        "chunk": info.chunk_size,
        "items": info.num_items,
    }


def bench_split(device, quick):
    rows = []
    workloads = [("skewed: 1 x 32k + 63 x 512", [32768] + [512] * 63)]
    uniform = [(16, 8192), (64, 8192), (256, 1024), (128, 4096), (1, 32768), (8, 32768)]
    if quick:
        uniform = uniform[:2]
    workloads += [(f"uniform: {b} x {n}", [n] * b) for b, n in uniform]
    for label, kv_lens in workloads:
        sets = sets_for(sum(kv_lens), device)
        planned, info, out_planned = decode_time(kv_lens, True, device, sets)
        unsplit, _, _ = decode_time(kv_lens, False, device, sets)
        rows.append(row(label, planned, unsplit, info))
        assert torch.isfinite(out_planned).all()
    return rows


def chunk_sweep(device, quick):
    """Times of forced chunk sizes (and the cost model's choice) on a few decode batches, through
    ops directly: how the cost model's choice compares with the best chunk on this GPU."""
    variant = wrapper_engine.variant_for("decode", BF16, None, D, "none", "none", None)
    kernel = wrapper_engine.kernel_shape(variant, device.index or 0)
    rows = []
    workloads = [
        ("1 x 32k", [32768]),
        ("skewed 1 x 32k + 63 x 512", [32768] + [512] * 63),
        ("8 x 32k", [32768] * 8),
        ("16 x 8k", [8192] * 16),
    ]
    for label, kv_lens in workloads[: 2 if quick else None]:
        sets = sets_for(sum(kv_lens), device)
        indptr, indices, last, caches, _, _ = paged_batch(kv_lens, sets, device)
        model = scheduler.plan(
            None, kv_lens, num_qo_heads=HQ, num_kv_heads=HKV, page_size=PAGE, kernel=kernel
        )
        times = {}
        for chunk in sorted({0, 256, 512, 1024, 2048, 4096, 8192, model.chunk_size}):
            p = scheduler.plan(
                None,
                kv_lens,
                num_qo_heads=HQ,
                num_kv_heads=HKV,
                page_size=PAGE,
                kernel=kernel,
                split_kv=chunk > 0,
                force_chunk=chunk,
            )
            times[chunk] = _ops_time(variant, p, indptr, indices, last, caches, device)
        best = min(times, key=times.get)
        rows.append(
            {
                "workload": label,
                "model_chunk": model.chunk_size,
                "model_us": round(times[model.chunk_size], 2),
                "best_chunk": best,
                "best_us": round(times[best], 2),
                "times_us": {str(c): round(t, 2) for c, t in times.items()},
            }
        )
    return rows


def _ops_time(variant, p, indptr, indices, last, caches, device):
    from flashinfer_build.kernels import ops

    i32 = dict(dtype=torch.int32, device=device)
    work = torch.from_numpy(p.work).to(device)
    index = dict(kv_indptr=indptr.to(device), kv_indices=indices.to(device), kv_last_page_len=last.to(device))
    rows = max(p.num_partial_rows, 1)
    partial_o = torch.empty(rows, HQ, D, device=device)
    partial_lse = torch.empty(rows, HQ, device=device)
    merge_index = (torch.from_numpy(p.merge_indptr).to(**i32), torch.from_numpy(p.merge_indices).to(**i32))
    calls = []
    for k, v in caches:
        q = torch.randn(len(last), HQ, D, device=device, dtype=BF16)
        o = torch.empty_like(q)
        split = dict(partial_o=partial_o, partial_lse=partial_lse) if p.split else {}
        attention = ops.prepare_attention(variant, q, k, v, o, work=work, **index, **split)
        merge = ops.prepare_merge(partial_o, partial_lse, *merge_index, o) if p.split else None

        def call(a=attention, m=merge, q=q, k=k, v=v, o=o):
            a.launch(q, k, v, o)
            if m is not None:
                m.launch(o)

        calls.append(call)
    return time_calls(calls, graph=True).median_us


def bench_plan_time(device, batch=256, calls=500):
    rng = np.random.default_rng(0)
    kernel = wrapper_engine.kernel_shape(
        wrapper_engine.variant_for("decode", BF16, None, D, "none", "none", None), device.index or 0
    )
    results = []
    for label, kv_lens in [
        ("skewed: 4 x 32k + 252 x 512", [32768] * 4 + [512] * (batch - 4)),
        ("random 1..32k", rng.integers(1, 32768, batch).tolist()),
        ("uniform 2k", [2048] * batch),
    ]:
        indptr, indices, last, _, _, _ = paged_batch(kv_lens, 0, device)
        size = wrappers.workspace_size(HQ, HKV, D, max_batch_size=batch, max_num_pages=len(indices))
        w = wrappers.BatchDecodeWrapper(torch.empty(size, dtype=torch.uint8, device=device))
        kv = scheduler.kv_lengths(indptr.numpy(), last.numpy(), PAGE)
        wall = []
        for i in range(calls):
            t = time.perf_counter()
            if i % 2:
                w.plan(indptr, indices, last, HQ, HKV, D, PAGE)
            else:
                scheduler.plan(None, kv, num_qo_heads=HQ, num_kv_heads=HKV, page_size=PAGE, kernel=kernel)
            wall.append((i % 2, time.perf_counter() - t))
        wrapper_us = statistics.median(t for kind, t in wall if kind) * 1e6
        planner_us = statistics.median(t for kind, t in wall if not kind) * 1e6
        results.append(
            {
                "batch": f"{batch}, {label}",
                "wrapper_plan_us": round(wrapper_us, 1),
                "scheduler_plan_us": round(planner_us, 1),
                "split": w.plan_info.split,
            }
        )
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="fewer uniform batches")
    args = parser.parse_args()
    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    np.random.seed(0)
    from shared_prefix import bench_cascade  # it imports this module's batch helpers

    results = {
        "device": torch.cuda.get_device_name(device),
        "date": time.strftime("%Y-%m-%d"),
        "host_cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "split": bench_split(device, args.quick),
        "chunk_sweep": chunk_sweep(device, args.quick),
        "plan_time": bench_plan_time(device),
        "cascade": bench_cascade(device),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(f"{results['device']}, {results['date']}")
    print(f"{'workload':32} {'planned us':>11} {'unsplit us':>11} {'speedup':>8} {'chunk':>6} {'items':>6}")
    for r in results["split"]:
        print(
            f"{r['workload']:32} {r['planned_us']:11.1f} {r['unsplit_us']:11.1f} {r['speedup']:8.2f} "
            f"{r['chunk']:6d} {r['items']:6d}"
        )
    print(
        f"{'chunk sweep':28} {'model chunk':>11} {'model us':>9} {'best chunk':>10} {'best us':>8}  "
        "all (chunk: us; 0 = unsplit)"
    )
    for r in results["chunk_sweep"]:
        print(
            f"{r['workload']:28} {r['model_chunk']:11d} {r['model_us']:9.1f} {r['best_chunk']:10d} "
            f"{r['best_us']:8.1f}  {r['times_us']}"
        )
    print(f"{'plan at batch':40} {'wrapper us':>11} {'scheduler us':>13} split")
    for r in results["plan_time"]:
        print(f"{r['batch']:40} {r['wrapper_plan_us']:11.1f} {r['scheduler_plan_us']:13.1f} {r['split']}")
    print(f"{'shared 4k prefix, n':20} {'plain us':>9} {'cascade us':>11} {'speedup':>8} {'max |diff|':>11}")
    for r in results["cascade"]:
        print(
            f"{r['n']:<20} {r['plain_us']:9.1f} {r['cascade_us']:11.1f} {r['speedup']:8.2f} "
            f"{r['max_abs_diff']:11.3g}"
        )


if __name__ == "__main__":
    main()
