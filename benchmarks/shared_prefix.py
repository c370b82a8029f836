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
import json
import time

import numpy as np
import torch
from flashinfer_build.kernels import cascade, wrappers
from flashinfer_build.kernels.bench.timing import time_calls
from scheduler import BF16, HKV, HQ, PAGE, D, paged_batch, sets_for


def _wrappers(n, prefix, suffix, device, sets):
    """The plain and the cascade wrapper, planned, and the caches/queries/outputs of each input set."""
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
    csize = cascade.workspace_size(
        2, HQ, HKV, D, max_batch_size=n, max_num_tokens=n, max_num_pages=len(prefix_ids) + n * own
    )
    casc = cascade.CascadeWrapper(2, torch.empty(csize, dtype=torch.uint8, device=device))
    casc.plan(*levels, HQ, HKV, D, PAGE)
    qs = [torch.randn(n, HQ, D, device=device, dtype=BF16) for _ in caches]
    outs = [torch.empty_like(q) for q in qs]
    return plain, casc, caches, qs, outs


def bench_cascade(device, ns=(1, 4, 16), prefix=4096, suffix=256):
    rows = []
    for n in ns:
        plain, casc, caches, qs, outs = _wrappers(
            n, prefix, suffix, device, sets_for(prefix + n * suffix, device)
        )
        args = list(zip(qs, caches, outs, strict=True))
        plain_t = time_calls([plain.launcher(q, k, v, o) for q, (k, v), o in args], graph=True).median_us
        casc_t = time_calls([casc.launcher(q, k, v, o) for q, (k, v), o in args], graph=True).median_us
        a, b = plain.run(qs[0], caches[0]), casc.run(qs[0], caches[0])
        err = float((a.float() - b.float()).abs().max())
        rows.append(
            {
                "n": n,
                "plain_us": round(plain_t, 2),
                "cascade_us": round(casc_t, 2),
                "speedup": round(plain_t / casc_t, 3),
                "max_abs_diff": err,
                "cascade_levels": [
                    {"items": p.num_items, "chunk": p.chunk_size, "family": v.family}
                    for p, (v, _, _) in zip(casc.plan_.levels, casc.levels, strict=True)
                ],
            }
        )
    return rows


def trace(device, n, trace_dir, prefix=4096, suffix=256):
    """Kernels of one graph replay of each wrapper: (wrapper, name, start us from the first kernel,
    duration us, grid, stream), from torch.profiler's trace."""
    from torch.profiler import ProfilerActivity, profile

    plain, casc, caches, qs, outs = _wrappers(n, prefix, suffix, device, 1)
    rows = []
    for label, w in (("plain", plain), ("cascade", casc)):
        launch = w.launcher(qs[0], *caches[0], outs[0])
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
    if args.trace:
        results["trace"] = {n: trace(device, n, args.trace) for n in ns}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(f"{results['device']}, {results['date']}")
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
            f"{r['max_abs_diff']:11.3g}  {r['cascade_levels']}"
        )


if __name__ == "__main__":
    main()
