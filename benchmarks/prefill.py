"""Prefill TFLOP/s of the built prefill kernels beside PyTorch SDPA's FLASH_ATTENTION and CUDNN backends.

    python benchmarks/prefill.py [--head-dims 64,128,256] [--tokens 2048,8192] [--heads 32]
                                 [--dtype bf16] [--no-sdpa] [--json FILE]

Shape (issue 3): one request of N query tokens over the same N keys (ragged KV, [N, heads, D]),
32 query and 32 KV heads, causal and not. FLOP = 4 * N * N * heads * D, halved for causal. Our work
list has one item per 128-row query tile, the heaviest (causal: last) tiles of each head first, so
the last wave holds the cheapest tiles. SDPA runs on the same tensors as [1, heads, N, D] views.
Times are CUDA-event medians after a warm-up (kernels/bench/timing.py), on inputs rotated so that
repeated calls do not find them in L2.
"""

from __future__ import annotations

import argparse
import datetime
import json

import torch
import torch.nn.functional as F
from flashinfer_build.kernels import ops
from flashinfer_build.kernels.bench.timing import rotation_sets, time_calls
from flashinfer_build.variants import Variant

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def flops(tokens: int, heads: int, head_dim: int, causal: bool) -> float:
    return 4 * tokens * tokens * heads * head_dim / (2 if causal else 1)


def work_list(tokens: int, tile_q: int, device) -> torch.Tensor:
    """One item per tile of query rows over every key, last tile first (causal: heaviest first)."""
    starts = range(0, tokens, tile_q)
    items = [[0, b, min(b + tile_q, tokens), 0, tokens, -1] for b in reversed(starts)]
    return torch.tensor(items, dtype=torch.int32, device=device)


def input_sets(tokens, heads, head_dim, dtype, device) -> list[tuple[torch.Tensor, ...]]:
    set_bytes = 4 * tokens * heads * head_dim * dtype.itemsize
    props = torch.cuda.get_device_properties(device)
    count = rotation_sets(set_bytes, props.L2_cache_size, torch.cuda.mem_get_info()[0])
    return [
        tuple(torch.randn(tokens, heads, head_dim, device=device, dtype=dtype) for _ in range(4))
        for _ in range(count)
    ]


def ours_us(variant, sets, tokens, device) -> float:
    indptr = torch.tensor([0, tokens], dtype=torch.int32, device=device)
    work = work_list(tokens, ops.kernel_info(variant, device).cta_tile_q, device)
    calls = []
    for q, k, v, o in sets:
        run = ops.prepare_attention(variant, q, k, v, o, kv_indptr=indptr, qo_indptr=indptr, work=work)
        calls.append(lambda run=run, q=q, k=k, v=v, o=o: run.launch(q, k, v, o))
    return time_calls(calls).median_us


def sdpa_us(backend_name, sets, causal) -> float | None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)
    calls = []
    for q, k, v, _ in sets:
        qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))

        def call(qt=qt, kt=kt, vt=vt):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

        calls.append(call)
    try:
        calls[0]()
    except RuntimeError:
        return None
    return time_calls(calls).median_us


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--head-dims", default="64,128,256")
    parser.add_argument("--tokens", default="2048,8192")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--no-sdpa", action="store_true")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    device = torch.device("cuda")
    dtype = DTYPES[args.dtype]
    rows = []
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {datetime.date.today()}")
    header = ("hd", "causal", "tokens", "ours", "flash", "cudnn", "ours/flash")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (4, 6, 6, 8, 8, 8, 10), strict=True)), " TFLOP/s")
    for head_dim in map(int, args.head_dims.split(",")):
        for causal in (False, True):
            variant = Variant(
                family="prefill",
                arch="sm90a",
                q_dtype=args.dtype,
                head_dim=head_dim,
                mask="causal" if causal else "none",
            )
            for tokens in map(int, args.tokens.split(",")):
                sets = input_sets(tokens, args.heads, head_dim, dtype, device)
                work = flops(tokens, args.heads, head_dim, causal)
                row = {
                    "head_dim": head_dim,
                    "causal": causal,
                    "tokens": tokens,
                    "heads": args.heads,
                    "ours_us": ours_us(variant, sets, tokens, device),
                }
                for name, backend in (("flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION")):
                    row[f"{name}_us"] = None if args.no_sdpa else sdpa_us(backend, sets, causal)
                tflops = {
                    k[:-3]: work / (v * 1e-6) / 1e12 if v else float("nan")
                    for k, v in row.items()
                    if k.endswith("_us")
                }
                row.update({f"{k}_tflops": v for k, v in tflops.items()})
                rows.append(row)
                print(
                    f"{head_dim:4d} {str(causal):>6} {tokens:6d} {tflops['ours']:8.1f} "
                    f"{tflops['flash']:8.1f} {tflops['cudnn']:8.1f} {tflops['ours'] / tflops['flash']:10.2f}",
                    flush=True,
                )
                del sets
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(device), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
