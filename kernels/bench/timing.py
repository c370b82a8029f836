"""Timing on the GPU: the device's own ceilings, and the median time of a call over rotated inputs.

Times come from CUDA events. Each sample runs `inner` calls back to back, cycling through several
input sets so that repeated runs do not find their inputs in L2, and the time per call is the sample's
time over `inner`; the result is the median over samples, after a warm-up that also triggers any lazy
initialisation (module load, autotuning, compilation). With `graph=True` the `inner` calls are
captured once into a CUDA graph and the samples time its replays: launch gaps and host overhead drop
out, as in a serving loop that replays graphs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

SAMPLE_SECONDS = 1e-3  # a sample long enough that event resolution (~0.5 us) does not matter


@dataclass(frozen=True)
class DevicePeaks:
    """What bench measures on the device at start, to express results as a fraction of the ceiling."""

    name: str
    num_sms: int
    l2_bytes: int
    copy_gbps: float  # device-to-device copy, bytes read + bytes written per second / 1e9
    matmul_tflops: float  # bf16 matrix product, 2 * n^3 / second / 1e12

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    median_us: float
    p20_us: float
    p80_us: float
    samples: int
    calls_per_sample: int
    graph: bool

    def to_dict(self) -> dict:
        return asdict(self)


def measure_peaks(
    device: torch.device | None = None, *, copy_bytes: int = 1 << 30, matmul_n: int = 8192
) -> DevicePeaks:
    """Copy bandwidth over `copy_bytes` and the bf16 matmul rate at n = `matmul_n`, each the median of
    timed runs on random data (zeros run faster on some GPUs and would flatter the ceiling)."""
    device = device or torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    src = torch.randn(copy_bytes // 4, device=device)
    dst = torch.empty_like(src)
    copy = time_calls([lambda: dst.copy_(src)], warmup=3, min_samples=10, max_samples=20)
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    mm = time_calls([lambda: torch.mm(a, b)], warmup=3, min_samples=10, max_samples=20)
    return DevicePeaks(
        name=props.name,
        num_sms=props.multi_processor_count,
        l2_bytes=getattr(props, "L2_cache_size", 50 << 20),
        copy_gbps=2 * copy_bytes / (copy.median_us * 1e-6) / 1e9,
        matmul_tflops=2 * matmul_n**3 / (mm.median_us * 1e-6) / 1e12,
    )


def rotation_sets(set_bytes: int, l2_bytes: int, free_bytes: int, *, most: int = 32) -> int:
    """How many copies of a call's inputs to cycle through: enough that together they are three times
    L2 (so each call finds its inputs evicted), at most `most`, and within half the free memory."""
    if set_bytes <= 0:
        return 1
    wanted = math.ceil(3 * l2_bytes / set_bytes)
    affordable = max(1, (free_bytes // 2) // set_bytes)
    return max(1, min(wanted, most, affordable))


def time_calls(
    calls: Sequence[Callable[[], object]],
    *,
    graph: bool = False,
    warmup: int = 5,
    min_samples: int = 10,
    max_samples: int = 100,
    budget_seconds: float = 0.2,
) -> Timing:
    """Median time of one call, cycling through `calls` (one per rotated input set)."""
    if not calls:
        raise ValueError("time_calls needs at least one call")
    for i in range(max(warmup, len(calls))):
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    estimate = _time_once(calls, len(calls)) / len(calls)
    inner = len(calls) * max(1, math.ceil(SAMPLE_SECONDS / max(estimate, 1e-7) / len(calls)))
    step = _graph_step(calls, inner) if graph else (lambda: _run(calls, inner))
    samples = int(min(max_samples, max(min_samples, budget_seconds / max(estimate * inner, 1e-7))))
    step()  # a graph's first replay uploads it
    times = sorted(_time_once_step(step) / inner for _ in range(samples))
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return Timing(
        median_us=statistics.median(times) * 1e6,
        p20_us=q[0] * 1e6,
        p80_us=q[3] * 1e6,
        samples=samples,
        calls_per_sample=inner,
        graph=graph,
    )


def _run(calls, n: int) -> None:
    for i in range(n):
        calls[i % len(calls)]()


def _graph_step(calls, n: int) -> Callable[[], None]:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _run(calls, len(calls))  # warm the side stream (allocator pools, lazy handles) before capture
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        _run(calls, n)
    torch.cuda.synchronize()
    return g.replay


def _time_once(calls, n: int) -> float:
    return _time_once_step(lambda: _run(calls, n))


def _time_once_step(step) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e-3
