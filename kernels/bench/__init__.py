"""bench: time our kernels and the peers on the same inputs, after checking each against the reference.

For every workload: random inputs (several rotated sets when one set would sit in L2), our wrapper's
plan once, then for ours and each baseline an accuracy check (a few query rows of two requests against
kernels/reference.py, with the accuracy rule of kernels/accuracy.py) and, if it passes, the median time
(kernels/bench/timing.py). FLOP and byte counts (kernels/bench/counts.py) turn times into TFLOP/s,
GB/s and the fraction of the device's ceilings measured at start.

The report (`BenchReport.to_dict`, written by `--json`) has this schema:
    schema    "flashinfer-build.bench/1"
    device    {"name", "num_sms", "l2_bytes", "copy_gbps", "matmul_tflops"}   measured by bench at start
    torch     version;  graph: bool (CUDA-graph replay);  date: ISO date
    rows      [{"workload": {...Workload fields...}, "variant", "flops", "bytes", "input_sets",
                "bound": "memory" | "compute", "floor_us", "speedup": float | null,
                "methods": [{"name", "status": "ok" | "unsupported" | "wrong" | "error" | "not built",
                             "median_us", "p20_us", "p80_us", "tflops", "gbps", "pct_of_peak",
                             "max_abs_err", "tolerance", "note"}]}]
speedup = best baseline's median time / ours (> 1: ours is faster); pct_of_peak = floor_us / median_us,
the floor being the larger of flops / matmul peak and bytes / copy bandwidth.
"""

from __future__ import annotations

import datetime
import gc
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from .. import accuracy, reference
from ..verify.cases import DTYPES
from . import baselines as bench_baselines
from .counts import attention_bytes, attention_flops
from .inputs import BenchInputs, dense_inputs, make_inputs, set_bytes
from .timing import DevicePeaks, Timing, rotation_sets, time_calls
from .workloads import Workload

SCHEMA = "flashinfer-build.bench/1"
CHECK_ROWS = 32  # query rows per checked request: enough to catch a wrong tile, cheap for 32k keys


@dataclass
class MethodResult:
    name: str
    status: str
    timing: Timing | None = None
    note: str = ""
    check: accuracy.Comparison | None = None

    def to_dict(self, flops: int, nbytes: int, floor_us: float) -> dict:
        t = self.timing.median_us if self.timing else None
        return {
            "name": self.name,
            "status": self.status,
            "median_us": t,
            "p20_us": self.timing.p20_us if self.timing else None,
            "p80_us": self.timing.p80_us if self.timing else None,
            "tflops": flops / t / 1e6 if t else None,
            "gbps": nbytes / t / 1e3 if t else None,
            "pct_of_peak": 100 * floor_us / t if t else None,
            "max_abs_err": self.check.max_abs_err if self.check else None,
            "tolerance": self.check.tolerance if self.check else None,
            "note": self.note,
        }


@dataclass
class Row:
    workload: Workload
    variant: str
    flops: int
    bytes: int
    input_sets: int
    methods: list[MethodResult] = field(default_factory=list)

    def ours(self) -> MethodResult | None:
        return next((m for m in self.methods if m.name == "ours"), None)

    def best_baseline(self) -> MethodResult | None:
        timed = [m for m in self.methods if m.name != "ours" and m.status == "ok" and m.timing]
        return min(timed, key=lambda m: m.timing.median_us, default=None)

    def speedup(self) -> float | None:
        ours, best = self.ours(), self.best_baseline()
        if not (ours and ours.timing and best):
            return None
        return best.timing.median_us / ours.timing.median_us

    def floor(self, peaks: DevicePeaks) -> tuple[float, str]:
        compute_us = self.flops / (peaks.matmul_tflops * 1e6)
        memory_us = self.bytes / (peaks.copy_gbps * 1e3)
        return (memory_us, "memory") if memory_us >= compute_us else (compute_us, "compute")

    def to_dict(self, peaks: DevicePeaks) -> dict:
        floor_us, bound = self.floor(peaks)
        return {
            "workload": self.workload.to_dict(),
            "variant": self.variant,
            "flops": self.flops,
            "bytes": self.bytes,
            "input_sets": self.input_sets,
            "bound": bound,
            "floor_us": floor_us,
            "speedup": self.speedup(),
            "methods": [m.to_dict(self.flops, self.bytes, floor_us) for m in self.methods],
        }


@dataclass
class BenchReport:
    peaks: DevicePeaks
    graph: bool
    rows: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "device": self.peaks.to_dict(),
            "torch": torch.__version__,
            "graph": self.graph,
            "date": datetime.date.today().isoformat(),
            "rows": [r.to_dict(self.peaks) for r in self.rows],
        }


def row_counts(w: Workload) -> tuple[int, int]:
    """(FLOPs, minimum bytes) of a workload (kernels/bench/counts.py)."""
    flops = attention_flops(w.q_lens, w.total_kv_lens, w.num_qo_heads, w.head_dim, w.mask, w.window_left)
    nbytes = attention_bytes(
        w.q_lens,
        w.kv_lens,
        w.num_qo_heads,
        w.num_kv_heads,
        w.head_dim,
        q_dtype=w.q_dtype,
        kv_dtype=w.kv_dtype,
        mask=w.mask,
        window_left=w.window_left,
        shared_prefix=w.shared_prefix,
    )
    return flops, nbytes


RowFn = Callable[[int, int, Row], None]  # (rows done, rows in all, the row just finished)


def bench(
    workloads: list[Workload],
    peaks: DevicePeaks,
    *,
    arch: str,
    built: set[str] | None = None,
    baselines: tuple[str, ...] = bench_baselines.BASELINES,
    graph: bool = False,
    seed: int = 0,
    on_row: RowFn | None = None,
) -> BenchReport:
    """Time `workloads` on the current GPU with the kernels of pack `arch`. `built`: the variant ids
    the packs hold (None: do not check; a workload whose variant is missing gets status "not built")."""
    from .. import loader

    report = BenchReport(peaks, graph)
    memo: dict[tuple, MethodResult] = {}
    generator = torch.Generator(device="cuda").manual_seed(seed)
    for i, w in enumerate(workloads):
        with loader.pinned_arch(arch):
            row = _bench_row(w, arch, built, baselines, graph, peaks, generator, memo)
        report.rows.append(row)
        gc.collect()
        torch.cuda.empty_cache()
        if on_row:
            on_row(i + 1, len(workloads), row)
    return report


def _bench_row(w, arch, built, baselines, graph, peaks, generator, memo) -> Row:
    variant = w.variant(arch)
    flops, nbytes = row_counts(w)
    sets = rotation_sets(set_bytes(w), peaks.l2_bytes, torch.cuda.mem_get_info()[0])
    row = Row(w, variant.id, flops, nbytes, sets)
    inputs = [make_inputs(w, "cuda", generator) for _ in range(sets)]
    checked = _checked_requests(w)
    refs = _references(w, inputs[0], checked)
    if built is not None and variant.id not in built:
        row.methods.append(MethodResult("ours", "not built", note=f"{variant.id} is in no kernel pack"))
    else:
        ours = _measure("ours", lambda: _ours(w, inputs, graph), w, inputs[0], checked, refs, graph)
        row.methods.append(ours)
    key = _baseline_key(w)
    for name in baselines:
        if (name, key) not in memo:
            build = lambda name=name: _baseline_calls(name, w, inputs)  # noqa: E731
            memo[(name, key)] = _measure(name, build, w, inputs[0], checked, refs, graph)
        row.methods.append(memo[(name, key)])
    return row


def _baseline_key(w: Workload) -> tuple:
    """Workloads that are the same problem for the baselines (which read KV in the query dtype and have
    no split-KV or cascade switch) share one measurement."""
    same = replace(w, name="", group="", kv_dtype=w.q_dtype, split_kv=True, cascade=False)
    return (repr(sorted(same.to_dict().items())),)


def _measure(name, build, w, first: BenchInputs, checked, refs, graph) -> MethodResult:
    """Build the method's calls, check the first set's output, then time all sets."""
    try:
        calls, packed_output, note = build()
    except bench_baselines.Unsupported as e:
        return MethodResult(name, "unsupported", note=str(e))
    except Exception as e:  # a method that breaks is reported on its row, the others still run
        return MethodResult(name, "error", note=f"{type(e).__name__}: {e}".splitlines()[0][:200])
    try:
        out = packed_output(calls[0]())
        torch.cuda.synchronize()
        check = _check(w, first, out, checked, refs)
        if not check.passed:
            return MethodResult(name, "wrong", note=check.problem(), check=check)
        try:
            timing = time_calls(calls, graph=graph)
        except RuntimeError as e:
            if not graph:
                raise
            timing = time_calls(calls)
            note = ", ".join(filter(None, [note, f"no CUDA graph ({str(e).splitlines()[0][:80]})"]))
        return MethodResult(name, "ok", timing, note, check)
    except Exception as e:
        detail = traceback.format_exception_only(type(e), e)[-1].strip()[:200]
        return MethodResult(name, "error", note=detail)


def _ours(w: Workload, inputs: list[BenchInputs], graph: bool):
    from .ours import prepare_ours

    make = prepare_ours(w, inputs[0], graph)
    return [make(x) for x in inputs], lambda o: o, ""


def _baseline_calls(name: str, w: Workload, inputs: list[BenchInputs]):
    made = [bench_baselines.build(name, w, dense_inputs(w, x)) for x in inputs]
    return [b.call for b in made], made[0].packed_output, made[0].note


def _checked_requests(w: Workload) -> list[int]:
    with_queries = [r for r, q in enumerate(w.q_lens) if q]
    longest = max(with_queries, key=lambda r: w.total_kv_lens[r])
    return sorted({with_queries[0], longest})


def _request_rows(w: Workload, r: int) -> slice:
    start = sum(w.q_lens[:r])
    return slice(start + w.q_lens[r] - min(w.q_lens[r], CHECK_ROWS), start + w.q_lens[r])


def _references(w: Workload, x: BenchInputs, checked: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(float64 reference, reference in the query dtype) of the checked rows of each checked request."""
    from ...variants import hooks

    slopes = hooks.alibi_slopes(w.num_qo_heads).to(x.q.device) if w.pos == "alibi" else None
    refs = []
    for r in checked:
        if w.page_size:
            args = (x.kv_indptr, x.kv_indices, x.kv_last_page_len, r)
            k, v = reference.gather_paged(x.k, *args), reference.gather_paged(x.v, *args)
        else:
            lo, hi = int(x.kv_indptr[r]), int(x.kv_indptr[r + 1])
            k, v = x.k[lo:hi], x.v[lo:hi]
        q = x.q[_request_rows(w, r)]
        kw = dict(
            mask=w.mask,
            pos=w.pos,
            soft_cap=w.soft_cap or None,
            window_left=w.window_left,
            alibi_slopes=slopes,
        )
        hi_ref = reference.attention(q, k, v, dtype=torch.float64, **kw)[0]
        lo_ref = reference.attention(q, k, v, dtype=DTYPES[w.q_dtype], **kw)[0]
        refs.append((hi_ref, lo_ref))
    return refs


def _check(w: Workload, x: BenchInputs, out: torch.Tensor, checked, refs) -> accuracy.Comparison:
    if out.shape != x.q.shape:
        raise ValueError(f"output shape {tuple(out.shape)} != {tuple(x.q.shape)}")
    pairs = zip(checked, refs, strict=True)
    parts = [accuracy.compare(out[_request_rows(w, r)], hi, lo) for r, (hi, lo) in pairs]
    return accuracy.merge(parts)
