"""Host time of the wrappers' `plan` at batch 256 (issue 4: under 50 us), with the Python planner
(kernels/scheduler.py) and the C planner (kernels/csrc/plan, kernels/native_plan.py).

    python benchmarks/plan_time.py [--calls N] [--json FILE] [--planner LIB] [--profile WORKLOAD [--python]]
    FLASHINFER_BUILD_PACK=build python benchmarks/plan_time.py --gpu      # on a GPU machine

Without --gpu, on the CPU: times the whole user-facing path, BatchDecodeWrapper.plan and
BatchPrefillWrapper.plan (argument checks, variant lookup, planning, packing the staging buffer, the
upload call), with the device-touching seams of kernels/wrapper_engine.py replaced by host stand-ins:
the workspace is a CPU tensor (check_workspace), the kernel shape is an H100's decode/prefill kernel
(kernel_shape), the C planner is built here with the host compiler (native_planner; or --planner), and
the staging buffer is plain host memory whose upload is not timed (Staging: on a GPU it is one
asynchronous copy). kv_indices are given "on the device" (a tensor on the workspace's device, used in
place, as serving stacks keep them) and on the host (copied into the workspace). Medians over --calls
calls after a warm-up; scheduler.plan alone is timed too.

With --gpu nothing is stubbed (run_gpu): the same decode plans through the pack's planner, upload
included, and a check that each plan's attention output equals the Python plan's.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import platform
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from flashinfer_build.kernels import native_plan, scheduler, wrapper_engine, wrappers
from flashinfer_build.wheelbuild import planner as planner_build
from flashinfer_build.wheelbuild.options import BuildOptions

HQ, HKV, D, PAGE, BATCH = 32, 8, 128, 16, 256
H100_DECODE = scheduler.KernelShape(num_sms=132, ctas_per_sm=2, cta_tile_q=4, cta_tile_kv=64)
H100_PREFILL = scheduler.KernelShape(num_sms=132, ctas_per_sm=1, cta_tile_q=128, cta_tile_kv=64)


class HostStaging(wrapper_engine.Staging):
    """Staging without a GPU: a plain host buffer; the upload (a DMA on a GPU) does nothing."""

    pinned = False

    def reserve(self, nbytes: int) -> np.ndarray:
        if self.host.numel() * 4 < nbytes:
            self._allocate(max(nbytes // 4, 2 * self.host.numel()))
        return self.array

    def upload(self, workspace: torch.Tensor, nbytes: int) -> None:
        self.uploaded_bytes = nbytes  # the real upload is an asynchronous DMA: no host copy to time


@contextlib.contextmanager
def host_seams(planner=None):
    """The wrappers with their device-touching pieces replaced by host stand-ins (module docstring);
    `planner`: the C decode planner to plan with (None: the Python planner)."""

    def shape(variant, device_index):
        return H100_DECODE if variant.family == "decode" else H100_PREFILL

    with (
        mock.patch.object(wrapper_engine, "check_workspace", lambda workspace: None),
        mock.patch.object(wrapper_engine, "kernel_shape", shape),
        mock.patch.object(wrapper_engine, "native_planner", lambda variant, device_index: planner),
        mock.patch.object(wrapper_engine, "Staging", HostStaging),
    ):
        yield


def host_planner(path: str | None):
    """The C planner from a shared object (a kernel pack's library), or built here with the host C++
    compiler (wheelbuild.planner.build_host_library)."""
    if path is None:
        out = Path(tempfile.mkdtemp(prefix="fib-plan-")) / "libfib_plan.so"
        path = str(planner_build.build_host_library(BuildOptions().csrc_dir, out))
    return native_plan.host_library(path)


def workspace(nbytes: int) -> torch.Tensor:
    """A host workspace at the alignment the engine asks of it (the CPU allocator gives 64 bytes)."""
    raw = torch.empty(nbytes + scheduler.ALIGN_BYTES, dtype=torch.uint8)
    skip = -raw.data_ptr() % scheduler.ALIGN_BYTES
    return raw[skip : skip + nbytes]


def paged(kv_lens, rng):
    pages = [-(-n // PAGE) for n in kv_lens]
    indptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
    last = np.array(
        [n - (p - 1) * PAGE if p else PAGE for n, p in zip(kv_lens, pages, strict=True)], np.int32
    )
    indices = rng.permutation(int(indptr[-1])).astype(np.int32)
    return indptr, indices, last


def workloads(rng):
    return {
        "uniform 8k": [8192] * BATCH,
        "skewed 1x32k+255x512": [32768] + [512] * (BATCH - 1),
        "random 1..32k": rng.integers(1, 32768, BATCH).tolist(),
    }


def median_us(fn, calls):
    for _ in range(min(calls, 50)):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def decode_calls(kv_lens, rng):
    """(label, callable) pairs: the wrapper's plan with device and host kv_indices, scheduler.plan."""
    indptr, indices, last = paged(kv_lens, rng)
    size = wrappers.workspace_size(HQ, HKV, D, max_batch_size=BATCH, max_num_pages=indices.shape[0])
    w = wrappers.BatchDecodeWrapper(workspace(size))
    t_indptr, t_indices, t_last = (torch.from_numpy(a) for a in (indptr, indices, last))
    kv = scheduler.kv_lengths(indptr, last, PAGE)
    return w, [
        ("decode, kv_indices on device", lambda: w.plan(t_indptr, t_indices, t_last, HQ, HKV, D, PAGE)),
        ("decode, kv_indices on host", lambda: w.plan(t_indptr, indices, t_last, HQ, HKV, D, PAGE)),
        (
            "scheduler.plan alone",
            lambda: scheduler.plan(
                None, kv, num_qo_heads=HQ, num_kv_heads=HKV, page_size=PAGE, kernel=H100_DECODE
            ),
        ),
    ]


def prefill_call(kv_lens, rng, q_len=16):
    """The prefill wrapper's plan (paged, causal) with q_len queries per request, indices on device."""
    indptr, indices, last = paged(kv_lens, rng)
    qo_indptr = torch.arange(0, q_len * (BATCH + 1), q_len, dtype=torch.int32)
    size = wrappers.workspace_size(
        HQ, HKV, D, max_batch_size=BATCH, max_num_tokens=q_len * BATCH, decode=False
    )
    w = wrappers.BatchPrefillWrapper(workspace(size))
    args = (qo_indptr, torch.from_numpy(indptr), HQ, HKV, D)
    kw = dict(kv_indices=torch.from_numpy(indices), kv_last_page_len=torch.from_numpy(last), page_size=PAGE)
    return w, lambda: w.plan(*args, **kw)


def run(calls, planner):
    """Rows of (workload, call, planner, us): each decode call with the Python and the C planner."""
    rows = []
    for which, fn_ in (("python", None), ("C", planner)):
        rng = np.random.default_rng(0)
        with host_seams(fn_):
            for name, kv_lens in workloads(rng).items():
                w, fns = decode_calls(kv_lens, rng)
                for label, fn in fns[:2]:
                    us = round(median_us(fn, calls), 1)
                    rows.append({"workload": name, "call": label, "planner": which, "us": us})
                    rows[-1]["split"] = w.plan_info.split
                if which == "python":
                    us = round(median_us(fns[2][1], calls), 1)
                    rows.append({"workload": name, "call": fns[2][0], "planner": which, "us": us})
                pw, fn = prefill_call(kv_lens, rng)
                us = round(median_us(fn, calls), 1)
                rows.append(
                    {"workload": name, "call": "prefill q_len 16, causal", "planner": which, "us": us}
                )
                rows[-1]["split"] = pw.plan_info.split
    return rows


def run_gpu(calls):
    """On a GPU, nothing stubbed: each decode workload planned by the Python planner, by the pack's C
    planner with torch's upload ("C") and with its own (one foreign call, "C+upload"), kv_indices on the
    device and on the host, and a prefill of 16 causal queries per request over the same KV; torch's
    upload alone; and the attention output of each plan (equal bit for bit: the plans are the same)."""
    real = wrapper_engine.native_planner

    def plan_only(variant, device_index):
        planner = real(variant, device_index)
        return planner and planner._replace(upload=None, prefill_upload=None)

    planners = {"python": lambda variant, device_index: None, "C": plan_only, "C+upload": real}
    rng = np.random.default_rng(0)
    rows, checks = [], []
    q = torch.randn(BATCH, HQ, D, device="cuda", dtype=torch.bfloat16)
    q_len = 16
    q_prefill = torch.randn(BATCH * q_len, HQ, D, device="cuda", dtype=torch.bfloat16)
    qo_indptr = torch.arange(0, q_len * (BATCH + 1), q_len, dtype=torch.int32)
    prefill_size = wrappers.workspace_size(
        HQ, HKV, D, max_batch_size=BATCH, max_num_tokens=q_len * BATCH, decode=False
    )
    for name, kv_lens in workloads(rng).items():
        indptr, indices, last = paged(kv_lens, rng)
        size = wrappers.workspace_size(HQ, HKV, D, max_batch_size=BATCH, max_num_pages=indices.shape[0])
        t_indptr, t_last, t_indices = (torch.from_numpy(a) for a in (indptr, last, indices))
        d_indices = t_indices.cuda()
        k = torch.randn(indices.shape[0], PAGE, HKV, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        outs = {}
        for which, planner in planners.items():
            with mock.patch.object(wrapper_engine, "native_planner", planner):
                w = wrappers.BatchDecodeWrapper(torch.empty(size, dtype=torch.uint8, device="cuda"))
                for where, ids in (("device", d_indices), ("host", t_indices)):

                    def plan(w=w, ptr=t_indptr, ids=ids, last=t_last):
                        w.plan(ptr, ids, last, HQ, HKV, D, PAGE)

                    us = round(median_us(plan, calls), 1)
                    call = f"decode, kv_indices on {where}"
                    rows.append({"workload": name, "call": call, "planner": which, "us": us})
                    rows[-1]["split"] = w.plan_info.split
                w.plan(t_indptr, d_indices, t_last, HQ, HKV, D, PAGE)
                native = w._engine.native[1]
                assert (native is None) == (which == "python"), f"{which}: wrong planner"
                assert which == "python" or (native.planner.upload is not None) == (which == "C+upload")
                outs[which] = w.run(q, (k, v))
                pw = wrappers.BatchPrefillWrapper(torch.empty(prefill_size, dtype=torch.uint8, device="cuda"))

                def plan_prefill(pw=pw, ptr=t_indptr, last=t_last, ids=d_indices):
                    pw.plan(
                        qo_indptr,
                        ptr,
                        HQ,
                        HKV,
                        D,
                        kv_indices=ids,
                        kv_last_page_len=last,
                        page_size=PAGE,
                    )

                us = round(median_us(plan_prefill, calls), 1)
                rows.append(
                    {"workload": name, "call": "prefill q_len 16, causal", "planner": which, "us": us}
                )
                rows[-1]["split"] = pw.plan_info.split
                plan_prefill()
                outs["prefill " + which] = pw.run(q_prefill, (k, v))
                if which == "C":
                    e = w._engine
                    nbytes = e.counts[0] * 24  # about what a plan uploads: its work list and small arrays

                    def upload(staging=e.staging, e=e, nbytes=nbytes):
                        staging.reserve(nbytes)
                        staging.upload(e.workspace, nbytes)

                    us = round(median_us(upload, calls), 1)
                    rows.append({"workload": name, "call": "torch upload alone", "planner": "-", "us": us})
        torch.cuda.synchronize()
        for which in ("C", "C+upload"):
            checks.append((name, which, torch.equal(outs["python"], outs[which])))
            checks.append(
                (name, "prefill " + which, torch.equal(outs["prefill python"], outs["prefill " + which]))
            )
        del k, v
    return rows, checks


def profile(name, calls, planner):
    rng = np.random.default_rng(0)
    with host_seams(planner):
        _, fns = decode_calls(workloads(rng)[name], rng)
        fn = fns[0][1]
        fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            fn()
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--profile", metavar="WORKLOAD", help="cProfile the decode plan of one workload")
    parser.add_argument("--python", action="store_true", help="with --profile: the Python planner")
    parser.add_argument("--planner", help="a shared object with the C planner (default: build it here)")
    parser.add_argument("--gpu", action="store_true", help="on the GPU, with the pack's planner (no seams)")
    args = parser.parse_args()
    if args.gpu:
        rows, checks = run_gpu(args.calls)
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), ""
        )
        print(
            f"plan wall time at batch {BATCH}, {time.strftime('%Y-%m-%d')}, {torch.cuda.get_device_name()}, "
            f"host {cpu}, median of {args.calls} calls"
        )
        print_rows(rows)
        for name, which, equal in checks:
            print(
                f"{name}: output of the {which} plan {'equals' if equal else 'DIFFERS FROM'} the Python one's"
            )
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rows": rows, "checks": checks, "host": cpu}, f, indent=2)
        return
    planner = host_planner(args.planner)
    if args.profile:
        profile(args.profile, args.calls, None if args.python else planner)
        return
    rows = run(args.calls, planner)
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=2)
    print(f"plan host time at batch {BATCH}, {meta['date']}, {meta['cpu']}, median of {args.calls} calls")
    print_rows(rows)


def print_rows(rows):
    print(f"{'workload':22} {'call':38} {'planner':7} {'us':>7}  split")
    for r in sorted(rows, key=lambda r: (r["workload"], r["call"])):
        print(f"{r['workload']:22} {r['call']:38} {r['planner']:7} {r['us']:7.1f}  {r.get('split', '')}")


if __name__ == "__main__":
    main()
