"""Batch-decode bandwidth of the built decode kernels beside PyTorch SDPA, on an H100-like GPU.

    python benchmarks/decode.py [--graph] [--batches 1,16,64,256] [--kv 1024,8192,32768]
                                [--kv-dtypes bf16,fp8e4m3] [--no-sdpa] [--json FILE]
                                [--layout NHD|HND] [--page-size 16] [--sequential-pages]

Shape (issue 3): 32 query heads, 8 KV heads, head dim 128, page size 16, NHD, bf16 queries, every
request of the batch with the same KV length, pages shuffled (--sequential-pages: in order). GB/s
counts the bytes a decode step must move (K and V once, q read, o written) over the median time;
"% copy" is that over the device's own copy bandwidth measured at start. Small batches use a split
work list (KV chunks, then the merge kernel), sized to fill one wave of CTAs; the time then
includes the merge. SDPA rows run torch.nn.functional.scaled_dot_product_attention on dense
[batch, heads, kv, 128] bf16 tensors of the same sizes (its own GQA where the backend has it).
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from flashinfer_build.kernels import ops
from flashinfer_build.kernels.bench.timing import measure_peaks, rotation_sets, time_calls
from flashinfer_build.kernels.checks import torch_dtype
from flashinfer_build.variants import Variant

QO_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
GROUP = QO_HEADS // KV_HEADS


def split_chunk(batch: int, kv_len: int, slots: int, tile: int) -> int | None:
    """KV chunk length that fills one wave of CTA slots, or None when the batch already does."""
    if batch * KV_HEADS >= slots // 2:
        return None
    chunks = math.ceil(slots / (batch * KV_HEADS))
    return max(tile, math.ceil(kv_len / chunks / tile) * tile)


def work_list(batch: int, kv_len: int, chunk: int | None, device):
    items, merge_indptr, merge_indices = [], [0], []
    for r in range(batch):
        if chunk is None:
            items.append([r, 0, GROUP, 0, kv_len, -1])
            continue
        for b in range(0, kv_len, chunk):
            merge_indices.append(len(items))
            items.append([r, 0, GROUP, b, min(kv_len, b + chunk), len(items)])
        merge_indptr.append(len(merge_indices))
    i32 = dict(dtype=torch.int32, device=device)
    return torch.tensor(items, **i32), torch.tensor(merge_indptr, **i32), torch.tensor(merge_indices, **i32)


def random_tensor(shape, dtype, device, block: int = 1 << 28) -> torch.Tensor:
    """Standard normal values in `dtype`, drawn a block at a time (no float32 copy of a huge cache)."""
    t = torch.empty(shape, dtype=dtype, device=device)
    flat = t.view(-1)
    for i in range(0, flat.numel(), block):
        n = min(block, flat.numel() - i)
        flat[i : i + n] = torch.randn(n, device=device, dtype=torch.bfloat16).to(dtype)
    return t


def decode_calls(variant, batch, kv_len, sets, chunk, device, *, page_size, layout, sequential):
    """One launch closure per rotated input set (attention, then merge when split)."""
    kv_dtype = torch_dtype(variant.kv_dtype)
    pages_per_req = math.ceil(kv_len / page_size)
    num_pages = batch * pages_per_req
    i32 = dict(dtype=torch.int32, device=device)
    indptr = torch.arange(0, num_pages + 1, pages_per_req, **i32)
    last = torch.full((batch,), kv_len - (pages_per_req - 1) * page_size, **i32)
    work, merge_indptr, merge_indices = work_list(batch, kv_len, chunk, device)
    calls = []
    for _ in range(sets):
        shape = (
            (num_pages, page_size, KV_HEADS, HEAD_DIM)
            if layout == "NHD"
            else (num_pages, KV_HEADS, page_size, HEAD_DIM)
        )
        k, v = random_tensor(shape, kv_dtype, device), random_tensor(shape, kv_dtype, device)
        order = (
            torch.arange(num_pages, device=device) if sequential else torch.randperm(num_pages, device=device)
        )
        indices = order.to(torch.int32)
        q = torch.randn(batch, QO_HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
        o = torch.empty_like(q)
        kw = dict(kv_indptr=indptr, kv_indices=indices, kv_last_page_len=last, work=work, kv_layout=layout)
        if chunk is None:
            attn = ops.prepare_attention(variant, q, k, v, o, **kw)
            calls.append(lambda a=attn, q=q, k=k, v=v, o=o: a.launch(q, k, v, o))
        else:
            rows = work.shape[0]
            po = torch.empty(rows, QO_HEADS, HEAD_DIM, device=device)
            pl = torch.empty(rows, QO_HEADS, device=device)
            attn = ops.prepare_attention(variant, q, k, v, o, partial_o=po, partial_lse=pl, **kw)
            merge = ops.prepare_merge(po, pl, merge_indptr, merge_indices, o)

            def call(a=attn, m=merge, q=q, k=k, v=v, o=o):
                a.launch(q, k, v, o)
                m.launch(o)

            calls.append(call)
    return calls


def sdpa_times(batch, kv_len, device, l2_bytes, graph) -> dict[str, float | None]:
    """Median us per SDPA backend on rotated dense inputs (CUDA graph replays where the backend
    captures); {} when two copies would not fit."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    set_bytes = 2 * batch * KV_HEADS * kv_len * HEAD_DIM * 2
    free = torch.cuda.mem_get_info()[0]
    if 2 * set_bytes > free:
        return {}
    sets = []
    for _ in range(rotation_sets(set_bytes, l2_bytes, free)):
        q = torch.randn(batch, QO_HEADS, 1, HEAD_DIM, device=device, dtype=torch.bfloat16)
        shape = (batch, KV_HEADS, kv_len, HEAD_DIM)
        sets.append(
            (q, random_tensor(shape, torch.bfloat16, device), random_tensor(shape, torch.bfloat16, device))
        )
    out = {}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        calls = []
        for q, k, v in sets:

            def call(backend=backend, q=q, k=k, v=v):
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

            calls.append(call)
        try:
            calls[0]()
        except RuntimeError:
            out[name] = None
            continue
        try:
            out[name] = time_calls(calls, graph=graph).median_us
        except RuntimeError:
            out[name] = time_calls(calls).median_us
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--kv", default="1024,8192,32768")
    ap.add_argument("--kv-dtypes", default="bf16,fp8e4m3")
    ap.add_argument("--graph", action="store_true", help="time CUDA graph replays of the launches")
    ap.add_argument("--no-sdpa", action="store_true")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--layout", default="NHD", choices=("NHD", "HND"))
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument(
        "--sequential-pages", action="store_true", help="page table in memory order, not shuffled"
    )
    args = ap.parse_args()
    device = torch.device("cuda")
    peaks = measure_peaks(device, matmul_n=1024)
    print(f"device {peaks.name}: {peaks.num_sms} SMs, copy bandwidth {peaks.copy_gbps:.0f} GB/s")
    rows = []
    for batch in map(int, args.batches.split(",")):
        for kv_len in map(int, args.kv.split(",")):
            kv_bytes = {}
            for kv_name in args.kv_dtypes.split(","):
                variant = Variant(
                    family="decode", arch="sm90a", q_dtype="bf16", kv_dtype=kv_name, head_dim=HEAD_DIM
                )
                info = ops.kernel_info(variant, device)
                chunk = split_chunk(batch, kv_len, info.ctas_per_sm * peaks.num_sms, info.cta_tile_kv)
                elem = torch_dtype(kv_name).itemsize
                moved = 2 * batch * kv_len * KV_HEADS * HEAD_DIM * elem + 2 * batch * QO_HEADS * HEAD_DIM * 2
                sets = rotation_sets(moved, peaks.l2_bytes, torch.cuda.mem_get_info()[0])
                calls = decode_calls(
                    variant,
                    batch,
                    kv_len,
                    sets,
                    chunk,
                    device,
                    page_size=args.page_size,
                    layout=args.layout,
                    sequential=args.sequential_pages,
                )
                t = time_calls(calls, graph=args.graph).median_us
                del calls
                torch.cuda.empty_cache()
                gbps = moved / (t * 1e-6) / 1e9
                kv_bytes[kv_name] = t
                row = dict(
                    batch=batch,
                    kv_len=kv_len,
                    kv_dtype=kv_name,
                    chunk=chunk or kv_len,
                    us=t,
                    gbps=gbps,
                    pct_copy=100 * gbps / peaks.copy_gbps,
                    graph=args.graph,
                )
                if kv_name != "bf16" and "bf16" in kv_bytes:
                    row["speedup_vs_bf16"] = kv_bytes["bf16"] / t
                if kv_name == "bf16" and not args.no_sdpa:
                    for name, us in sdpa_times(batch, kv_len, device, peaks.l2_bytes, args.graph).items():
                        row[f"sdpa_{name}_us"] = us
                        row[f"sdpa_{name}_gbps"] = moved / (us * 1e-6) / 1e9 if us else None
                    torch.cuda.empty_cache()
                rows.append(row)
                print(_line(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": peaks.to_dict(), "rows": rows}, f, indent=1)


def _line(r: dict) -> str:
    text = (
        f"batch {r['batch']:4d} kv {r['kv_len']:6d} {r['kv_dtype']:8s} chunk {r['chunk']:6d}: "
        f"{r['us']:9.1f} us {r['gbps']:7.0f} GB/s {r['pct_copy']:5.1f}% of copy"
    )
    if "speedup_vs_bf16" in r:
        text += f"  x{r['speedup_vs_bf16']:.2f} vs bf16"
    for name in ("cudnn", "flash"):
        us = r.get(f"sdpa_{name}_us")
        if f"sdpa_{name}_us" in r:
            text += f"  sdpa-{name} " + (f"{us:.1f} us {r[f'sdpa_{name}_gbps']:.0f} GB/s" if us else "n/a")
    return text


if __name__ == "__main__":
    main()
