"""Shared-prefix (cascade) attention vs plain paged decode (issue 4): n samples generated in parallel
after one shared prompt, each with its own suffix.

    python benchmarks/shared_prefix.py [--n 1,4,16] [--json FILE] [--trace DIR]

Shape: 32 query heads, 8 KV heads, head dim 128, page size 16, NHD, bf16, pages shuffled; a 4096-token
prompt and 256 own tokens per sample. "plain" is BatchDecodeWrapper over each sample's whole page list
(prompt pages then its own), planned by the scheduler; "cascade" is a two-level CascadeWrapper (the
prompt as one request holding all n queries, then one request per sample). Times are medians of
CUDA-graph replays of each wrapper's launches, cycling through input sets that together exceed L2
(kernels/bench/timing.py). With --trace, one graph replay of each wrapper is also profiled
(torch.profiler): every kernel's start, duration, grid and stream, to see which launch sets the time.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from unittest import mock

import numpy as np
import torch
from flashinfer_build.kernels import cascade, wrappers
from flashinfer_build.kernels.bench.timing import time_calls
from scheduler import BF16, HKV, HQ, PAGE, D, paged_batch, sets_for

PLAN = cascade.plan_cascade


def _batch(n, prefix, suffix, device, sets):
    """The plain wrapper, planned; the cascade's level arrays; caches, queries and outputs per input set."""
    indptr, indices, last, caches, prefix_ids, rest = paged_batch([suffix] * n, sets, device, prefix)
    size = wrappers.workspace_size(HQ, HKV, D, max_batch_size=n, max_num_pages=len(indices))
    plain = wrappers.BatchDecodeWrapper(torch.empty(size, dtype=torch.uint8, device=device))
    plain.plan(indptr, indices, last, HQ, HKV, D, PAGE)
    own = -(-suffix // PAGE)
    levels = (
        [torch.tensor([0, n], dtype=torch.int32), torch.arange(n + 1, dtype=torch.int32)],
        [
            torch.tensor([0, len(prefix_ids)], dtype=torch.int32),
            torch.arange(0, n * own + 1, own, dtype=torch.int32),
        ],
        [torch.from_numpy(prefix_ids), torch.from_numpy(rest)],
        [torch.tensor([PAGE], dtype=torch.int32), last],
    )
    qs = [torch.randn(n, HQ, D, device=device, dtype=BF16) for _ in caches]
    outs = [torch.empty_like(q) for q in qs]
    return plain, levels, list(zip(qs, caches, outs, strict=True))


def _cascade(n, levels, device):
    pages = sum(int(x[-1]) for x in levels[1])
    size = cascade.workspace_size(2, HQ, HKV, D, max_batch_size=n, max_num_tokens=n, max_num_pages=pages)
    casc = cascade.CascadeWrapper(2, torch.empty(size, dtype=torch.uint8, device=device))
    casc.plan(*levels, HQ, HKV, D, PAGE)
    return casc


def _launches(casc):
    """(levels, family, work items, chunk) of each attention launch (older trees: one per level)."""
    plan = casc.plan_
    if hasattr(plan, "launches"):
        return [(x.levels, x.family, x.work.shape[0], [p.chunk_size for p in x.plans]) for x in plan.launches]
    return [
        ((i,), v.family, p.num_items, p.chunk_size)
        for i, (p, (v, *_)) in enumerate(zip(plan.levels, casc.levels, strict=True))
    ]


def _time(wrapper, args):
    return time_calls([wrapper.launcher(q, k, v, o) for q, (k, v), o in args], graph=True).median_us


def bench_cascade(device, ns=(1, 4, 16), prefix=4096, suffix=256):
    rows = []
    for n in ns:
        plain, levels, args = _batch(n, prefix, suffix, device, sets_for(prefix + n * suffix, device))
        casc = _cascade(n, levels, device)
        plain_t, casc_t = _time(plain, args), _time(casc, args)
        q, cache, _ = args[0]
        err = float((plain.run(q, cache).float() - casc.run(q, cache).float()).abs().max())
        rows.append(
            {
                "n": n,
                "plain_us": round(plain_t, 2),
                "cascade_us": round(casc_t, 2),
                "speedup": round(plain_t / casc_t, 3),
                "max_abs_diff": err,
                "launches": _launches(casc),
            }
        )
    return rows


def sweep(device, ns, chunks=(0, 128, 256, 512, 1024), prefix=4096, suffix=256):
    """Cascade time over forced KV chunk sizes (0: the cost model's), as plan_cascade's force_chunk."""
    results = []
    for n in ns:
        plain, levels, args = _batch(n, prefix, suffix, device, sets_for(prefix + n * suffix, device))
        plain_t = _time(plain, args)
        for chunk in chunks:
            with mock.patch.object(cascade, "plan_cascade", functools.partial(PLAN, force_chunk=chunk)):
                casc = _cascade(n, levels, device)
            t = _time(casc, args)
            results.append(
                {
                    "n": n,
                    "chunk": chunk,
                    "cascade_us": round(t, 2),
                    "plain_us": round(plain_t, 2),
                    "speedup": round(plain_t / t, 3),
                    "launches": _launches(casc),
                }
            )
    return results


def trace(device, n, trace_dir, prefix=4096, suffix=256):
    """Kernels of one graph replay of each wrapper: (wrapper, name, start us from the first kernel,
    duration us, grid, stream), from torch.profiler's trace."""
    from torch.profiler import ProfilerActivity, profile

    plain, levels, args = _batch(n, prefix, suffix, device, 1)
    q, cache, out = args[0]
    rows = []
    for label, w in (("plain", plain), ("cascade", _cascade(n, levels, device))):
        launch = w.launcher(q, *cache, out)
        launch()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            launch()
        for _ in range(3):
            g.replay()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            g.replay()
            torch.cuda.synchronize()
        path = f"{trace_dir}/trace_{label}_n{n}.json"
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]
        t0 = min((e["ts"] for e in events), default=0.0)
        for e in sorted(events, key=lambda e: e["ts"]):
            a = e.get("args", {})
            rows.append(
                {
                    "wrapper": label,
                    "kernel": e["name"].split("<")[0].split("(")[0][-40:],
                    "start_us": round(e["ts"] - t0, 2),
                    "dur_us": round(e["dur"], 2),
                    "grid": a.get("grid"),
                    "stream": a.get("stream"),
                }
            )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1,4,16", help="samples per prompt, comma-separated")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--trace", metavar="DIR", help="also profile one graph replay per n into DIR")
    parser.add_argument(
        "--sweep", help="also sweep rows per CTA and chunk sizes at these n (comma-separated)"
    )
    args = parser.parse_args()
    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    np.random.seed(0)
    ns = [int(x) for x in args.n.split(",")]
    results = {
        "device": torch.cuda.get_device_name(device),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "cascade": bench_cascade(device, ns),
    }
    if args.sweep:
        results["sweep"] = sweep(device, [int(x) for x in args.sweep.split(",")])
    if args.trace:
        results["trace"] = {n: trace(device, n, args.trace) for n in ns}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(f"{results['device']}, {results['date']}")
    for r in results.get("sweep", []):
        print(
            f"sweep n={r['n']:<3} chunk {r['chunk']:5}: {r['cascade_us']:7.1f} us "
            f"(plain {r['plain_us']:.1f}, {r['speedup']:.2f}x)  {r['launches']}"
        )
    for n, rows in results.get("trace", {}).items():
        print(
            f"one graph replay, n = {n}: {'wrapper':8} {'kernel':40} {'start us':>9} {'dur us':>8} "
            "grid stream"
        )
        for r in rows:
            print(
                f"{'':22}{r['wrapper']:8} {r['kernel']:40} {r['start_us']:9.2f} {r['dur_us']:8.2f} "
                f"{r['grid']} {r['stream']}"
            )
    print(
        f"{'shared 4k prefix, n':20} {'plain us':>9} {'cascade us':>11} {'speedup':>8} "
        f"{'max |diff|':>11}  levels"
    )
    for r in results["cascade"]:
        print(
            f"{r['n']:<20} {r['plain_us']:9.1f} {r['cascade_us']:11.1f} {r['speedup']:8.2f} "
            f"{r['max_abs_diff']:11.3g}  {r['launches']}"
        )


if __name__ == "__main__":
    main()
